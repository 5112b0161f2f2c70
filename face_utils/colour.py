"""Colour correction: the restored face given the original's colour and tone, globally and locally.

Two steps per channel, measured under the face's mask: an affine match of the mean and spread (`ColourStats`,
which video paths smooth over time), then a smooth additive field that makes the local means equal, for casts
that vary across the face. The detail the restorer added is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .images import LUMA_WEIGHTS_RGB, ensure_hwc

# Colour correction compares restored and original colour averaged over a Gaussian of this standard deviation
# (fraction of the crop side): wide enough to ignore detail the restorer adds (pores, lashes, sharp edges),
# narrow enough to follow shading across the face.
COLOR_CORRECTION_SIGMA = 0.06
# The colour-correction field is smooth, so it is computed on a copy where the crop side spans this many pixels.
COLOR_CORRECTION_GRID = 64
# Colour correction measures contrast after a blur of this standard deviation (fraction of the crop side), so
# that eyes, brows and shading count but the sharpness a restorer adds to a blurry face does not.
COLOR_STATS_SIGMA = 0.03
# Limits of the per-channel contrast gain colour correction may apply: wide enough for strong casts, narrow
# enough that a flat restored face is not blown up to noise.
COLOR_GAIN_RANGE = (0.5, 2.0)


def with_luminance(restored: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`restored`'s colour on `reference`'s luminance, [h, w, 3] in 0..1 (a grey [h, w, 1] `restored` has no colour
    to give: `reference` comes back). Each pixel is `reference`'s luma plus `restored`'s chroma (its difference
    from its own luma, which has luma 0), the chroma shrunk towards grey only where the sum would leave 0..1: the
    luma is `reference`'s exactly, whatever the colour (swapping Y and clipping, as upstream does, moves it in
    saturated pixels)."""
    if restored.shape[-1] != 3:
        return reference.copy()
    luma = (reference @ LUMA_WEIGHTS_RGB)[..., None]  # Rec. 601, the Y of upstream's YUV colourisation
    chroma = restored - (restored @ LUMA_WEIGHTS_RGB)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(chroma > 0, (1 - luma) / chroma, np.where(chroma < 0, -luma / chroma, np.inf))
    share = np.clip(room.min(axis=-1, keepdims=True), 0.0, 1.0)
    # (The clip only removes float rounding at the range's ends.)
    return np.clip(luma + share * chroma, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class ColourStats:
    """A face's colour statistics under its mask, per channel: mean and spread of the original (`reference_*`)
    and of the restored face (`restored_*`), measured after a blur of COLOR_STATS_SIGMA so that only structure
    a blurry original and a sharp restoration share counts."""

    reference_mean: np.ndarray
    reference_std: np.ndarray
    restored_mean: np.ndarray
    restored_std: np.ndarray

    def gain_offset(self) -> tuple[np.ndarray, np.ndarray]:
        """`gain`, `offset` per channel so that gain * restored + offset has the reference's mean and spread (gain
        limited to COLOR_GAIN_RANGE): this undoes a global cast, gain and offset alike, without flattening the
        detail the restorer added."""
        std = np.maximum(self.restored_std, 1e-4)
        gain = np.where(self.restored_std > 1e-4, self.reference_std / std, 1.0)
        gain = np.clip(gain, *COLOR_GAIN_RANGE).astype(np.float32)
        return gain, (self.reference_mean - gain * self.restored_mean).astype(np.float32)


def colour_stats(
    reference: np.ndarray, restored: np.ndarray, mask: np.ndarray, face_side_px: float
) -> ColourStats | None:
    """The statistics the global half of colour correction matches (see `ColourStats`); None when the mask is
    empty."""
    small_reference, small_restored, weight, shrink_factor = _shrunk(reference, restored, mask, face_side_px)
    total = float(weight.sum())
    if total <= 1e-6:
        return None
    stats_sigma = max(COLOR_STATS_SIGMA * face_side_px * shrink_factor, 0.5)

    def mean_std(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        array = ensure_hwc(cv2.GaussianBlur(array, (0, 0), sigmaX=stats_sigma, borderType=cv2.BORDER_REPLICATE))
        mean = (array * weight).sum(axis=(0, 1)) / total
        variance = (((array - mean) ** 2) * weight).sum(axis=(0, 1)) / total
        return mean, np.sqrt(variance)

    return ColourStats(*mean_std(small_reference), *mean_std(small_restored))


def colour_apply(
    reference: np.ndarray, restored: np.ndarray, mask: np.ndarray, face_side_px: float, gain: np.ndarray,
    offset: np.ndarray,
) -> np.ndarray:
    """`restored` [h, w, C] with the low-frequency colour and tone of `reference` under `mask`: `gain` and
    `offset` (see `ColourStats.gain_offset`), then a smooth additive field making the local mask-weighted means equal
    (normalised convolution, so pixels outside the face do not pull the colour), for casts that vary across the
    face. Works on copies shrunk so the face side spans COLOR_CORRECTION_GRID pixels."""
    height, width = mask.shape
    small_reference, small_restored, weight, shrink_factor = _shrunk(reference, restored, mask, face_side_px)
    sigma = max(COLOR_CORRECTION_SIGMA * face_side_px * shrink_factor, 0.5)

    def blur(array: np.ndarray) -> np.ndarray:
        return ensure_hwc(cv2.GaussianBlur(array, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REPLICATE))

    local_total = blur(weight)
    difference = blur(small_reference * weight) - blur((small_restored * gain + offset) * weight)
    local = np.divide(difference, local_total, out=np.zeros_like(difference), where=local_total > 1e-4)
    local = ensure_hwc(cv2.resize(local, (width, height), interpolation=cv2.INTER_LINEAR))
    out = restored * gain
    out += offset
    out += local
    return np.clip(out, 0.0, 1.0, out=out)


def _shrunk(
    reference: np.ndarray, restored: np.ndarray, mask: np.ndarray, face_side_px: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Reference, restored and mask (as weights [h', w', 1]) shrunk so the face side spans COLOR_CORRECTION_GRID
    pixels (the colour fields are smooth), and the width factor of that shrink."""
    height, width = mask.shape
    factor = min(1.0, COLOR_CORRECTION_GRID / face_side_px)
    small_wh = (max(1, round(width * factor)), max(1, round(height * factor)))

    def shrink(array: np.ndarray) -> np.ndarray:
        return ensure_hwc(cv2.resize(array, small_wh, interpolation=cv2.INTER_AREA))

    return shrink(reference), shrink(restored), shrink(mask[:, :, None]), small_wh[0] / width
