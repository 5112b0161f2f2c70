"""The pipeline's own rules, without ComfyUI: settings checks, picture fingerprints, preview labels, crop budget."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from comfyui_gpen_restore.face_utils import FaceRecord
from comfyui_gpen_restore.face_utils.images import picture_fingerprint, same_picture
from comfyui_gpen_restore.face_utils.face_set import DetectSettings, FaceInputError, FaceSet
from comfyui_gpen_restore.face_utils.pipeline import warp_crops
from comfyui_gpen_restore.face_utils.preview import draw_faces
from support import DETECTOR


def face(x0: float, y0: float, side: float, frame_index: int = 0, size_hw=(600, 512)) -> FaceRecord:
    points = [(x0 + side * u, y0 + side * v) for u, v in ((0.3, 0.4), (0.7, 0.4), (0.5, 0.6), (0.35, 0.8), (0.65, 0.8))]
    return FaceRecord(frame_index=frame_index, image_size_hw=size_hw, box_xyxy=(x0, y0, x0 + side, y0 + side),
                      score=0.99, landmarks_xy=points)


@pytest.mark.parametrize("field, value", [("score_threshold", 0.0), ("score_threshold", 1.5), ("max_faces", -1),
                                          ("index", "first"), ("index", "0,,1"), ("template", "arcface"), ("crop_size", 4),
                                          ("order", "biggest"), ("min_face_size", -1.0), ("smoothing", -0.5),
                                          ("smoothing", 5.0), ("max_gap", -1), ("detection_size", -32)])
def test_detect_settings_refuse_bad_values(field, value):
    # The message names the setting (the command line maps it to its option) or shows the index syntax.
    with pytest.raises(ValueError, match=field if field != "index" else "Face index"):
        DetectSettings(**{field: value})


def test_fingerprint_tells_scaled_copies_from_other_pictures(grace):
    fingerprint = picture_fingerprint(grace)
    twice = cv2.resize(grace, (1024, 1200), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    assert same_picture(fingerprint, picture_fingerprint(twice))
    assert same_picture(fingerprint, picture_fingerprint(cv2.resize(grace, (256, 300), interpolation=cv2.INTER_AREA)))
    assert not same_picture(fingerprint, picture_fingerprint(np.ascontiguousarray(grace[::-1])))
    assert not same_picture(fingerprint, picture_fingerprint(np.ascontiguousarray(grace[:, ::-1] * 0.5)))


def test_preview_labels_stay_inside_the_picture_and_apart_on_a_crowd(grace, monkeypatch):
    from comfyui_gpen_restore.face_utils import preview

    placed: list[tuple[int, int, int, int]] = []
    real = preview._label_place

    def recording(*args):
        rect = real(*args)
        placed.append(rect)
        return rect

    monkeypatch.setattr(preview, "_label_place", recording)
    # A 4x4 crowd of touching faces, the first row at the top border and the last column at the right one.
    crowd = [face(x, y, 100) for y in range(0, 400, 100) for x in range(112, 512, 100)]
    preview = draw_faces(grace, crowd)
    assert preview.shape == grace.shape and len(placed) == len(crowd)
    height, width = grace.shape[:2]
    assert all(0 <= x0 and 0 <= y0 and x1 <= width and y1 <= height for x0, y0, x1, y1 in placed)
    overlaps = [(a, b) for i, a in enumerate(placed) for b in placed[i + 1:]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]]
    assert overlaps == []


def test_crops_beyond_the_memory_budget_are_refused_before_anything_is_allocated(grace):
    image = torch.from_numpy(grace)[None]
    faces = FaceSet(tuple(), 1, 2048, "test", 0)
    assert warp_crops(image, faces, free_bytes=0).shape == (0, 2048, 2048, 3)
    many = FaceSet(tuple(face(100, 100, 200) for _ in range(3)), 1, 2048, "test", 3)
    with pytest.raises(FaceInputError, match=r"3 face\(s\) at 2048x2048 need 0.1 GiB .* max_faces"):
        warp_crops(image, many, free_bytes=2**20)


def test_face_set_summary_says_what_was_found_and_kept():
    faces = FaceSet((face(0, 0, 100),), 2, 512, "yunet", 3)
    assert faces.summary() == "yunet found 3 face(s) in 2 frame(s); face_index/max_faces kept 1"
    assert FaceSet((), 1, 512, "yunet", 0).summary() == "yunet found 0 face(s) in 1 frame(s)"


def test_a_crowd_of_32_overlapping_faces_is_restored_whole_and_seamlessly(grace, fixtures_dir):
    """32 real faces (the fixture portrait, scaled) side by side, their crops and masks overlapping. With a
    restorer that changes nothing, pasting all of them back must give the picture back: no seam, no face blended
    twice, every face inside the mask, nothing changed outside it."""

    from comfyui_gpen_restore.face_utils import PasteSettings, load_detector
    from comfyui_gpen_restore.face_utils.pipeline import restore_image

    tile = cv2.resize(grace, (256, 300), interpolation=cv2.INTER_AREA)
    rows, cols = 4, 8
    crowd = np.concatenate([np.concatenate([tile] * cols, axis=1)] * rows, axis=0)  # 1200 x 2048
    image = torch.from_numpy(np.ascontiguousarray(crowd))[None]
    detector = load_detector(DETECTOR, fixtures_dir / "facedetection")
    restored_faces = []

    def unchanged(crops, on_face):
        restored_faces.extend(range(len(crops)))
        for _ in range(len(crops)):
            on_face()
        return crops[..., :3]

    def psnr_inside(picture: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor, object]:
        out, mask, faces = restore_image(picture, detector, unchanged, DetectSettings(crop_size=256), PasteSettings())
        inside = mask[0] > 0
        error = (out[0][inside] - picture[0][inside]).pow(2).mean().item()
        return 10 * np.log10(1 / max(error, 1e-12)), out, mask, faces

    alone, *_ = psnr_inside(torch.from_numpy(np.ascontiguousarray(tile))[None])
    restored_faces.clear()
    together, out, mask, faces = psnr_inside(image)
    assert len(faces) == rows * cols == len(restored_faces)
    centres = {(int((f.box_xyxy[0] + f.box_xyxy[2]) / 2 // 256), int((f.box_xyxy[1] + f.box_xyxy[3]) / 2 // 300))
               for f in faces}
    assert len(centres) == rows * cols  # one face in every tile
    outside = mask[0] == 0
    assert torch.equal(out[0][outside], image[0][outside])
    # The round trip of one face (resampling to a 256 crop and back) is all that is lost: overlapping neighbours
    # add nothing (measured: 45.1 dB in the crowd, 45.35 dB alone; a quality margin, not a rounding one: kernel
    # settings move both by under 0.001 dB, tests/NUMERICS.md).
    assert alone > 35 and together > alone - 0.3


def test_overlapping_faces_share_the_opacity_instead_of_blending_twice(grace, fixtures_dir):

    from comfyui_gpen_restore.face_utils import PasteSettings, align_face, load_detector, paste_faces, warp_face

    (found,) = load_detector(DETECTOR, fixtures_dir / "facedetection").detect(grace)
    first = align_face(found, crop_size=256)
    shift = 30.0  # a second face over most of the first: same picture, moved right
    moved = FaceRecord(frame_index=0, image_size_hw=found.image_size_hw, score=found.score,
                       box_xyxy=tuple(v + shift * (i % 2 == 0) for i, v in enumerate(found.box_xyxy)),
                       landmarks_xy=tuple((x + shift, y) for x, y in found.landmarks_xy))
    second = align_face(moved, crop_size=256)
    brighter = [np.clip(warp_face(grace, face) + 0.2, 0, 1) for face in (first, second)]
    settings = PasteSettings(opacity=0.5, color_correction=False)
    out, mask = paste_faces(grace, brighter, [first, second], settings)
    full = PasteSettings(opacity=1.0, color_correction=False)
    alone = [paste_faces(grace, [crop], [face], full) for crop, face in zip(brighter, (first, second))]
    # Pixels where each face alone, at full strength, puts back exactly the +0.2 (away from resampled edges).
    both = np.ones(grace.shape[:2], bool)
    for pasted, face_mask in alone:
        both &= (face_mask > 0.999) & (np.abs(pasted - grace - 0.2) < 0.01).all(axis=2)
    assert both.sum() > 5000
    change = (out - grace)[both]
    # Half the +0.2 of the restorations, as a single face gets it, not 1 - (1 - 0.5)^2 = 75 % of it (0.15).
    # Resampling leaves up to 0.005 (measured).
    np.testing.assert_allclose(change, 0.1, rtol=0, atol=0.02)
    assert np.array_equal(out[mask == 0], grace[mask == 0])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="crops on a GPU (ComfyUI's --gpu-only) need a CUDA device"))])
def test_restored_crops_stay_on_the_crops_device_and_black_ones_pass(device):
    from comfyui_gpen_restore.face_utils.pipeline import restore_crop_batch

    crops = torch.rand((5, 32, 32, 3), device=device)
    crops[1] = 0  # the detect step's no-face placeholder

    def bind(count):
        assert count == 4
        return lambda chunk, on_face: 1 - chunk  # stands in for GPEN: output on the input's device

    out, count = restore_crop_batch(crops, bind, size=64, chunk=3)
    assert count == 4 and out.device == crops.device and out.shape == (5, 64, 64, 3)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    expected = torch.nn.functional.interpolate((1 - crops[[0, 2, 3, 4]]).movedim(-1, 1), size=(64, 64),
                                               mode="bicubic", antialias=True).clamp(0, 1).movedim(1, -1)
    torch.testing.assert_close(out[[0, 2, 3, 4]], expected, rtol=0, atol=0)  # the same operations on the same data


@pytest.mark.slow
def test_bf16_restores_the_fixture_photos_within_40_db_of_fp32(grace, astronaut, fixtures_dir, tmp_path):
    # What "auto" picks on CPUs with native bf16 (gpen_arch.runner.cpu_has_native_bf16): GPEN-256 at its published
    # size (random weights, upstream's init; 256 keeps the emulated bf16 of AVX2-only CPUs to seconds), the whole
    # pipeline, both photos. Measured 66.7 and 68.7 dB (GPEN-512: 68.1 and 72.6).
    from comfyui_gpen_restore.face_utils import PasteSettings, load_detector
    from comfyui_gpen_restore.face_utils.pipeline import restore_image
    from comfyui_gpen_restore.gpen_arch import GPEN, GpenRunner

    torch.manual_seed(0)
    torch.save(GPEN(size=256, style_dim=512, n_mlp=8, channel_multiplier=1, narrow=0.5).state_dict(),
               tmp_path / "GPEN-BFR-256.pth")
    detector = load_detector(DETECTOR, fixtures_dir / "facedetection")
    for photo in (grace, astronaut):
        restored = {}
        for precision in ("fp32", "bf16"):
            runner = GpenRunner.load(tmp_path / "GPEN-BFR-256.pth", precision=precision)
            restored[precision], mask, faces = restore_image(
                torch.from_numpy(photo)[None], detector,
                lambda crops, on_face: runner.restore(crops, device=torch.device("cpu"), on_face=on_face),
                DetectSettings(crop_size=256), PasteSettings())
        assert len(faces) == 1
        error = (restored["bf16"] - restored["fp32"]).double()
        assert 10 * np.log10(1 / error.pow(2).mean().item()) >= 40
        # Not the same picture by accident: bf16 really ran (it moves the face by a few levels).
        assert error.abs().max() > 1e-3
