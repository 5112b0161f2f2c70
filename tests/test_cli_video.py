"""The command line on videos (PyAV) and --sequence folders of frames: tracked, smoothed, written frame by frame
with the source's frame rate and audio; --faces-json, --no-smoothing and the errors around them."""

from __future__ import annotations

import json
import weakref
import sys
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from comfyui_gpen_restore.cli import video_files
from comfyui_gpen_restore.cli.video_files import VideoFrames
from support import cli_args, one_error_line, read_rgb, run_cli

FPS = 12
SIZE_HW = (200, 160)  # small (seconds per test on a CPU), even sides as 4:2:0 video needs
CROP = 64  # the test GPEN's size
SAMPLE_RATE = 22050
FRAMES = 8  # enough for tracking and smoothing to matter; each frame costs a detection and a GPEN pass


def moving_frames(photo: np.ndarray, count: int, jitter: float = 0.0, seed: int = 0) -> list[np.ndarray]:
    """`count` uint8 RGB frames of SIZE_HW cut from `photo` (the fixture portrait, 600x512) at half its size, the
    window moving 1 pixel down and 1 right per frame, plus a random shift of up to `jitter` pixels each way (a
    shaky camera)."""
    rng = np.random.default_rng(seed)
    height, width = SIZE_HW
    frames = []
    for index in range(count):
        dy, dx = float(index), float(index)
        if jitter:
            dy, dx = dy + rng.uniform(-jitter, jitter), dx + rng.uniform(-jitter, jitter)
        shift = np.array([[0.5, 0, -(50 + dx)], [0, 0.5, -(20 + dy)]], dtype=np.float64)
        frame = cv2.warpAffine(photo, shift, (width, height), flags=cv2.INTER_AREA)
        frames.append(np.clip(np.rint(frame * 255), 0, 255).astype(np.uint8))
    return frames


def write_video(path: Path, frames: list[np.ndarray], *, audio: str | None = "aac") -> None:
    """An H.264 video of `frames` at FPS, with a mono 440 Hz tone as long as the picture in codec `audio`."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=FPS)
        video.height, video.width = frames[0].shape[:2]
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "10"} if video.codec_context.name == "libx264" else {}
        sound = container.add_stream(audio, rate=SAMPLE_RATE, layout="mono") if audio else None
        for frame in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        if sound is not None:
            seconds = np.arange(round(SAMPLE_RATE * len(frames) / FPS)) / SAMPLE_RATE
            tone = av.AudioFrame.from_ndarray((0.2 * np.sin(2 * np.pi * 440 * seconds)).astype(np.float32)[None],
                                              format="flt", layout="mono")
            tone.sample_rate, tone.pts = SAMPLE_RATE, 0
            for packet in [*sound.encode(tone), *sound.encode(None)]:
                container.mux(packet)


def decode(path: Path) -> tuple[list[np.ndarray], Fraction, list[str]]:
    """Frames (float32 RGB), frame rate and the stream types of a video file."""
    with av.open(str(path)) as container:
        kinds = [stream.type for stream in container.streams]
        rate = container.streams.video[0].average_rate
        frames = [f.to_ndarray(format="rgb24").astype(np.float32) / 255 for f in container.decode(video=0)]
    return frames, rate, kinds


def box_mask(entry: dict, size_hw: tuple[int, int]) -> np.ndarray:
    """True inside the face boxes of one --faces-json entry: pixels a restored face surely changes."""
    mask = np.zeros(size_hw, bool)
    for face in entry["faces"]:
        x0, y0, x1, y1 = (round(v) for v in face["box_xyxy"])
        mask[max(y0, 0):y1, max(x0, 0):x1] = True
    return mask


def crop_mask(entry: dict, size_hw: tuple[int, int], margin: int = 2) -> np.ndarray:
    """True where the aligned crops of one --faces-json entry lie in the frame (its `affine` inverted), grown by
    `margin` pixels: paste-back changes nothing outside them."""
    mask = np.zeros(size_hw, np.uint8)
    corners = np.array([[0, 0], [CROP, 0], [CROP, CROP], [0, CROP]], np.float64)
    for face in entry["faces"]:
        frame_from_crop = cv2.invertAffineTransform(np.array(face["affine"]))
        polygon = corners @ frame_from_crop[:, :2].T + frame_from_crop[:, 2]
        cv2.fillConvexPoly(mask, np.rint(polygon).astype(np.int32), 1)
    return cv2.dilate(mask, np.ones((2 * margin + 1,) * 2, np.uint8)).astype(bool)


@pytest.fixture
def clip(home: Path, fixtures_dir: Path) -> Path:
    path = home / "clip.mp4"
    write_video(path, moving_frames(read_rgb(fixtures_dir / "images" / "grace_hopper.jpg"), FRAMES))
    return path


def test_a_video_keeps_its_frames_rate_and_audio_and_changes_only_the_faces(models_dir, home, clip, capsys):
    out, faces_json = home / "out", home / "faces.json"
    assert run_cli(["--input", clip, "--output", out, "--faces-json", faces_json, *cli_args(models_dir)], home) == 0
    source, _rate, _kinds = decode(clip)
    restored, rate, kinds = decode(out / "clip.mp4")  # a folder as --output: <stem>.mp4 inside
    assert len(restored) == len(source) == FRAMES and rate == FPS
    assert kinds == ["video", "audio"]
    with av.open(str(out / "clip.mp4")) as container:
        assert container.streams.audio[0].codec_context.name == "aac"
        assert container.streams.video[0].codec_context.name in ("h264", "mpeg4")
    entries = json.loads(faces_json.read_text())
    assert [entry["frame"] for entry in entries] == list(range(FRAMES))
    for entry, before, after in zip(entries, source, restored):
        assert [face["track"] for face in entry["faces"]] == [0]
        face = entry["faces"][0]
        assert np.array(face["landmarks_xy"]).shape == (5, 2) and np.array(face["affine"]).shape == (2, 3)
        assert len(face["box_xyxy"]) == 4 and 0.9 <= face["score"] <= 1
        # The affine takes the landmarks into the 64-pixel crop (the test GPEN's size).
        points = np.array(face["landmarks_xy"]) @ np.array(face["affine"])[:, :2].T + np.array(face["affine"])[:, 2]
        assert (points > 0).all() and (points < CROP).all()
        assert np.abs(after - before)[box_mask(entry, SIZE_HW)].mean() > 0.03  # a random GPEN changes faces a lot
        outside = ~crop_mask(entry, SIZE_HW)
        assert outside.mean() > 0.1
        assert np.abs(after - before)[outside].mean() < 0.015  # elsewhere: only the re-encoding's loss,
        assert abs((after - before)[outside].mean()) < 0.002  # without a shift in brightness or colour
    captured = capsys.readouterr()
    assert f"{out / 'clip.mp4'}: 8 face(s) restored in 8 of 8 frame(s); audio copied" in captured.out
    assert "8/8 frames, 8 faces" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["clip.mp4"]  # no temporary file left


@pytest.mark.slow  # two runs on ten frames: several seconds on a loaded CPU
def test_no_smoothing_keeps_the_detections_jitter(models_dir, home, fixtures_dir):
    shaky = home / "shaky.mp4"
    write_video(shaky, moving_frames(read_rgb(fixtures_dir / "images" / "grace_hopper.jpg"), 10, jitter=2.0),
                audio=None)
    landmarks = {}
    for name, extra in (("smooth", []), ("raw", ["--no-smoothing"])):
        faces_json = home / f"{name}.json"
        assert run_cli(["--input", shaky, "--output", home / f"{name}.mp4", "--faces-json", faces_json, *extra,
                    *cli_args(models_dir)], home) == 0
        entries = json.loads(faces_json.read_text())
        assert all([face["track"] for face in entry["faces"]] == [0] for entry in entries)
        landmarks[name] = np.array([entry["faces"][0]["landmarks_xy"] for entry in entries])  # [T, 5, 2]
    assert np.abs(landmarks["smooth"] - landmarks["raw"]).max() > 0.5

    def jitter(points: np.ndarray) -> float:  # mean size of the second difference over time: shake, not motion
        return float(np.abs(np.diff(points, n=2, axis=0)).mean())

    assert jitter(landmarks["smooth"]) < 0.7 * jitter(landmarks["raw"])
    with av.open(str(home / "raw.mp4")) as container:
        assert [stream.type for stream in container.streams] == ["video"]  # no audio in, none out


def test_a_sequence_folder_is_tracked_as_one_video(models_dir, home, fixtures_dir, capsys):
    frames_dir, out, faces_json = home / "frames", home / "out", home / "faces.json"
    frames_dir.mkdir()
    frames = moving_frames(read_rgb(fixtures_dir / "images" / "grace_hopper.jpg"), 10)
    for index, frame in enumerate(frames, 1):  # unpadded numbers: frame2 plays before frame10
        cv2.imwrite(str(frames_dir / f"frame{index}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    assert run_cli(["--input", frames_dir, "--sequence", "--output", out, "--faces-json", faces_json,
                *cli_args(models_dir)], home) == 0
    names = [f"frame{index}.png" for index in range(1, 11)]
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    entries = json.loads(faces_json.read_text())
    assert [entry["frame"] for entry in entries] == list(range(10))
    assert [Path(entry["image"]).name for entry in entries] == names
    assert all([face["track"] for face in entry["faces"]] == [0] for entry in entries)
    for entry, name, frame in zip(entries, names, frames):
        restored = cv2.cvtColor(cv2.imread(str(out / name)), cv2.COLOR_BGR2RGB).astype(np.float32) / 255
        before = frame.astype(np.float32) / 255
        assert np.abs(restored - before)[box_mask(entry, SIZE_HW)].mean() > 0.03
        outside = ~crop_mask(entry, SIZE_HW)
        np.testing.assert_array_equal(restored[outside], before[outside])  # lossless PNG: untouched there
    assert f"{out}: 10 face(s) restored in 10 of 10 frame(s)" in capsys.readouterr().out


def test_one_image_gives_one_entry_frame_0_and_several_give_one_each(models_dir, home, fixtures_dir):
    images = fixtures_dir / "images"
    assert run_cli(["--input", images / "grace_hopper.jpg", "--output", home / "grace.png", "--faces-json",
                home / "one.json", *cli_args(models_dir)], home) == 0
    [entry] = json.loads((home / "one.json").read_text())
    assert entry["frame"] == 0 and entry["image"] == str(images / "grace_hopper.jpg")
    assert [face["track"] for face in entry["faces"]] == [0]
    assert np.array(entry["faces"][0]["landmarks_xy"]).shape == (5, 2)
    assert run_cli(["--input", images, "--output", home / "out", "--faces-json", home / "all.json",
                *cli_args(models_dir)], home) == 0
    entries = json.loads((home / "all.json").read_text())
    assert [(Path(e["image"]).name, e["frame"], len(e["faces"])) for e in entries] == [
        ("astronaut.png", 0, 1), ("grace_hopper.jpg", 0, 1)]


def test_without_pyav_a_video_is_a_clear_setup_error_and_images_still_work(models_dir, home, clip, fixtures_dir,
                                                                          monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "av", None)  # what `import av` meets where PyAV is not installed
    # The model does not exist: a check after loading would be reported as a model problem.
    assert run_cli(["--input", clip, "--output", home / "out", "--model", home / "none.pth"], home) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "Video files need PyAV" in line and "pip install av" in line
    assert not (home / "out").exists()
    assert run_cli(["--input", fixtures_dir / "images" / "astronaut.png", "--output", home / "a.png",
                *cli_args(models_dir)], home) == 0


@pytest.mark.parametrize(("inputs", "extra", "expected"), [
    (["clip.mp4", "copy.mp4"], ["--faces-json", "f.json"], "--faces-json records one input's frames"),
    (["clip.mp4"], ["--output", "x.png"], "is an image file name but --input"),
    (["clip.mp4"], ["--aligned"], "--aligned restores whole face crops"),
    (["clip.mp4", "frames"], ["--sequence"], "--sequence takes one folder"),
    (["frames"], ["--sequence", "--output", "x.mp4"], "--sequence writes one image per frame"),
    (["frames"], ["--output", "x.mp4"], "is a video file name but the inputs include images"),
    (["clip.mp4"], ["--max-gap", "-1"], "--max-gap must be 0"),
])
def test_impossible_video_requests_are_refused_before_anything_is_loaded(home, clip, fixtures_dir, capsys, inputs,
                                                                        extra, expected):
    (home / "copy.mp4").write_bytes(clip.read_bytes())
    (home / "frames").mkdir()
    cv2.imwrite(str(home / "frames" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    assert run_cli(["--input", *[home / name for name in inputs], *extra, "--model", home / "none.pth"], home) == 2
    assert expected in one_error_line(capsys.readouterr().err)


def test_a_damaged_video_fails_alone_and_leaves_nothing(models_dir, home, clip, capsys):
    data = clip.read_bytes()
    (home / "cut.mp4").write_bytes(data[: len(data) // 2])  # an MP4 cut off: its index is lost
    cv2.imwrite(str(home / "wall.png"), np.full((32, 32, 3), 90, np.uint8))
    assert run_cli(["--input", home / "cut.mp4", home / "wall.png", "--output", home / "out", *cli_args(models_dir)],
               home) == 1
    assert sorted(p.name for p in (home / "out").iterdir()) == ["wall.png"]
    err = capsys.readouterr().err
    assert f"{home / 'cut.mp4'}: FFmpeg cannot open it as a video" in err
    assert "1 of 2 input(s) could not be restored" in err


def test_without_libx264_mpeg4_is_written(models_dir, home, clip, monkeypatch):
    assert video_files.video_codec(frozenset({"mpeg4"})) == "mpeg4"
    assert video_files.video_codec(frozenset({"mpeg4", "libx264"})) == "libx264"
    monkeypatch.setattr(video_files, "video_codec", lambda available: "mpeg4")
    assert run_cli(["--input", clip, "--output", home / "out.mkv", *cli_args(models_dir)], home) == 0
    with av.open(str(home / "out.mkv")) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
        assert [stream.type for stream in container.streams] == ["video", "audio"]
    restored, rate, _kinds = decode(home / "out.mkv")
    assert len(restored) == FRAMES and rate == FPS


def test_video_frames_are_read_again_on_each_pass_and_upright(home, clip):
    frames = VideoFrames(clip)
    first, second = list(frames), list(frames)
    assert len(frames) == len(first) == FRAMES and len(frames.pts) == FRAMES
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert first[0].dtype == np.float32 and first[0].shape == (*SIZE_HW, 3)
    assert 0 <= first[0].min() < first[0].max() <= 1
    turned = home / "turned.mp4"  # a phone held upright records landscape pixels and a display rotation
    with av.open(str(turned), "w") as container:
        video = container.add_stream("mpeg4", rate=FPS)
        video.width, video.height, video.pix_fmt = 64, 32, "yuv420p"
        video.set_display_rotation(-90)  # -90: shown turned a quarter clockwise
        picture = np.zeros((32, 64, 3), np.uint8)
        picture[:, :8] = 255  # a white band along the left edge: at the top once turned clockwise
        for packet in [*video.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")), *video.encode(None)]:
            container.mux(packet)
    [upright] = list(VideoFrames(turned))
    assert upright.shape == (64, 32, 3)
    assert upright[:6].mean() > 0.8 and upright[12:].mean() < 0.2


def test_a_long_video_never_holds_all_its_frames(models_dir, home, monkeypatch):
    rng = np.random.default_rng(1)
    noise = [rng.integers(0, 256, (32, 48, 3), dtype=np.uint8) for _ in range(30)]  # no face: no GPEN work
    write_video(home / "long.mp4", noise, audio=None)
    real_iter, refs, peak = VideoFrames.__iter__, [], [0]

    def counting_iter(self):
        for frame in real_iter(self):
            refs.append(weakref.ref(frame))
            peak[0] = max(peak[0], sum(ref() is not None for ref in refs))
            yield frame

    monkeypatch.setattr(VideoFrames, "__iter__", counting_iter)
    assert run_cli(["--input", home / "long.mp4", "--output", home / "out.mp4", *cli_args(models_dir)], home) == 0
    assert len(refs) == 2 * 30  # each pass decodes every frame again
    assert peak[0] <= 8  # a few frames (the paste-back's colour window), not the video's 30
    assert len(decode(home / "out.mp4")[0]) == 30


def test_temporal_consistency_reaches_every_frame_of_a_sequence(models_dir, home, fixtures_dir, monkeypatch):
    """Temporal consistency, on unless --no-temporal-consistency: every frame's faces go through the steadying
    stage, and all frames are written."""
    from comfyui_gpen_restore.face_utils import temporal

    seen = []
    real_push = temporal.TemporalConsistency.push
    monkeypatch.setattr(temporal.TemporalConsistency, "push",
                        lambda self, index, *rest: seen.append(index) or real_push(self, index, *rest))
    frames_dir, out = home / "frames", home / "out"
    frames_dir.mkdir()
    for index, frame in enumerate(moving_frames(read_rgb(fixtures_dir / "images" / "grace_hopper.jpg"), 6)):
        cv2.imwrite(str(frames_dir / f"frame{index}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    assert run_cli(["--input", frames_dir, "--sequence", "--output", out, *cli_args(models_dir)], home) == 0
    assert seen == list(range(6)) and len(list(out.iterdir())) == 6
    seen.clear()
    assert run_cli(["--input", frames_dir, "--sequence", "--output", home / "plain", "--no-temporal-consistency",
                    *cli_args(models_dir)], home) == 0
    assert seen == [] and len(list((home / "plain").iterdir())) == 6
