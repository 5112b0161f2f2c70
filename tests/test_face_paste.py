"""Paste-back: round trips on real photos (same frame and a 2x canvas), masks, opacity, colour correction,
anti-aliasing, overlapping faces, channels and the parsing mask."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from comfyui_gpen_restore.face_utils import (
    CanvasMismatchError,
    FaceParser,
    FaceRecord,
    PasteSettings,
    align_face,
    face_mask_uv,
    load_detector,
    load_face_parser,
    paste_faces,
    reference_points,
    warp_face,
)
from comfyui_gpen_restore.face_utils.parsing import FACE_CLASSES, PARSE_CLASSES, PARSE_SIZE

IMAGES = ("grace_hopper.jpg", "astronaut.png")
NO_COLOUR = PasteSettings(color_correction=False)
# Blends checked against their formula: a few float32 roundings of values in 0..1 (6e-8 each); measured up to
# 3.6e-7 (without FMA). A wrong weight or order is off by 1e-2 and more.
BLEND_TOLERANCE = 2e-6
# The stand-in parsers' logit margin of 10 leaks e^-10 = 4.5e-5 to each class it does not pick: the mask is off by
# 14 face classes x 4.5e-5 = 6.4e-4 (5 x 4.5e-5 = 2.3e-4 the other way), the same to float32 rounding on any CPU.
PARSING_LEAK_TOLERANCE = 1e-3


def load_rgb(fixtures_dir: Path, name: str) -> np.ndarray:
    bgr = cv2.imread(str(fixtures_dir / "images" / name), cv2.IMREAD_COLOR)
    return bgr[:, :, ::-1].astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def detector(tmp_path_factory, fixtures_dir):
    folder = tmp_path_factory.mktemp("facedetection")
    shutil.copy(fixtures_dir / "facedetection" / "detection_mobilenet0.25_Final.pth", folder)
    return load_detector("retinaface_mobile0.25", folder)


@pytest.fixture(scope="module")
def detected(detector, fixtures_dir) -> dict[str, tuple[np.ndarray, FaceRecord]]:
    """Each real photo with its one detected face."""
    result = {}
    for name in IMAGES:
        image = load_rgb(fixtures_dir, name)
        (face,) = detector.detect(image)
        result[name] = image, face
    return result


def psnr_under_mask(result: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    """PSNR over the pixels the mask touches, each weighted by the mask. Its thresholds below are quality margins,
    not rounding ones: kernel settings move these PSNRs by under 0.001 dB (tests/NUMERICS.md)."""
    weight = mask[:, :, None] * np.ones_like(result[:, :, :1])
    error = (((result - reference) ** 2) * weight).sum() / (weight.sum() * result.shape[2])
    return float(10 * np.log10(1.0 / error))


def assert_untouched_outside(result: np.ndarray, image: np.ndarray, mask: np.ndarray) -> None:
    outside = mask == 0
    assert outside.any() and (~outside).any()
    assert np.array_equal(result[outside], image[outside])  # bit-exact


def test_paste_settings_validate():
    with pytest.raises(ValueError, match="mask_shape"):
        PasteSettings(mask_shape="circle")
    with pytest.raises(ValueError, match="opacity"):
        PasteSettings(opacity=1.5)
    with pytest.raises(ValueError, match="erosion"):
        PasteSettings(erosion=0.6)
    with pytest.raises(ValueError, match="feather"):
        PasteSettings(feather=-0.1)


@pytest.mark.parametrize("name", IMAGES)
@pytest.mark.parametrize("crop_size", [512, 2048])
def test_round_trip_on_real_photos(detected, name, crop_size):
    image, face = detected[name]
    aligned = align_face(face, crop_size=crop_size)
    crop = warp_face(image, aligned)
    for settings in (NO_COLOUR, PasteSettings()):
        result, mask = paste_faces(image, [crop], [aligned], settings)
        assert result.dtype == np.float32 and mask.shape == image.shape[:2] and mask.dtype == np.float32
        assert 0.0 <= mask.min() and mask.max() == pytest.approx(1.0)
        # Measured 47.8-50.9 dB (grace_hopper 512/2048), 54.3-54.8 dB (astronaut).
        assert psnr_under_mask(result, image, mask) >= 40.0
        assert_untouched_outside(result, image, mask)
        # The mask covers the face (all five landmarks well inside it).
        for x, y in aligned.landmarks_xy:
            assert mask[round(y), round(x)] == pytest.approx(1.0)


@pytest.mark.parametrize("name", IMAGES)
def test_round_trip_onto_a_2x_canvas(detected, name):
    image, face = detected[name]
    aligned = align_face(face, crop_size=512)
    crop = warp_face(image, aligned)
    canvas = cv2.resize(image, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    result, mask = paste_faces(canvas, [crop], [aligned], NO_COLOUR)
    assert result.shape == canvas.shape and mask.shape == canvas.shape[:2]
    assert psnr_under_mask(result, canvas, mask) >= 40.0  # measured 45.0 and 58.0 dB
    assert_untouched_outside(result, canvas, mask)
    # The mask is the 1x mask scaled: same coverage fraction of the picture, to its edge pixels (a geometric
    # tolerance, far above rounding).
    _, mask_1x = paste_faces(image, [crop], [aligned], NO_COLOUR)
    assert (mask > 0.5).mean() == pytest.approx((mask_1x > 0.5).mean(), rel=0.02)


@pytest.mark.parametrize("crop_size", [512, 2048])
def test_round_trip_of_a_face_cut_by_the_border(detector, detected, crop_size):
    image = np.ascontiguousarray(detected["grace_hopper.jpg"][0][:, 200:])  # the face's left side is cut off
    (face,) = detector.detect(image)
    aligned = align_face(face, crop_size=crop_size)
    crop = warp_face(image, aligned)  # reflected beyond the border: no black frame for the restorer
    result, mask = paste_faces(image, [crop], [aligned])
    assert mask[:, 0].max() == pytest.approx(1.0)  # the face reaches the border ...
    assert psnr_under_mask(result, image, mask) >= 40.0  # ... and comes back intact up to it
    assert_untouched_outside(result, image, mask)


def test_canvas_of_another_aspect_is_refused(detected):
    image, face = detected["astronaut.png"]
    aligned = align_face(face, crop_size=256)
    crop = warp_face(image, aligned)
    with pytest.raises(CanvasMismatchError, match="512x512"):
        paste_faces(np.zeros((512, 700, 3), np.float32), [crop], [aligned])
    # Rounding of an odd scale is fine: 512 * 1.5 = 768 wide, 769 high.
    paste_faces(np.zeros((769, 768, 3), np.float32), [crop], [aligned])


def test_only_the_face_region_is_touched_and_opacity_blends(detected):
    image, face = detected["grace_hopper.jpg"]
    aligned = align_face(face, crop_size=256)
    red = np.zeros((256, 256, 3), np.float32)
    red[:, :, 0] = 1.0
    full, mask = paste_faces(image, [red], [aligned], PasteSettings(mask_shape="box", color_correction=False))
    half, mask_half = paste_faces(
        image, [red], [aligned], PasteSettings(mask_shape="box", color_correction=False, opacity=0.5)
    )
    assert np.array_equal(mask, mask_half)  # the mask does not include opacity
    core = mask == 1.0
    assert np.allclose(full[core], [1.0, 0.0, 0.0], rtol=0, atol=BLEND_TOLERANCE)
    assert np.allclose(half[core], 0.5 * image[core] + 0.5 * np.array([1.0, 0.0, 0.0]), rtol=0, atol=BLEND_TOLERANCE)
    # Touched pixels stay within the crop's footprint in the image.
    ys, xs = np.nonzero(mask)
    corners = cv2.transform(np.array([[[0, 0], [255, 0], [0, 255], [255, 255]]], np.float64),
                            cv2.invertAffineTransform(aligned.affine))[0]
    assert xs.min() >= corners[:, 0].min() - 1 and xs.max() <= corners[:, 0].max() + 1
    assert ys.min() >= corners[:, 1].min() - 1 and ys.max() <= corners[:, 1].max() + 1
    untouched, zero_mask = paste_faces(image, [red], [aligned], PasteSettings(opacity=0.0))
    assert np.array_equal(untouched, image) and zero_mask.max() == 1.0


# Luma of a pasted pixel against the original's: float32 rounding of a few products and sums in 0..1.
LUMA_TOLERANCE = 1e-6


@pytest.mark.parametrize("opacity", [1.0, 0.6])
def test_keeping_the_luminance_pastes_colour_only(detected, opacity):
    """A black-and-white photo and a colourised face (saturated red, green and blue stripes, some beyond what the
    original's luma allows): the result has the photo's luminance everywhere, colour only inside the mask, and no
    colour correction pulling it back to grey."""
    rgb, face = detected["grace_hopper.jpg"]
    image = np.repeat(_luma(rgb), 3, axis=2)
    aligned = align_face(face, crop_size=256)
    crop = np.zeros((256, 256, 3), np.float32)
    for channel in range(3):
        crop[:, channel::3, channel] = 1.0
    settings = PasteSettings(keep_luminance=True, opacity=opacity)  # colour correction on: it must not apply
    result, mask = paste_faces(image, [crop], [aligned], settings)
    np.testing.assert_allclose(_luma(result), _luma(image), rtol=0, atol=LUMA_TOLERANCE)
    assert_untouched_outside(result, image, mask)
    chroma = result - _luma(result)
    assert np.abs(chroma[mask > 0.99]).mean() > 0.1 * opacity  # the face gained colour
    assert ((result >= 0) & (result <= 1)).all()


def test_no_faces_leaves_image_unchanged():
    image = np.random.default_rng(0).uniform(0, 1, (50, 60, 3)).astype(np.float32)
    result, mask = paste_faces(image, [], [])
    assert np.array_equal(result, image) and result is not image and not mask.any()


def test_mask_geometry_in_face_units():
    u, v = np.meshgrid(np.linspace(0, 1, 201, dtype=np.float32), np.linspace(0, 1, 201, dtype=np.float32))
    for shape in ("box", "ellipse"):
        mask = face_mask_uv(u, v, shape, erosion=0.05, feather=0.1)
        assert mask[100, 100] == 1.0
        assert mask[100, :10].max() == 0.0  # within erosion of the edge (box) / outside the ellipse
        assert np.all(np.diff(mask[100, :101]) >= 0)  # rises monotonically towards the centre
    box = face_mask_uv(u, v, "box", erosion=0.05, feather=0.1)
    # Box: zero up to u = 0.05, one from u = 0.15.
    assert box[100, 10] == 0.0 and box[100, 30] == 1.0 and 0 < box[100, 20] < 1
    ellipse = face_mask_uv(u, v, "ellipse", erosion=0.0, feather=0.0)
    assert ellipse[100, 5] == 0.0 and ellipse[100, 20] == 1.0  # narrower than the crop (semi-axis 0.44)
    assert ellipse[1, 100] == 1.0  # full height
    # Masks scale with the face: the same settings on a 2x larger face cover 4x the pixels.
    small, big = _box_face((400, 400), 100), _box_face((400, 400), 200)
    crop = np.ones((128, 128, 3), np.float32)
    _, mask_small = paste_faces(np.zeros((400, 400, 3), np.float32), [crop], [small])
    _, mask_big = paste_faces(np.zeros((400, 400, 3), np.float32), [crop], [big])
    assert mask_big.sum() / mask_small.sum() == pytest.approx(4.0, rel=0.03)  # to the edges' pixel grid


def _box_face(image_hw, crop_pixels_in_image: float, offset_xy=(100.0, 100.0)) -> FaceRecord:
    """An axis-aligned face whose 128 crop covers `crop_pixels_in_image` pixels, top-left at offset_xy."""
    scale = crop_pixels_in_image / 128
    points = reference_points("gpen", 128) * scale + np.asarray(offset_xy)
    face = FaceRecord(0, image_hw, (0, 0, 1, 1), 1.0, points)
    return align_face(face, crop_size=128)


def test_overlapping_faces_compose_in_order():
    image = np.full((300, 400, 3), 0.5, np.float32)
    first, second = _box_face((300, 400), 150, (60, 60)), _box_face((300, 400), 150, (140, 90))
    red, blue = np.zeros((128, 128, 3), np.float32), np.zeros((128, 128, 3), np.float32)
    red[:, :, 0], blue[:, :, 2] = 1.0, 1.0
    settings = PasteSettings(mask_shape="box", color_correction=False)
    result, mask = paste_faces(image, [red, blue], [first, second], settings)
    _, mask_first = paste_faces(image, [red], [first], settings)
    _, mask_second = paste_faces(image, [blue], [second], settings)
    assert np.allclose(mask, 1 - (1 - mask_first) * (1 - mask_second), rtol=0, atol=BLEND_TOLERANCE)
    both = (mask_first == 1) & (mask_second == 1)
    only_first = (mask_first == 1) & (mask_second == 0)
    assert both.any() and only_first.any()
    assert np.allclose(result[both], [0, 0, 1], rtol=0, atol=BLEND_TOLERANCE)  # the later face goes over the earlier
    assert np.allclose(result[only_first], [1, 0, 0], rtol=0, atol=BLEND_TOLERANCE)
    # Where masks overlap softly, the result is the earlier blend with the later face blended over it.
    soft = (mask_first > 0.2) & (mask_first < 0.8) & (mask_second > 0.2) & (mask_second < 0.8)
    expected = (0.5 + mask_first[soft][:, None] * (np.array([1, 0, 0]) - 0.5)) * (1 - mask_second[soft][:, None])
    expected += mask_second[soft][:, None] * np.array([0, 0, 1])
    assert soft.any() and np.allclose(result[soft], expected, rtol=0, atol=BLEND_TOLERANCE)
    assert_untouched_outside(result, image, mask)


@pytest.mark.parametrize("name", IMAGES)
def test_colour_cast_is_removed(detected, name):
    image, face = detected[name]
    aligned = align_face(face, crop_size=512)
    crop = warp_face(image, aligned)
    _, mask = paste_faces(image, [crop], [aligned])
    core = mask > 0.5
    baseline = psnr_under_mask(paste_faces(image, [crop], [aligned])[0], image, mask)  # no cast at all
    # A faded warm cast (per-channel gain and offset; chosen so nothing clips, since clipped detail is lost to
    # any correction) and a cast that varies across the face.
    ramp = np.linspace(-1.0, 1.0, 512, dtype=np.float32)[None, :, None]
    casts = {
        "global": crop * np.array([0.92, 0.85, 0.75], np.float32) + np.array([0.06, 0.04, 0.02], np.float32),
        "varying": np.clip(crop + ramp * np.array([0.06, 0.0, -0.06], np.float32), 0.0, 1.0),
    }
    for kind, cast in casts.items():
        uncorrected, _ = paste_faces(image, [cast], [aligned], NO_COLOUR)
        corrected, corrected_mask = paste_faces(image, [cast], [aligned], PasteSettings(color_correction=True))
        assert np.array_equal(corrected_mask, mask)
        assert_untouched_outside(corrected, image, mask)
        if kind == "global":
            mean_shift = lambda result: np.abs((result[core] - image[core]).mean(axis=0)).max()  # noqa: E731
            assert mean_shift(uncorrected) > 0.03 and mean_shift(corrected) < 0.002
            # Measured: corrected within 0.01 dB of the cast-free paste (43.2 / 44.8 dB), uncorrected about 25.
            assert psnr_under_mask(corrected, image, mask) > baseline - 0.5
            assert psnr_under_mask(uncorrected, image, mask) < 30.0
        else:
            # Measured: 41-43 dB corrected, 35-37 uncorrected.
            assert psnr_under_mask(corrected, image, mask) > psnr_under_mask(uncorrected, image, mask) + 4.0
        # No visible edge: along the mask's soft band the corrected paste stays as close to the image as inside.
        band = (mask > 0.05) & (mask < 0.5)
        assert np.abs(corrected[band] - image[band]).mean() < 0.01


def test_colour_correction_keeps_added_detail(detected):
    image, face = detected["astronaut.png"]
    aligned = align_face(face, crop_size=512)
    crop = warp_face(image, aligned)
    # "Restoration" that adds fine detail: a zero-mean 4-pixel pattern in the crop (about 1 image pixel).
    pattern = 0.08 * np.sign(np.sin(np.arange(512) * np.pi / 4)).astype(np.float32)
    detailed = np.clip(crop + pattern[None, :, None], 0, 1)
    plain, mask = paste_faces(image, [crop], [aligned], PasteSettings(color_correction=True))
    result, _ = paste_faces(image, [detailed], [aligned], PasteSettings(color_correction=True))
    core = mask > 0.99
    high_pass = lambda x: x - cv2.GaussianBlur(x, (0, 0), 3)  # noqa: E731
    detail_energy = np.abs(high_pass(result) - high_pass(plain))[core].mean()
    assert detail_energy > 0.01  # the added detail survives colour correction
    assert np.abs((result - plain)[core].mean(axis=0)).max() < 0.003  # and adds no colour


@pytest.mark.parametrize("name", IMAGES)
def test_colour_correction_keeps_a_sharper_restoration_sharp(detected, name):
    # The "original" is a blurred photo; the "restoration" is the sharp photo. Colour correction against the
    # blurred original must not pull the contrast of the sharp face down to the blurred one.
    sharp, face = detected[name]
    blurred = cv2.GaussianBlur(sharp, (0, 0), face.box_size / 60)
    aligned = align_face(face, crop_size=512)
    restored = warp_face(sharp, aligned)
    corrected, mask = paste_faces(blurred, [restored], [aligned], PasteSettings(color_correction=True))
    plain, _ = paste_faces(blurred, [restored], [aligned], NO_COLOUR)
    core = mask > 0.99
    # Measured 49.1 and 51.8 dB: the correction changes next to nothing (without the structure blur in the
    # contrast measurement: 38.4 and 44.5 dB, sharpness reduced 4-6 %).
    assert psnr_under_mask(corrected, plain, mask) > 45.0
    high_pass = lambda x: x - cv2.GaussianBlur(x, (0, 0), 2)  # noqa: E731
    energy = lambda x: np.abs(high_pass(x))[core].mean()  # noqa: E731
    assert energy(corrected) > 0.97 * energy(plain) and energy(plain) > 1.5 * energy(blurred)


def test_big_crop_on_small_face_is_antialiased(detected):
    image, face = detected["astronaut.png"]  # a face of about 100 pixels
    aligned = align_face(face, crop_size=2048)
    stripes = np.zeros((2048, 2048, 3), np.float32)
    stripes[:, ::2] = 1.0  # 2-pixel stripes: far beyond what 100 pixels can show
    result, mask = paste_faces(image, [stripes], [aligned], NO_COLOUR)
    core = mask == 1.0
    assert np.abs(result[core] - 0.5).max() < 0.03  # filtered to their average, no moire
    # What sampling without filtering (upstream's bilinear inverse warp) makes of it, for comparison.
    sampled = cv2.warpAffine(stripes, aligned.affine, image.shape[1::-1], flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    assert np.abs(sampled[core] - 0.5).mean() > 0.1


@pytest.mark.parametrize("image_channels, crop_channels", [(1, 3), (3, 1), (4, 3), (4, 4), (1, 1)])
def test_grey_and_rgba(detected, image_channels, crop_channels):
    rgb, face = detected["grace_hopper.jpg"]
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None]
    alpha = np.linspace(0.2, 1.0, rgb.shape[0], dtype=np.float32)[:, None, None] * np.ones_like(grey)
    image = {1: grey, 3: rgb, 4: np.concatenate([rgb, alpha], axis=2)}[image_channels]
    aligned = align_face(face, crop_size=512)
    source = {1: grey, 3: rgb, 4: np.concatenate([rgb, alpha], axis=2)}[crop_channels]
    crop = warp_face(source, aligned)
    assert crop.shape == (512, 512, crop_channels)
    result, mask = paste_faces(image, [crop], [aligned])
    assert result.shape == image.shape
    assert_untouched_outside(result, image, mask)
    if image_channels == 4:
        assert np.array_equal(result[:, :, 3], image[:, :, 3])  # alpha kept
    # Compared in luma: a colour crop on a grey image is converted by luma; a grey crop on a colour image keeps
    # the face's mean colour through colour correction but not its colour detail.
    # Measured 42-43 dB; 37.3 for a grey crop on a colour image, whose per-channel detail is luma detail.
    assert psnr_under_mask(_luma(result), _luma(image), mask) > (35.0 if crop_channels < image_channels else 40.0)
    core = mask > 0.5
    # A grey crop's detail, given the spread of a saturated channel, clips in places (13 % of red here).
    tolerance = 0.02 if crop_channels < image_channels else 0.005
    assert np.abs((result[core] - image[core]).mean(axis=0)).max() < tolerance


def _luma(image: np.ndarray) -> np.ndarray:
    if image.shape[2] == 1:
        return image
    return (image[:, :, :3] @ np.array([0.299, 0.587, 0.114], np.float32))[:, :, None]


def test_crops_of_another_resolution_are_rescaled(detected):
    image, face = detected["astronaut.png"]  # 512 crop pixels per 190 image pixels: 256 still holds the detail
    aligned = align_face(face, crop_size=512)
    crop = warp_face(image, aligned)
    half = cv2.resize(crop, (256, 256), interpolation=cv2.INTER_AREA)  # a model returning a smaller crop
    result, mask = paste_faces(image, [half], [aligned], NO_COLOUR)
    assert psnr_under_mask(result, image, mask) > 38.0


def test_bad_paste_arguments(detected):
    image, face = detected["astronaut.png"]
    aligned = align_face(face, crop_size=128)
    crop = np.zeros((128, 128, 3), np.float32)
    with pytest.raises(ValueError, match="1 crops for 2 faces"):
        paste_faces(image, [crop], [aligned, aligned])
    with pytest.raises(ValueError, match="unaligned"):
        paste_faces(image, [crop], [face])
    with pytest.raises(ValueError, match="square"):
        paste_faces(image, [np.zeros((128, 100, 3), np.float32)], [aligned])
    with pytest.raises(ValueError, match="load_face_parser"):
        paste_faces(image, [crop], [aligned], PasteSettings(mask_shape="parsing"))


class _ConstantParsing(torch.nn.Module):
    """Stands in for ParseNet (whose 512x512 forward takes seconds on a CPU): predicts one class everywhere and
    returns (logits, image) like ParseNet does."""

    def __init__(self, winning_class: int) -> None:
        super().__init__()
        self.head = torch.nn.Conv2d(3, PARSE_CLASSES, 1)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()
            self.head.bias[winning_class] = 10.0

    def forward(self, x):
        return self.head(x), x


@pytest.mark.parametrize("label", range(PARSE_CLASSES))
def test_parsing_classes(label):
    crop = np.random.default_rng(label).uniform(0, 1, (300, 300, 3)).astype(np.float32)
    mask = FaceParser(_ConstantParsing(label)).face_mask(crop)
    assert mask.shape == (300, 300) and mask.dtype == np.float32
    expected = 1.0 if label in FACE_CLASSES else 0.0
    assert np.abs(mask - expected).max() < PARSING_LEAK_TOLERANCE


def test_parsing_mask_paste(detected):
    image, face = detected["astronaut.png"]
    aligned = align_face(face, crop_size=512)
    crop = warp_face(image, aligned)
    red = np.zeros_like(crop)
    red[:, :, 0] = 1.0
    settings = PasteSettings(mask_shape="parsing", color_correction=False)
    skin = FaceParser(_ConstantParsing(FACE_CLASSES[0]))
    result, combined = paste_faces(image, [red], [aligned], settings, parser=skin)
    _, box_mask = paste_faces(image, [red], [aligned], PasteSettings(mask_shape="box", color_correction=False))
    assert np.allclose(combined, box_mask, rtol=0, atol=PARSING_LEAK_TOLERANCE)  # all face: the mask is the box
    assert_untouched_outside(result, image, combined)
    background = FaceParser(_ConstantParsing(0))
    result, combined = paste_faces(image, [red], [aligned], settings, parser=background)
    assert combined.max() < PARSING_LEAK_TOLERANCE and np.abs(result - image).max() < PARSING_LEAK_TOLERANCE
    # Half face: the mask follows the parser's boundary, softened by the feather.
    half = FaceParser(_HalfFace())
    result, combined = paste_faces(image, [red], [aligned], settings, parser=half)
    image_from_crop = cv2.invertAffineTransform(aligned.affine)
    left, right = cv2.transform(np.array([[[150.0, 256.0], [362.0, 256.0]]]), image_from_crop)[0]
    assert combined[round(left[1]), round(left[0])] > 0.95 and combined[round(right[1]), round(right[0])] < 0.05


class _HalfFace(torch.nn.Module):
    """Skin in the left half of the crop, background in the right half."""

    def forward(self, x):
        logits = torch.zeros(x.shape[0], PARSE_CLASSES, *x.shape[2:])
        width = x.shape[3]
        logits[:, FACE_CLASSES[0], :, : width // 2] = 10.0
        logits[:, 0, :, width // 2 :] = 10.0
        return logits, x


def _write_parsenet(folder: Path, winning_class: int | None) -> None:
    """facexlib's ParseNet with upstream's random init (seeded); with `winning_class`, its mask head predicts that
    class everywhere (zero weights, one large bias)."""
    from facexlib.parsing.parsenet import ParseNet

    torch.manual_seed(0)
    net = ParseNet(in_size=512, out_size=512, parsing_ch=PARSE_CLASSES)
    if winning_class is not None:
        head = net.out_mask_conv.conv2d
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
            head.bias[winning_class] = 10.0
    torch.save(net.state_dict(), folder / "parsing_parsenet.pth")


def test_load_face_parser_reads_parsenet_weights(tmp_path):
    _write_parsenet(tmp_path, winning_class=FACE_CLASSES[0])
    parser = load_face_parser(tmp_path)
    assert parser.device == torch.device("cpu")
    bias = parser.net.out_mask_conv.conv2d.bias
    assert bias[FACE_CLASSES[0]].item() == 10.0 and bias.abs().sum().item() == 10.0


@pytest.mark.slow
def test_real_parsenet_forward(tmp_path, detected):
    # Real ParseNet forwards at 512x512 (several seconds each on a 2-core CPU), on a real aligned face.
    from facexlib.parsing.parsenet import ParseNet

    image, face = detected["astronaut.png"]
    crop = warp_face(image, align_face(face, crop_size=256))
    # Random weights: the mask is the probability of the face classes, from the network's own output on the crop
    # as it sees it (shrunk to 512 px, in [-1, 1]); the comparison below computes it straight from the network.
    _write_parsenet(tmp_path, winning_class=None)
    mask = load_face_parser(tmp_path).face_mask(crop, size=PARSE_SIZE)
    net = ParseNet(in_size=512, out_size=512, parsing_ch=PARSE_CLASSES).eval()
    net.load_state_dict(torch.load(tmp_path / "parsing_parsenet.pth", weights_only=True))
    seen = cv2.resize(crop, (PARSE_SIZE, PARSE_SIZE), interpolation=cv2.INTER_LINEAR)
    with torch.no_grad():
        logits = net((torch.from_numpy(seen.transpose(2, 0, 1))[None] - 0.5) / 0.5)[0][0]
    expected = torch.softmax(logits, dim=0)[list(FACE_CLASSES)].sum(dim=0).numpy()
    assert mask.shape == (PARSE_SIZE, PARSE_SIZE) and 0.05 < mask.mean() < 0.95  # neither all face nor none
    # The same network on the same pixels: identical here (0 under 1 and 2 threads and ATEN_CPU_CAPABILITY=avx2);
    # 1e-5 (~100 ulps of 1) leaves room for another summation order of the class probabilities.
    np.testing.assert_allclose(mask, expected, atol=1e-5)
    # The classes counted as face are the right ones: a network that sees only skin gives 1 everywhere, one that
    # sees only the neck (not part of the face) gives 0.
    for winning_class, value in ((FACE_CLASSES[0], 1.0), (17, 0.0)):
        _write_parsenet(tmp_path, winning_class=winning_class)
        np.testing.assert_allclose(load_face_parser(tmp_path).face_mask(crop), value, atol=1e-3)


def test_parser_refuses_a_wrong_checkpoint(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "parsing_parsenet.pth")
    with pytest.raises(ValueError, match="not a parsenet checkpoint"):
        load_face_parser(tmp_path)
