"""Repairing damaged faces (GPEN-Inpainting): the crop that reaches the model is painted white exactly where the
damage is, only the damage (grown and feathered in face units) is pasted back, and the picture elsewhere stays
bit-identical, on the OpenCV path and on a device."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from comfyui_gpen_restore.face_utils import PasteSettings, align_face, warp_face
from comfyui_gpen_restore.face_utils import pipeline
from comfyui_gpen_restore.face_utils.pixels import TorchPixels
from comfyui_gpen_restore.face_utils.repair import DAMAGE_FLOOR, RepairSettings, damage_frames, paste_weight
from support import TEST_DEVICE, GivenFace, image_batch

# Crop values against the same warp of the undamaged frame: the two warps run the same kernels on the same pixels.
SAME_WARP_TOLERANCE = 1e-6


def scratch(shape: tuple[int, int], face) -> np.ndarray:
    """A damage mask: a 6-px diagonal scratch across the face's left eye."""
    damage = np.zeros(shape, np.float32)
    (x, y) = face.landmarks_xy[0]
    cv2.line(damage, (int(x) - 30, int(y) - 20), (int(x) + 30, int(y) + 20), 1.0, thickness=6)
    return damage


def run(image: np.ndarray, face, damage: np.ndarray, settings=RepairSettings(), **options):
    seen = []

    def repair(crops, on_face):
        seen.append(crops.clone())
        for _ in range(crops.shape[0]):
            on_face()
        return torch.full((crops.shape[0], *crops.shape[1:3], 3), 0.25)  # a flat "repair", easy to find

    frames = image_batch(image)
    out, mask, _ = pipeline.restore_image(frames, GivenFace(face), repair, pipeline.DetectSettings(crop_size=256),
                                          PasteSettings(color_correction=False),
                                          damage=damage_frames(torch.from_numpy(damage), 1, image.shape[:2]),
                                          repair=settings, **options)
    return out[0].numpy(), mask[0].numpy(), seen


def test_the_crop_the_model_sees_is_white_exactly_where_the_damage_is(grace, grace_face):
    damage = scratch(grace.shape[:2], grace_face)
    _, _, seen = run(grace, grace_face, damage)
    (crop,) = seen[0]
    aligned = align_face(grace_face, crop_size=256)
    damage_in_crop = warp_face(damage[:, :, None], aligned)[:, :, 0].clip(0, 1)
    damage_in_crop[damage_in_crop < DAMAGE_FLOOR] = 0  # the resampling filters' far tails are no damage
    np.testing.assert_allclose(crop[..., 3].numpy(), damage_in_crop, rtol=0, atol=SAME_WARP_TOLERANCE)
    clean = warp_face(grace, aligned)
    expected = clean * (1 - damage_in_crop[..., None]) + damage_in_crop[..., None]
    np.testing.assert_allclose(crop[..., :3].numpy(), expected, rtol=0, atol=SAME_WARP_TOLERANCE)
    assert (crop[..., :3][crop[..., 3] == 1] == 1).all() and (damage_in_crop == 1).sum() > 100


def test_only_the_grown_damage_is_pasted_and_nothing_else_changes(grace, grace_face):
    damage = scratch(grace.shape[:2], grace_face)
    settings = RepairSettings(grow=0.02, feather=0.03)
    out, mask, _ = run(grace, grace_face, damage, settings)
    changed = np.abs(out - grace).max(axis=2) > 0
    assert changed.sum() > damage.sum() * 0.9  # the scratch was repaired ...
    np.testing.assert_array_equal(out[mask == 0], grace[mask == 0])  # ... bit-identical wherever not pasted ...
    # ... and pasted only within the grown and feathered damage: in the 256-px crop, growing by a square of
    # grow + feather / 2 and the feather's Gaussian cut at 3 sigmas (feather / 2) reach sqrt(2) x their sum on
    # diagonals; in the picture that times its scale, plus the warps' few pixels.
    side_px = 256 / np.hypot(*align_face(grace_face, crop_size=256).affine[0, :2])
    crop_reach = np.sqrt(2) * (round((settings.grow + settings.feather / 2) * 256) + np.ceil(settings.feather * 128))
    reach = crop_reach * side_px / 256 + 4
    distance = cv2.distanceTransform((damage == 0).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    assert (mask[distance > reach] == 0).all() and (mask[distance < 1] > 0.99).all()


def test_the_repair_agrees_on_a_device(grace, grace_face):
    damage = scratch(grace.shape[:2], grace_face)
    expected, expected_mask, _ = run(grace, grace_face, damage)
    result, mask, _ = run(grace, grace_face, damage, pixels=TorchPixels(TEST_DEVICE))
    # The device path resamples with torch: its budget is test_torch_pixels' (3e-4 per pixel).
    assert np.abs(result - expected).max() <= 3e-4 and np.abs(mask - expected_mask).max() <= 3e-4
    np.testing.assert_array_equal(result[mask == 0], grace[mask == 0])


def test_the_paste_weight_is_the_damage_grown_and_feathered():
    damage = torch.zeros(1, 128, 128)
    damage[0, 40:88, 20:108] = 1.0  # rows 80-176 at the restored crops' 256 px
    restored = torch.rand(1, 256, 256, 3)
    weighted = paste_weight(restored, damage, RepairSettings(grow=0.05, feather=0.0))
    assert torch.equal(weighted[..., :3], restored)
    alpha = weighted[0, ..., 3]
    grow = round(0.05 * 256)
    assert alpha[80 - grow + 2 : 176 + grow - 2, 48:208].min() == 1.0 and alpha[: 80 - grow - 2].max() == 0.0
    soft = paste_weight(restored, damage, RepairSettings(grow=0.0, feather=0.05))[0, ..., 3]
    # The damage itself stays whole; the ramp lies outside it, over the feather (0.05 x 256 = 13 px).
    assert soft[80, 128] > 0.99 and 0.3 < soft[74, 128] < 0.7 and soft[66, 128] < 0.01


@pytest.mark.parametrize("masks, message", [
    (torch.zeros(1, 300, 256), "the damage mask is 256x300, the picture 512x600"),
    (torch.zeros(3, 600, 512), r"one per frame \(2\)"),
])
def test_damage_of_another_size_or_count_is_refused(masks, message):
    with pytest.raises(ValueError, match=message):
        damage_frames(masks, 2, (600, 512))


def test_damage_outside_every_face_passes_the_picture_through_and_says_so(grace, grace_face, caplog):
    damage = np.zeros(grace.shape[:2], np.float32)
    damage[580:, :40] = 1.0  # a corner far from the face
    out, mask, seen = run(grace, grace_face, damage)
    np.testing.assert_array_equal(out, grace)
    assert not mask.any() and "covers none of the 1 face(s)" in caplog.text
