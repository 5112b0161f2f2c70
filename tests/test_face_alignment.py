"""Alignment: parity with upstream GPEN's template, transform and crop; warp properties."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from comfyui_gpen_restore.face_utils import TEMPLATES, AlignmentError, FaceRecord, align_face, reference_points, similarity_transform
from comfyui_gpen_restore.face_utils import warp_face

# Matrices against upstream's fixture: the bound, in pixels, below one float32 ulp of the 2048 matrix's
# 1248-px shift (1.2e-4), so it asks for upstream's float32 statistics to the bit: 0.0 with every FMA BLAS kernel
# (both CI CPU kinds), 1.2e-4 with pre-Haswell OpenBLAS kernels (tests/NUMERICS.md). Statistics in float64 give
# 1.8e-4 and fail.
MATRIX_TOLERANCE_PX = 1e-4
# The identity from float32 point statistics (as upstream): a few ulps of the template's coordinates (1.5e-5 at
# 128-256 px), and the crop moved by that much; measured up to 9.7e-6 and 1.6e-6. A misplaced crop is off by 1e-2.
IDENTITY_TOLERANCE = 5e-5


@pytest.fixture(scope="module")
def case(fixtures_dir):
    with np.load(fixtures_dir / "align" / "gpen_alignment_case.npz") as data:
        return {key: data[key] for key in data.files}


def face_from_landmarks(landmarks_xy, image_hw) -> FaceRecord:
    points = np.asarray(landmarks_xy, dtype=np.float64)
    box = (*points.min(axis=0) - 20, *points.max(axis=0) + 20)
    return FaceRecord(0, tuple(image_hw), box, 1.0, points)


@pytest.mark.parametrize("size", [256, 512, 1024, 2048])
def test_gpen_reference_points_match_upstream(fixtures_dir, size):
    expected = json.loads((fixtures_dir / "align" / "gpen_reference_points.json").read_text())[str(size)]
    # Upstream's float64 arithmetic, repeated: measured 0.0; 1e-6 px is still thousands of ulps at 2048 px.
    assert np.abs(reference_points("gpen", size) - np.array(expected)).max() < 1e-6


@pytest.mark.parametrize("size", [512, 2048])
def test_gpen_matrices_match_upstream(case, size):
    face = align_face(face_from_landmarks(case["landmarks_xy"], case["image_bgr"].shape[:2]), crop_size=size)
    assert face.template == "gpen" and face.crop_size == size
    assert np.abs(face.affine - case[f"tfm_{size}"]).max() <= MATRIX_TOLERANCE_PX
    # The inverse (crop -> image) is in image pixels whatever the crop size. Upstream estimated it separately in
    # float32 rather than inverting: 1.1e-5 from ours, on every setting.
    assert np.abs(cv2.invertAffineTransform(face.affine) - case[f"tfm_inv_{size}"]).max() < MATRIX_TOLERANCE_PX


def test_gpen_crop_matches_upstream_within_one_grey_level(case):
    image = case["image_bgr"][:, :, ::-1].astype(np.float32) / 255.0
    face = align_face(face_from_landmarks(case["landmarks_xy"], image.shape[:2]), crop_size=512)
    crop = warp_face(image, face, interpolation="linear", border="constant")
    crop_u8 = np.rint(crop * 255.0)[:, :, ::-1]
    diff = np.abs(crop_u8 - case["crop_512_bgr"].astype(np.float64))
    # Both sides rounded to 8 bits: a value on a rounding edge may land one level apart (1 to 58 pixels of 786k,
    # by kernel setting); a sampling error would move many pixels by several levels.
    assert diff.max() <= 1.0
    assert diff.mean() < 0.05


def test_ffhq_template_is_facexlibs_scaled():
    ffhq_512 = reference_points("ffhq", 512)
    assert ffhq_512[0] == pytest.approx([192.98138, 239.94708])  # facexlib's 5 printed decimals, rel 1e-6
    assert np.array_equal(reference_points("ffhq", 2048), ffhq_512 * 4)  # a power-of-two scale is exact
    # Both templates put the eyes level and the face centred horizontally.
    for template in TEMPLATES:
        points = reference_points(template, 1024)
        assert abs(points[0, 1] - points[1, 1]) < 2 and abs(points[:, 0].mean() - 512) < 10


def test_similarity_transform_recovers_a_known_similarity():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 500, size=(5, 2))
    angle, scale, shift = 0.4, 2.5, np.array([30.0, -12.0])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    dst = src @ (scale * rotation).T + shift
    matrix = similarity_transform(src, dst)
    # Float32 point statistics (as upstream): a few ulps of the scaled rotation (2.4e-7 at 2.5; measured 7.5e-8)
    # and of the coordinates for the shift (1.2e-4 at dst's 1300 px; measured 7.3e-5 to 8.4e-5). A wrong fit is
    # off by more than 0.1.
    assert np.allclose(matrix[:, :2], scale * rotation, rtol=0, atol=1e-6)
    assert np.allclose(matrix[:, 2], shift, rtol=0, atol=5e-4)


def test_mirrored_landmarks_still_give_a_rotation():
    template = reference_points("gpen", 512)
    mirrored = template.copy()
    mirrored[:, 0] = 1000 - mirrored[:, 0]  # a reflected face: left and right swapped
    matrix = similarity_transform(mirrored, template)
    assert np.linalg.det(matrix[:, :2]) > 0
    # A 2x2 SVD's u @ vt has the rotation's form to rounding (measured exact; approx's rel 1e-6 is ~8 float32 ulps).
    assert matrix[0, 0] == pytest.approx(matrix[1, 1]) and matrix[0, 1] == pytest.approx(-matrix[1, 0])


def test_degenerate_landmarks_and_bad_settings():
    with pytest.raises(AlignmentError, match="one point"):
        similarity_transform(np.ones((5, 2)), reference_points("gpen", 512))
    face = face_from_landmarks(reference_points("gpen", 512), (512, 512))
    with pytest.raises(ValueError, match="template"):
        align_face(face, crop_size=512, template="arcface")
    with pytest.raises(ValueError, match="crop_size"):
        align_face(face, crop_size=4)


def test_identity_alignment_gives_the_image_back():
    # Landmarks exactly on the template of a same-size image: the affine is the identity and the crop the image.
    rng = np.random.default_rng(1)
    image = cv2.GaussianBlur(rng.uniform(0, 1, (256, 256, 3)).astype(np.float32), (0, 0), 2)
    face = align_face(face_from_landmarks(reference_points("gpen", 256), (256, 256)), crop_size=256)
    assert np.allclose(face.affine, [[1, 0, 0], [0, 1, 0]], rtol=0, atol=IDENTITY_TOLERANCE)
    for interpolation in ("lanczos", "cubic", "linear"):
        assert np.abs(warp_face(image, face, interpolation=interpolation) - image).max() < IDENTITY_TOLERANCE


def _shifted_face(crop_size: int, scale: float, shift_xy, image_hw) -> FaceRecord:
    """A face whose template points, scaled by 1/scale, sit at shift_xy in the image."""
    points = reference_points("gpen", crop_size) / scale + np.asarray(shift_xy)
    return align_face(face_from_landmarks(points, image_hw), crop_size=crop_size)


def test_face_at_the_border_gets_no_black_frame():
    image = np.full((200, 300, 3), 0.8, np.float32)
    image[:, :, 1] = np.linspace(0.5, 0.9, 300, dtype=np.float32)
    face = _shifted_face(256, 1.0, (-120, -100), image.shape[:2])  # most of the crop lies outside
    for border in ("reflect", "replicate"):
        crop = warp_face(image, face, border=border)
        assert crop.min() > 0.45  # no black pixels anywhere
    constant = warp_face(image, face, border="constant")
    assert (constant.max(axis=2) == 0).mean() > 0.3  # upstream's black frame, for comparison
    # Reflection continues the image: crop pixel (x, 200) maps to image (x - 120, 100), so x = 100 lands on image
    # column -20, which mirrors column 20.
    reflect = warp_face(image, face, border="reflect")
    # Measured 0.0 (float32 sample positions); on this 1.3e-3-per-column ramp a mirror one column off fails.
    assert np.allclose(reflect[200, 100], image[100, 20], rtol=0, atol=1e-4)
    assert np.allclose(reflect[200, 140], image[100, 20], rtol=0, atol=1e-4)  # image column +20 itself


def test_shrinking_warp_is_antialiased():
    # A 1 px checkerboard under a face 4x larger than the crop: averaged to flat grey, not aliased.
    image = (np.indices((800, 800)).sum(axis=0) % 2).astype(np.float32)[:, :, None]
    face = _shifted_face(128, 0.25, (150, 150), image.shape[:2])
    smooth = warp_face(image, face)
    aliased = warp_face(image, face, antialias=False, interpolation="linear")
    assert smooth.shape == (128, 128, 1)
    assert abs(smooth.mean() - 0.5) < 0.01 and smooth.std() < 0.01
    assert np.abs(aliased - 0.5).mean() > 0.2  # point sampling lands on one colour or beats against the grid


def test_enlarging_warp_is_sharp():
    # A step edge enlarged 4x: Lanczos and cubic keep it steeper than linear interpolation.
    image = np.zeros((200, 200, 1), np.float32)
    image[:, 100:] = 1.0
    face = _shifted_face(512, 4.0, (40, 40), image.shape[:2])
    steepness = {}
    for interpolation in ("lanczos", "cubic", "linear"):
        crop = warp_face(image, face, interpolation=interpolation)
        steepness[interpolation] = np.abs(np.diff(crop[256, :, 0])).max()
    assert steepness["lanczos"] > steepness["cubic"] > steepness["linear"]


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_channels_are_kept(channels):
    rng = np.random.default_rng(2)
    image = rng.uniform(0, 1, (120, 160, channels)).astype(np.float32)
    face = _shifted_face(64, 0.5, (20, 10), image.shape[:2])
    crop = warp_face(image, face)
    assert crop.shape == (64, 64, channels) and crop.dtype == np.float32
    assert crop.min() >= 0 and crop.max() <= 1


def test_warp_refuses_another_frame_size():
    face = _shifted_face(64, 1.0, (0, 0), (100, 100))
    with pytest.raises(ValueError, match="detected on a"):
        warp_face(np.zeros((50, 100, 3), np.float32), face)
    with pytest.raises(ValueError, match="interpolation"):
        warp_face(np.zeros((100, 100, 3), np.float32), face, interpolation="nearest")
