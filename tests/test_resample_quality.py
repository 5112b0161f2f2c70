"""Quality of the shrinking resampler (face_utils.resample) on real photos: unchanged crops come back intact,
noise beyond what the target grid can hold is removed, and no high-frequency energy is added.

Round trips: a face is cut out with `warp_face` and pasted back unchanged with `paste_faces` (no colour
correction, so only resampling is measured). When the face is smaller than the crop the crop is an enlargement
of the frame and holds nothing beyond the face's own resolution ("detail-free"); pasting it back tests the
paste's low-pass. The noisy variant adds full-band Gaussian noise to that crop: a 2048 crop on a 150-px face
holds about 7x the frequencies the frame can show, and all but the frame's own band must go.

High-frequency energy: RMS per pixel and channel of the mask-windowed region above half the frame's Nyquist
frequency (radial frequency > 0.25 cycles per pixel), see `high_frequency_rms`.
"""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
from support import read_rgb

from comfyui_gpen_restore.face_utils import (
    FaceRecord,
    PasteSettings,
    align_face,
    load_detector,
    paste_faces,
    warp_face,
)
from comfyui_gpen_restore.face_utils.resample import (
    cubic_response,
    lowpass_fir,
    pyramid_halvings,
)

NO_COLOUR = PasteSettings(color_correction=False)
# Full-band noise added to the noisy crop: the level at which the issue measured +11 to +13 dB over upstream's
# plain sampling (upstream: 30 dB, the noise aliased into the face).
NOISE_SIGMA = 0.05
# Half the frame's Nyquist frequency, cycles per pixel: the band where a paste could add energy by aliasing.
HIGH_FREQUENCY_CUTOFF = 0.25


@pytest.fixture(scope="module")
def photos(tmp_path_factory, fixtures_dir) -> dict[str, tuple[np.ndarray, FaceRecord]]:
    """Each real photo with its one face found by the fixture detector."""
    folder = tmp_path_factory.mktemp("facedetection")
    shutil.copy(fixtures_dir / "facedetection" / "detection_mobilenet0.25_Final.pth", folder)
    detector = load_detector("retinaface_mobile0.25", folder)
    result = {}
    for name in ("grace_hopper.jpg", "astronaut.png"):
        image = read_rgb(fixtures_dir / "images" / name)
        (face,) = detector.detect(image)
        result[name] = image, face
    return result


def face_at_size(image: np.ndarray, face: FaceRecord, box_px: float | None) -> tuple[np.ndarray, FaceRecord]:
    """The photo scaled so the face's box is `box_px` wide (None: as it is), cut to the face's 2048-crop
    footprint plus a margin first so large scales stay small; shrunk by area averaging, enlarged by cubic."""
    if box_px is None:
        return image, face
    image_from_crop = cv2.invertAffineTransform(align_face(face, crop_size=2048).affine)
    corners = np.array([[0, 0, 1], [2048, 0, 1], [0, 2048, 1], [2048, 2048, 1]], np.float64) @ image_from_crop.T
    margin = 0.1 * face.box_size
    x0, y0 = np.maximum(np.floor(corners[:, :2].min(axis=0) - margin), 0).astype(int)
    x1, y1 = np.minimum(np.ceil(corners[:, :2].max(axis=0) + margin), image.shape[1::-1]).astype(int)
    cut = image[y0:y1, x0:x1]
    k = box_px / face.box_size
    dsize_wh = (round(cut.shape[1] * k), round(cut.shape[0] * k))
    interpolation = cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC
    scaled = np.clip(cv2.resize(cut, dsize_wh, interpolation=interpolation), 0.0, 1.0).astype(np.float32)
    kx, ky = dsize_wh[0] / cut.shape[1], dsize_wh[1] / cut.shape[0]

    def move(x: float, y: float) -> tuple[float, float]:  # cv2.resize's mapping of pixel centres
        return (x - x0 + 0.5) * kx - 0.5, (y - y0 + 0.5) * ky - 0.5

    bx0, by0, bx1, by1 = face.box_xyxy
    landmarks = np.array([move(x, y) for x, y in face.landmarks_xy])
    return scaled, FaceRecord(0, scaled.shape[:2], (*move(bx0, by0), *move(bx1, by1)), face.score, landmarks)


def psnr_under_mask(result: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (dB, peak 1) over the pixels the mask touches, each weighted by the mask. Its thresholds here are
    quality margins, not rounding ones: kernel settings move these PSNRs by under 0.001 dB and the energy ratios
    by under 1e-4 (tests/NUMERICS.md)."""
    weight = mask[:, :, None] * np.ones_like(result[:, :, :1])
    error = (((result - reference) ** 2) * weight).sum() / (weight.sum() * result.shape[2])
    return float(10 * np.log10(1.0 / error))


def high_frequency_rms(image: np.ndarray, mask: np.ndarray, cutoff: float = HIGH_FREQUENCY_CUTOFF) -> float:
    """RMS per pixel and channel of `image` [H, W, C] above `cutoff` cycles per pixel (radial), measured on the
    mask's bounding box with the mask as window (its soft edge keeps the box's own edges out of the band)."""
    ys, xs = np.nonzero(mask > 0)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    window = mask[y0:y1, x0:x1].astype(np.float64)
    region = image[y0:y1, x0:x1].astype(np.float64)
    high = np.hypot(np.fft.fftfreq(y1 - y0)[:, None], np.fft.fftfreq(x1 - x0)[None, :]) > cutoff
    energy = 0.0
    for channel in range(region.shape[2]):
        spectrum = np.fft.fft2(region[:, :, channel] * window)
        energy += (np.abs(spectrum[high]) ** 2).sum() / spectrum.size  # Parseval
    return float(np.sqrt(energy / ((window**2).sum() * region.shape[2])))


def plain_sampling(crop: np.ndarray, face: FaceRecord, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Upstream GPEN's paste for comparison: the crop sampled bilinearly at the frame's pixels, no low-pass."""
    warped = cv2.warpAffine(crop, face.affine, image.shape[1::-1], flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    return np.clip(image + mask[:, :, None] * (warped - image), 0.0, 1.0)


# (photo, face box in pixels; None = the photo as it is: astronaut's face is 107 px, grace_hopper's 197).
BIG_CROP_CASES = [("grace_hopper.jpg", 150), ("astronaut.png", None), ("astronaut.png", 150)]


@pytest.mark.parametrize("name, box_px", BIG_CROP_CASES)
def test_unchanged_2048_crop_on_a_small_face_comes_back(photos, name, box_px):
    image, face = face_at_size(*photos[name], box_px)
    aligned = align_face(face, crop_size=2048)
    crop = warp_face(image, aligned)
    result, mask = paste_faces(image, [crop], [aligned], NO_COLOUR)
    # Measured 52.7, 54.3, 59.3 dB (the area + Lanczos low-pass before: 43.1, 43.0, 53.3; plain cubic sampling,
    # which cannot cope with a noisy crop: 65.6, 71.5, 71.7).
    assert psnr_under_mask(result, image, mask) >= 50.0
    # No ringing or aliasing added: measured 0.973, 0.969, 0.982 of the photo's energy.
    assert high_frequency_rms(result, mask) <= high_frequency_rms(image, mask)


@pytest.mark.parametrize("name, box_px", BIG_CROP_CASES)
def test_noise_in_a_2048_crop_is_removed(photos, name, box_px):
    image, face = face_at_size(*photos[name], box_px)
    aligned = align_face(face, crop_size=2048)
    crop = warp_face(image, aligned)
    noise = np.random.default_rng(0).normal(0.0, NOISE_SIGMA, crop.shape).astype(np.float32)
    noisy = np.clip(crop + noise, 0.0, 1.0)
    result, mask = paste_faces(image, [noisy], [aligned], NO_COLOUR)
    measured = psnr_under_mask(result, image, mask)
    # Measured 41.1, 44.2, 41.9 dB; upstream's plain sampling 30.1-30.3 dB. An ideal cut at the frame's Nyquist
    # frequency would keep sigma / shrink of the noise (43.1, 46.7, 43.8 dB): the pass band's reach beyond Nyquist,
    # which keeps unchanged crops intact, costs about 2 dB here.
    assert measured >= 40.0
    assert measured >= psnr_under_mask(plain_sampling(noisy, aligned, image, mask), image, mask) + 10.0
    if box_px is None or box_px < photos[name][1].box_size:
        # On the photo at its own resolution or shrunk: measured 0.983 and 0.978 of the photo's energy. (The
        # astronaut enlarged to 150 px holds so little of its own near Nyquist that the in-band noise, which any
        # filter keeping the frame's band must keep, outweighs it: 1.07, an ideal Nyquist cut about 1.06.)
        assert high_frequency_rms(result, mask) <= high_frequency_rms(image, mask)


@pytest.mark.parametrize("name", ["grace_hopper.jpg", "astronaut.png"])
@pytest.mark.parametrize("crop_size", [512, 2048])
@pytest.mark.parametrize("box_px", [150, 1000])
def test_crop_warp_round_trips(photos, name, crop_size, box_px):
    image, face = face_at_size(*photos[name], box_px)
    aligned = align_face(face, crop_size=crop_size)
    crop = warp_face(image, aligned)
    result, mask = paste_faces(image, [crop], [aligned], NO_COLOUR)
    measured = psnr_under_mask(result, image, mask)
    if box_px == 1000 and crop_size == 512:
        # The crop is 3.7x smaller than the face's footprint, so warp_face low-passes. Measured 47.1 dB
        # (grace_hopper) and 58.5 dB (astronaut); without the low-pass 46.5 and 58.2 dB. The 50 dB target is out
        # of reach for grace_hopper: the 512 crop cannot hold the cubic enlargement's interpolation images of the
        # photo's near-Nyquist detail, and pasting enlarges the crop with cubic interpolation again.
        unfiltered = warp_face(image, aligned, antialias=False)
        baseline = psnr_under_mask(paste_faces(image, [unfiltered], [aligned], NO_COLOUR)[0], image, mask)
        assert measured >= baseline and measured >= (46.5 if name == "grace_hopper.jpg" else 55.0)
        # The crop itself gains no high frequencies from the low-pass (above half the crop's Nyquist).
        crop_mask = np.ones(crop.shape[:2], np.float32)
        assert high_frequency_rms(crop, crop_mask) <= high_frequency_rms(unfiltered, crop_mask)
    else:
        # Measured 51.8-59.3 dB for 150-px faces (pasting shrinks), 66.5 and 78.1 dB for 1000-px faces at 2048.
        assert measured >= 50.0
        assert high_frequency_rms(result, mask) <= high_frequency_rms(image, mask) * 1.001


@pytest.mark.parametrize("shrink", [1.5, 3.0, 5.4, 7.1, 10.8])
def test_low_pass_response_is_flat_to_nyquist(shrink):
    # The whole chain the FIR is designed for: pyrDown halvings, the FIR, and the caller's cubic warp.
    halvings = pyramid_halvings(shrink)
    rate = shrink / 2**halvings
    kernel = lowpass_fir(rate, halvings, shrink)
    # Taps normalised, then rounded to float32 and summed in float32: a few ulps of 1 (measured 1.2e-7).
    assert kernel.dtype == np.float32 and len(kernel) % 2 == 1 and kernel.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.array_equal(kernel, kernel[::-1])
    taps = np.arange(len(kernel)) - len(kernel) // 2
    f = np.linspace(0.0, min(rate / 2.0, 1.5), 601)  # cycles per output pixel
    pyramid = np.prod([np.cos(np.pi * f * 2.0**level / shrink) ** 4 for level in range(halvings)], axis=0)
    response = pyramid * cubic_response(f / rate) * (np.cos(2 * np.pi * np.outer(f, taps) / rate) @ kernel)
    # Measured: within 2.7 % of 1 up to Nyquist from a shrink of 3 (6.1 % at 1.5, where the cubic warp's own
    # softening is only partly undone), and below PASS-to-STOP leakage limits beyond.
    assert np.abs(response[f <= 0.5] - 1.0).max() < (0.07 if shrink < 2 else 0.03)
    if (f >= 1.0).any():
        assert np.abs(response[f >= 1.0]).max() < 0.01
