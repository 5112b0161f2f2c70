"""Steadiness of face tracks on video: landmark jitter, error against a known path, lag, with and without smoothing.

    python benchmarks/bench_steadiness.py                 # 20 noise seeds per scene, 120 frames each
    python benchmarks/bench_steadiness.py --seeds 5 --noise 0.01 0.02
    python benchmarks/bench_steadiness.py --sweep         # the sweep below instead (5 seeds per point)
    python benchmarks/bench_steadiness.py --rendered      # the detector's own landmarks on rendered frames

The real landmarks RetinaFace (MobileNet-0.25, the fixture detector) finds on tests/fixtures/images/
grace_hopper.jpg are moved along known paths, with independent Gaussian noise per frame on every landmark and box
coordinate (`--noise`, in face sizes: detectors jitter by ~1-2 % on video), then run through
`face_utils.tracking` (`assign_tracks`, then `smooth_tracks` at smoothing 1). Scenes: a still face, one moving at
constant velocity, one swaying (0.3 face sizes, 50-frame period), a scene cut (a jump of 1.3 face sizes), and the
swaying face with detector misses of 3 and 5 frames (gap filling). `--sweep` runs a face swaying sideways over
periods of 24 to 240 frames and amplitudes up to the face's width (the widest also zooming by +-15 %), with noise of
0.5 to 3 % of the face, and prints the smoothed error against the true path as a fraction of the raw detections'
(the smoothing windows are chosen per track, so every point gets its own). `--rendered` draws the fixture photo
into 960x540 frames along such paths (a 150-px face, clean or grainy) and tracks what a real detector
(`--detector`: the fixture's MobileNet-0.25, or ResNet-50 where its weights are in `--detector-dir`) finds there:
its own noise, with its own correlations between landmarks and frames. Pixel flicker of the pasted faces needs the
full pipeline (GPEN and paste-back): benchmarks/bench_temporal.py. Prints Markdown tables; numbers are means over
seeds.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
FRAME_HW = (1080, 1920)
SWAY_AMPLITUDE = 0.3  # face sizes: a head turning and leaning while talking
SWAY_PERIOD = 50  # frames (1.7 s at 30 fps)
VELOCITY_XY = (6.0, -2.0)  # px/frame: a slow pan (0.03 face sizes per frame on the 197-px fixture face)
CUT_JUMP = 1.3  # face sizes: over `CUT_JUMP_FACE_SIZES`, so a cut
LAG_SHIFTS = np.linspace(-3.0, 3.0, 601)  # candidate lags, frames

logger = logging.getLogger("bench_steadiness")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=20, help="noise draws per scene (the table shows means)")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.015], help="landmark noise, face sizes")
    parser.add_argument("--detector-dir", type=Path, default=REPO_ROOT / "tests" / "fixtures" / "facedetection")
    parser.add_argument("--sweep", action="store_true", help="the motion and noise sweep instead of the scenes")
    parser.add_argument("--rendered", action="store_true", help="the sweep on rendered frames, through --detector")
    parser.add_argument("--detector", default="retinaface_mobile0.25", help="for --rendered")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    sys.path.insert(0, str(REPO_ROOT))
    import restore_faces

    restore_faces.load_package()
    import cv2
    from comfyui_gpen_restore.face_utils import load_detector

    bgr = cv2.imread(str(REPO_ROOT / "tests" / "fixtures" / "images" / "grace_hopper.jpg"), cv2.IMREAD_COLOR)
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0  # RGB from OpenCV's BGR, here only
    (base,) = load_detector("retinaface_mobile0.25", args.detector_dir).detect(image)
    logger.info("fixture face: %.0f px box, %d seeds x %d frames", base.box_size, args.seeds, args.frames)

    if args.sweep:
        print(sweep_table(base, min(args.seeds, 5), args.frames))
        return
    if args.rendered:
        print(rendered_table(image, base, load_detector(args.detector, args.detector_dir), min(args.seeds, 2),
                             args.frames))
        return
    rows = []
    for noise in args.noise:
        rows += scene_rows(base, noise, args.seeds, args.frames)
    print(f"Fixture face {base.box_size:.0f} px; noise per coordinate in face sizes; {args.seeds} seeds x "
          f"{args.frames} frames; smoothing 1 (errors: mean landmark distance in px).\n")
    print("| noise | scene | metric | raw | smoothed | smoothed / raw |")
    print("|---|---|---|---|---|---|")
    for noise, scene, metric, raw, smooth in rows:
        ratio = "" if metric.startswith("lag") else f"{smooth / raw:.2f}"
        print(f"| {noise:.1%} | {scene} | {metric} | {raw:.2f} | {smooth:.2f} | {ratio} |")
    print()
    print(crowd_line(base, args.seeds, args.frames))
    print(timing_line(base))


SWEEP_PERIODS = (24, 48, 96, 240)  # frames: from a fast shake to a slow drift
SWEEP_MOTIONS = ((0.25, 0.0), (0.5, 0.0), (1.0, 0.0), (1.0, 0.15))  # (amplitude in face sizes, zoom)
SWEEP_NOISE = (0.005, 0.015, 0.03)  # face sizes
RENDERED_HW = (540, 960)
RENDERED_FACE_PX = 150.0
RENDERED_MOTIONS = ((0.0, 0.0), (0.5, 0.0), (140 / 150, 0.15))  # the last: the sway the issue measured
RENDERED_PIXEL_NOISE = (2.0 / 255, 16.0 / 255)  # clean frames, and grainy ones (the detector's noise grows)


def sweep_table(base, seeds: int, frames: int) -> str:
    """Markdown: smoothed error against the true path over the raw detections', per period, amplitude and noise."""
    from comfyui_gpen_restore.face_utils.tracking import assign_tracks, smooth_tracks

    size = base.box_size
    lines = [f"Sway sweep (fixture face {size:.0f} px, {seeds} seeds x {frames} frames, smoothing 1): smoothed error "
             "against the true path / raw detections' error.\n",
             "| period, frames | amplitude, face sizes | zoom | "
             + " | ".join(f"noise {n:.1%}" for n in SWEEP_NOISE) + " |",
             "|---|---|---|" + "---|" * len(SWEEP_NOISE)]
    for period, (amplitude, zoom) in itertools.product(SWEEP_PERIODS, SWEEP_MOTIONS):
        def path(t: float) -> tuple[float, float]:
            return 960.0 + amplitude * size * np.sin(2 * np.pi * t / period), 540.0

        def scale(t: float) -> float:
            return 1.0 + zoom * np.sin(2 * np.pi * t / period)

        truth = np.stack([scaled_points(true_landmarks(base, path(t)), path(t), scale(t)) for t in range(frames)])
        cells = []
        for noise in SWEEP_NOISE:
            ratios = []
            for seed in range(seeds):
                rng = np.random.default_rng(seed)
                (raw,) = assign_tracks([[scaled(place(base, t, path(t), noise, rng), scale(t))]
                                        for t in range(frames)])
                (smooth,) = smooth_tracks([raw])
                ratios.append(error(track_landmarks(smooth), truth) / error(track_landmarks(raw), truth))
            cells.append(f"{np.mean(ratios):.2f}")
        lines.append(f"| {period} | {amplitude} | {zoom:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rendered_table(image: np.ndarray, base, detector, seeds: int, frames: int) -> str:
    """Markdown: raw and smoothed landmark error against the true path, and jitter, for the fixture photo drawn
    into frames along swaying and zooming paths and detected there by `detector`."""
    import cv2
    from comfyui_gpen_restore.face_utils.tracking import assign_tracks, smooth_tracks

    height, width = RENDERED_HW
    centre = np.array(base.box_xyxy).reshape(2, 2).mean(axis=0)
    base_scale = RENDERED_FACE_PX / base.box_size
    lines = [f"Rendered frames ({width}x{height}, a {RENDERED_FACE_PX:.0f}-px face, Gaussian pixel noise of the "
             f"given standard deviation in 8-bit levels, {detector.name}, {seeds} seeds x {frames} frames, "
             "smoothing 1): "
             "mean landmark error against the true path (px), and frame-to-frame jitter where the face is still. The "
             "detector also places each landmark a few px off where it sits on the photo, the same on every frame "
             "(its own bias at this size: no smoothing removes it); the last columns measure against the true path "
             "moved by that offset (the raw detections' mean, in face units), which leaves the noise.\n",
             "| pixel noise | period, frames | amplitude, face sizes | zoom | raw, px | smoothed, px | beyond the "
             "offset: raw, px | smoothed, px | smoothed / raw |",
             "|---|---|---|---|---|---|---|---|---|"]
    for pixel_noise, period, (amplitude, zoom) in itertools.product(RENDERED_PIXEL_NOISE, SWEEP_PERIODS,
                                                                    RENDERED_MOTIONS):
        if amplitude == 0.0 and period != SWEEP_PERIODS[0]:
            continue  # a still face has no period
        results = []
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            detections, truth, scales = [], [], []
            for t in range(frames):
                phase = np.sin(2 * np.pi * t / period)
                scale = base_scale * (1.0 + zoom * phase)
                target = np.array([width / 2 + amplitude * RENDERED_FACE_PX * phase, height / 2])
                affine = np.array([[scale, 0.0, target[0] - scale * centre[0]],
                                   [0.0, scale, target[1] - scale * centre[1]]])
                frame = cv2.warpAffine(image, affine, (width, height), flags=cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_REFLECT_101)
                frame = np.clip(frame + rng.normal(0.0, pixel_noise, frame.shape), 0, 1).astype(np.float32)
                detections.append([dataclasses.replace(face, frame_index=t) for face in detector.detect(frame)])
                truth.append(scale * (np.array(base.landmarks_xy) - centre) + target)
                scales.append(scale)
            raw = max(assign_tracks(detections), key=lambda track: len(track.detected_frames))
            (smooth,) = smooth_tracks([raw])
            seen = sorted(raw.detected_frames)
            raw_xy, smooth_xy = track_landmarks(raw, seen), track_landmarks(smooth, seen)
            truth_seen, scale_seen = np.stack(truth)[seen], np.array(scales)[seen, None, None]
            offset = ((raw_xy - truth_seen) / scale_seen).mean(axis=0)  # the detector's own, per landmark
            shifted = truth_seen + scale_seen * offset
            if amplitude == 0.0:
                results.append((jitter(raw_xy), jitter(smooth_xy)) * 2)
            else:
                results.append((error(raw_xy, truth_seen), error(smooth_xy, truth_seen), error(raw_xy, shifted),
                                error(smooth_xy, shifted)))
        raw_px, smooth_px, raw_noise, smooth_noise = np.mean(results, axis=0)
        noise = f"{pixel_noise * 255:.0f}"
        if amplitude == 0.0:
            lines.append(f"| {noise} | still (jitter) | 0 | 0% | {raw_px:.2f} | {smooth_px:.3f} | | | "
                         f"{smooth_px / raw_px:.3f} |")
        else:
            lines.append(f"| {noise} | {period} | {amplitude:.2f} | {zoom:.0%} | {raw_px:.2f} | {smooth_px:.2f} | "
                         f"{raw_noise:.2f} | {smooth_noise:.2f} | {smooth_noise / raw_noise:.2f} |")
    return "\n".join(lines)


def scene_rows(base, noise: float, seeds: int, frames: int) -> list[tuple]:
    """(noise, scene, metric, raw, smoothed) rows, each a mean over `seeds` noise draws."""
    from comfyui_gpen_restore.face_utils.tracking import Track, assign_tracks, smooth_series, smooth_tracks

    size = base.box_size
    half = frames // 2

    def still(t: float) -> tuple[float, float]:
        return 960.0, 540.0

    def moving(t: float) -> tuple[float, float]:
        return 400.0 + VELOCITY_XY[0] * t, 700.0 + VELOCITY_XY[1] * t

    def sway(t: float) -> tuple[float, float]:
        return 960.0 + SWAY_AMPLITUDE * size * np.sin(2 * np.pi * t / SWAY_PERIOD), 540.0

    def cut(t: float) -> tuple[float, float]:
        return 700.0 + (CUT_JUMP * size if t >= half else 0.0), 540.0

    gaps = set(range(30, 33)) | set(range(70, 75))

    results: dict[tuple[str, str], list[tuple[float, float]]] = {}

    def add(scene: str, metric: str, raw: float, smooth: float) -> None:
        results.setdefault((scene, metric), []).append((raw, smooth))

    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        for scene, path in (("still", still), ("constant velocity", moving), ("sway", sway), ("cut", cut)):
            detections = [[place(base, t, path(t), noise, rng)] for t in range(frames)]
            raw = assign_tracks(detections)
            if scene == "cut":
                assert len(raw) == 2, "the tracker splits a cut into two tracks"
                faces = {t: tr.faces[t] for tr in raw for t in tr.frames}
                raw = [Track(0, faces, frozenset(faces))]  # one track across the cut: smoothing must not blend it
            (smooth,) = smooth_tracks(raw)
            truth = np.stack([true_landmarks(base, path(t)) for t in range(frames)])
            raw_xy, smooth_xy = track_landmarks(raw[0]), track_landmarks(smooth)
            add(scene, "error vs path, px", error(raw_xy, truth), error(smooth_xy, truth))
            if scene == "still":
                add(scene, "jitter (RMS frame-to-frame), px", jitter(raw_xy), jitter(smooth_xy))
            if scene in ("constant velocity", "sway"):
                add(scene, "lag, frames", lag(raw_xy, base, path), lag(smooth_xy, base, path))
            if scene == "cut":
                near = slice(half - 3, half + 3)
                add(scene, "error within 3 frames of the cut, px", error(raw_xy[near], truth[near]),
                    error(smooth_xy[near], truth[near]))
                across = smooth_series(raw[0].series())[:, :10].reshape(-1, 5, 2)  # one segment: what cuts prevent
                add(scene, "same, if smoothed across the cut, px", error(raw_xy[near], truth[near]),
                    error(across[near], truth[near]))
        detections = [[place(base, t, sway(t), noise, rng)] if t not in gaps else [] for t in range(frames)]
        (raw,) = assign_tracks(detections)
        (smooth,) = smooth_tracks([raw])
        truth = np.stack([true_landmarks(base, sway(t)) for t in sorted(gaps)])
        filled = [sorted(gaps).index(t) for t in sorted(raw.filled_frames)]
        assert len(filled) == len(gaps), "every gap frame is filled"
        add("sway, misses of 3 and 5 frames", "error on filled frames, px",
            error(track_landmarks(raw, sorted(gaps)), truth), error(track_landmarks(smooth, sorted(gaps)), truth))
    return [(noise, scene, metric, *np.mean(values, axis=0)) for (scene, metric), values in results.items()]


def place(base, frame: int, centre_xy: tuple[float, float], noise: float, rng: np.random.Generator):
    """`base` moved so its box centre is at `centre_xy`, with iid noise of `noise` face sizes per coordinate."""
    from comfyui_gpen_restore.face_utils import FaceRecord

    points = np.concatenate([np.array(base.landmarks_xy), np.array(base.box_xyxy).reshape(2, 2)])
    points = points - np.array(base.box_xyxy).reshape(2, 2).mean(axis=0) + np.array(centre_xy)
    points = points + rng.normal(0.0, noise * base.box_size, points.shape)
    return FaceRecord(frame_index=frame, image_size_hw=FRAME_HW, box_xyxy=tuple(points[5:].ravel()),
                      score=base.score, landmarks_xy=tuple(map(tuple, points[:5])))


def true_landmarks(base, centre_xy: tuple[float, float]) -> np.ndarray:
    centre = np.array(base.box_xyxy).reshape(2, 2).mean(axis=0)
    return np.array(base.landmarks_xy) - centre + np.array(centre_xy)


def track_landmarks(track, frames: list[int] | None = None) -> np.ndarray:
    """[T, 5, 2] landmarks of `track` at `frames` (default: all its frames)."""
    return np.stack([np.array(track.faces[t].landmarks_xy) for t in (frames or track.frames)])


def error(landmarks_xy: np.ndarray, truth: np.ndarray) -> float:
    return float(np.linalg.norm(landmarks_xy - truth, axis=-1).mean())


def jitter(landmarks_xy: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.sum(np.diff(landmarks_xy, axis=0) ** 2, axis=-1))))


def lag(landmarks_xy: np.ndarray, base, path: Callable[[float], tuple[float, float]]) -> float:
    """Frames by which the track trails its true path: the shift of the path that best fits it (positive =
    behind), searched in 0.01-frame steps."""
    frames = np.arange(len(landmarks_xy))
    centre = landmarks_xy.mean(axis=1)
    offset = true_landmarks(base, (0.0, 0.0)).mean(axis=0)
    costs = [np.sum((centre - offset - np.array([path(t - shift) for t in frames])) ** 2) for shift in LAG_SHIFTS]
    return float(LAG_SHIFTS[int(np.argmin(costs))])


def crowd_line(base, seeds: int, frames: int, people: int = 8) -> str:
    """Identity errors on a crowd: `people` faces of 0.3-0.5x the fixture's size drifting on random smooth
    paths that cross, a face hidden while a larger one overlaps it (IoU > 0.3) and 5 % random misses."""
    from comfyui_gpen_restore.face_utils.tracking import _iou, assign_tracks

    switches = tracks = face_frames = 0
    for seed in range(seeds):
        rng = np.random.default_rng(1000 + seed)
        scale = rng.uniform(0.3, 0.5, people)
        start = rng.uniform((200, 150), (1720, 930), (people, 2))
        amplitude, period, phase = rng.uniform(50, 250, (people, 2)), rng.uniform(60, 200, (people, 2)), rng.uniform(
            0, 2 * np.pi, (people, 2))
        owner: dict[int, int] = {}  # id(record) -> person
        detections = []
        for t in range(frames):
            centres = start + amplitude * np.sin(2 * np.pi * t / period + phase)
            faces = [scaled(place(base, t, tuple(c), 0.015, rng), s) for c, s in zip(centres, scale)]
            boxes = np.array([f.box_xyxy for f in faces])
            hidden = {j for i in range(people) for j in range(people)
                      if scale[i] > scale[j] and _iou(boxes[i], boxes[j]) > 0.3}
            kept = [i for i in range(people) if i not in hidden and rng.uniform() > 0.05]
            owner.update({id(faces[i]): i for i in kept})
            detections.append([faces[i] for i in kept])
        result = assign_tracks(detections)
        tracks += len(result)
        for track in result:
            persons = [owner[id(track.faces[f])] for f in sorted(track.detected_frames)]
            switches += sum(a != b for a, b in itertools.pairwise(persons))
            face_frames += len(persons)
    return (f"Crowd of {people} ({seeds} seeds x {frames} frames, paths crossing, occluded and 5 % missed faces): "
            f"{tracks / seeds:.1f} tracks per run, {1000 * switches / face_frames:.2f} identity switches per 1000 "
            "detected faces.")


def scaled_points(points: np.ndarray, centre_xy: tuple[float, float], scale: float) -> np.ndarray:
    """`points` [N, 2] scaled by `scale` about `centre_xy`."""
    return (points - np.array(centre_xy)) * scale + np.array(centre_xy)


def scaled(face, scale: float):
    """`face` scaled by `scale` about its box centre."""
    from comfyui_gpen_restore.face_utils import FaceRecord

    centre = np.array(face.box_xyxy).reshape(2, 2).mean(axis=0)
    points = (np.concatenate([np.array(face.landmarks_xy), np.array(face.box_xyxy).reshape(2, 2)]) - centre) * scale
    points += centre
    return FaceRecord(frame_index=face.frame_index, image_size_hw=FRAME_HW, box_xyxy=tuple(points[5:].ravel()),
                      score=face.score, landmarks_xy=tuple(map(tuple, points[:5])))


def timing_line(base) -> str:
    """Seconds for `assign_tracks` and `smooth_tracks` on 300 frames of 3 and 10 faces."""
    from comfyui_gpen_restore.face_utils.tracking import assign_tracks, smooth_tracks

    rng = np.random.default_rng(0)
    parts = []
    for count in (3, 10):
        frames = [[place(base, t, (200.0 + 300 * (i % 5) + t, 200.0 + 300 * (i // 5)), 0.015, rng)
                   for i in range(count)] for t in range(300)]
        start = time.perf_counter()
        tracks = assign_tracks(frames)
        middle = time.perf_counter()
        smooth_tracks(tracks)
        parts.append(f"{count} faces: tracking {middle - start:.2f} s, smoothing {time.perf_counter() - middle:.2f} s")
    return "Time for 300 frames (this machine): " + "; ".join(parts) + "."


if __name__ == "__main__":
    main()
