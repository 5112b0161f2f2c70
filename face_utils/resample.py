"""Resampling helpers: 2x3 affine algebra, anti-aliasing before a shrinking warp, and bordered region cuts.

A warp that shrinks (fewer output than input pixels) first low-passes its source to the output's Nyquist
frequency, so fine detail fades instead of turning into moire; the interpolator then only has to place the
already band-limited signal. The low-pass is designed for the exact shrink of the warp and for everything else
the signal goes through on its way to the output, so that what the output grid can hold passes unchanged:

1. Halvings with `cv2.pyrDown` (a 5-tap binomial, response cos^4(pi nu), and exact factors of 2) while at least
   `MIN_SAMPLES_PER_OUTPUT` samples per output pixel would remain: cheap, and they cut only far above the
   output's Nyquist frequency.
2. A separable linear-phase FIR at the remaining rate r (2 to 4 samples per output pixel; the shrink itself
   when that is under 4), whose response is 1 / (pyramid response x cubic interpolator response) up to
   `PASS_EDGE` and eases to 0 at `STOP_EDGE`: the pyramid's softening and the final cubic warp's are undone in
   the pass band instead of adding up to a double blur, and everything the output grid cannot hold is cut.
3. The caller's cubic warp, which at r >= 2 samples per output pixel neither softens (compensated) nor aliases
   noticeably.

The pass band reaches a little beyond the output's Nyquist frequency on purpose. A crop enlarged from the frame
(as `warp_face` makes it) keeps the frame's near-Nyquist detail partly as interpolation images just above that
frequency; the paste folds them back in phase, so an unchanged 2048 crop comes back at 52.7-59.3 dB on the
test photos (a stop band from 0.62 cycles gives 46.8-55.9 dB, the old area + Lanczos filter 43.0-53.3). The
price is some aliasing of noise between 0.5 and about 0.9 cycles: about 2 dB on a noisy crop against an ideal
cut at Nyquist.

Frequencies below are in cycles per output pixel (the output's Nyquist frequency is 0.5).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .images import ensure_hwc

# A warp is treated as shrinking (and pre-filtered) when it has fewer output than this many pixels per input
# pixel; the margin keeps an almost 1:1 warp from being filtered needlessly.
SHRINK_THRESHOLD = 0.99
# Fewest samples per output pixel left for the FIR and the final cubic warp: with fewer the cubic's spectral
# images of the pass band fold back into it (at 1.5 the unchanged round trip lost 1.4-3 dB), and each further
# halving quarters the FIR's work.
MIN_SAMPLES_PER_OUTPUT = 2.0
# Pass band and start of the stop band (of the target; the window smears both by about 0.1), cycles per
# output pixel. Swept on the real-photo round trips of tests/test_resample_quality.py, 2048 crops on 107-197 px
# faces, worst case of unchanged dB / noisy dB (sigma 0.05): 0.5-0.62: 46.8 / 40.5, 0.5-0.7: 49.1 / 40.1,
# 0.55-0.7: 50.6 / 39.8, 0.6-0.75: 52.7 / 39.1, 0.7-0.85: 55.9 / 38.0 (the noisy worst case is the 197-px face,
# whose 5.4x shrink keeps the most noise; on 150-px faces 0.6-0.75 gives 41.1 dB). 0.6-0.75 is the first with
# 2 dB of margin on the unchanged crop.
PASS_EDGE = 0.6
STOP_EDGE = 0.75
# Half the FIR's support, in output pixels (3 gave 0.4-0.8 dB less on the unchanged round trip, 4 is 33 % more
# work); with it the whole chain's response is under 1 % from 1 cycle per output pixel on.
FIR_HALF_WIDTH = 4.0
# Largest gain of the cubic warp's compensation (the pyramid's, up to 1.35 in the pass band, is always
# undone). Near 1:1 the cubic's own softening at the source's Nyquist frequency (0.49) would call for a 2x
# boost, which only sharpens noise (a noisy 2048 crop pasted at 1.07x: 27.6 dB capped at 1.1, 26.1 dB
# uncapped); from 2 samples per output pixel on the pass band needs less than 1.1.
MAX_COMPENSATION = 1.1
# Kaiser window of the FIR's taps (beta 6: side lobes about -44 dB, a main lobe narrow enough for 4 px).
KAISER_BETA = 6.0
# OpenCV's bicubic interpolation is Keys' kernel with a = -0.75 (imgproc/src/imgwarp.cpp, interpolateCubic).
OPENCV_CUBIC_A = -0.75


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2x3 matrix of `outer` applied after `inner`."""
    outer3 = np.vstack([outer, [0.0, 0.0, 1.0]])
    inner3 = np.vstack([inner, [0.0, 0.0, 1.0]])
    return (outer3 @ inner3)[:2]


def scale_affine(scale_x: float, scale_y: float) -> np.ndarray:
    """2x3 matrix resizing an image by (scale_x, scale_y) with pixel centres at integer coordinates, the mapping
    `cv2.resize` uses: x' = (x + 0.5) * scale_x - 0.5."""
    return np.array([[scale_x, 0.0, 0.5 * scale_x - 0.5], [0.0, scale_y, 0.5 * scale_y - 0.5]])


def translate_affine(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])


def affine_scale(matrix: np.ndarray) -> float:
    """Uniform scale of a 2x3 similarity (output pixels per input pixel)."""
    return math.sqrt(abs(np.linalg.det(np.asarray(matrix, dtype=np.float64)[:, :2])))


def cubic_response(nu: np.ndarray, a: float = OPENCV_CUBIC_A) -> np.ndarray:
    """Frequency response of Keys' cubic interpolation kernel at `nu` cycles per sample (1-D)."""
    x = np.linspace(0.0, 2.0, 401)  # trapezoid rule on the piecewise cubic: errors below 1e-5 for nu <= 1
    ax = np.abs(x)
    kernel = np.where(
        ax <= 1.0, (a + 2.0) * ax**3 - (a + 3.0) * ax**2 + 1.0, a * ax**3 - 5.0 * a * ax**2 + 8.0 * a * ax - 4.0 * a
    )
    weights = np.full_like(x, x[1] - x[0])
    weights[[0, -1]] *= 0.5
    weights[1:] *= 2.0  # the kernel is even: twice the half-line integral, the origin once
    return np.cos(2.0 * np.pi * np.asarray(nu)[..., None] * x) @ (kernel * weights)


def lowpass_fir(rate: float, halvings: int, shrink: float) -> np.ndarray:
    """1-D float32 FIR for a signal sampled `rate` times per output pixel, after `halvings` pyrDown steps of a
    total `shrink`. Its target response is 1 / (pyramid response x final cubic warp's response) up to PASS_EDGE,
    easing to 0 at STOP_EDGE along a raised cosine; the taps are that response's inverse transform under a
    Kaiser window FIR_HALF_WIDTH output pixels wide on each side (even, odd length, normalised to sum 1). The
    smooth target keeps the low frequencies (up to 0.3 cycles), which carry most of a photo's energy, within
    3e-3 of 1; a least-squares fit with a free transition band rippled there by percents (38.7 dB round
    trips)."""
    half = math.ceil(FIR_HALF_WIDTH * rate)
    f = np.linspace(0.0, rate / 2.0, 32 * half + 1)  # cycles per output pixel
    pyramid = np.ones_like(f)
    for level in range(halvings):
        pyramid *= np.cos(np.pi * f * 2.0**level / shrink) ** 4
    cubic = np.maximum(cubic_response(f / rate), 1.0 / MAX_COMPENSATION)
    ease = np.clip((f - PASS_EDGE) / (STOP_EDGE - PASS_EDGE), 0.0, 1.0)
    target = 0.5 * (1.0 + np.cos(np.pi * ease)) / (pyramid * cubic)
    taps = np.arange(half + 1)
    weights = np.full_like(f, f[1] - f[0])
    weights[[0, -1]] *= 0.5
    coefficients = (2.0 / rate) * (np.cos(2.0 * np.pi * np.outer(taps, f) / rate) @ (target * weights))
    coefficients *= np.kaiser(2 * half + 3, KAISER_BETA)[half + 1 : -1]
    kernel = np.concatenate([coefficients[:0:-1], coefficients])
    return (kernel / kernel.sum()).astype(np.float32)


def pyramid_halvings(shrink: float) -> int:
    """pyrDown steps before the FIR: as many as leave at least MIN_SAMPLES_PER_OUTPUT samples per output pixel."""
    return max(0, math.floor(math.log2(shrink / MIN_SAMPLES_PER_OUTPUT)))


def prefilter_support(shrink: float) -> float:
    """Source pixels the pre-filter for `shrink` reads beyond a pixel (for margins around regions): the FIR's
    half width, the pyramid's taps (2 pixels at each level) and the cubic warp's (2 samples)."""
    return (FIR_HALF_WIDTH + 1.0) * shrink + 2.0 * 2.0 ** pyramid_halvings(shrink) + 2.0


def antialias_for_shrink(source: np.ndarray, shrink: float) -> tuple[np.ndarray, np.ndarray]:
    """Band-limit `source` [H, W, C] for a cubic warp that shrinks it by `shrink` (source pixels per output pixel).

    Returns (filtered, filtered_from_source): the filtered image, possibly halved a few times, and the 2x3 matrix
    from `source` pixels to its pixels (pixel centres at integer coordinates). Compose the warp's matrix with it;
    the warp should be cubic (the FIR compensates that interpolator's softening). Edges are replicated.
    """
    filtered_from_source = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    if shrink <= 1.0 / SHRINK_THRESHOLD:
        return source, filtered_from_source
    halvings = pyramid_halvings(shrink)
    for _ in range(halvings):
        # pyrDown keeps pixel 2i of its input as pixel i: an exact factor of 2, no rounding of the size.
        source = ensure_hwc(cv2.pyrDown(source, borderType=cv2.BORDER_REPLICATE))
    scale = 0.5**halvings
    filtered_from_source = np.array([[scale, 0.0, 0.0], [0.0, scale, 0.0]])
    kernel = lowpass_fir(shrink * scale, halvings, shrink)
    filtered = cv2.sepFilter2D(source, -1, kernel, kernel, borderType=cv2.BORDER_REPLICATE)
    return ensure_hwc(filtered), filtered_from_source


def crop_region(image: np.ndarray, x0: int, y0: int, x1: int, y1: int, border_mode: int) -> np.ndarray:
    """image[y0:y1, x0:x1] where the rectangle may reach outside the image; outside pixels follow `border_mode`
    (an OpenCV BORDER_* constant: reflect-101, replicate or constant black)."""
    height, width = image.shape[:2]
    if 0 <= x0 and 0 <= y0 and x1 <= width and y1 <= height:
        return image[y0:y1, x0:x1]
    rows, rows_inside = border_indices(y0, y1, height, border_mode)
    cols, cols_inside = border_indices(x0, x1, width, border_mode)
    region = image[rows[:, None], cols[None, :]]
    if border_mode == cv2.BORDER_CONSTANT:
        region = region * (rows_inside[:, None] & cols_inside[None, :])[:, :, None].astype(image.dtype)
    return region


def border_indices(start: int, stop: int, length: int, border_mode: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices for positions start..stop-1 of an axis of `length` pixels, and which of them are inside."""
    positions = np.arange(start, stop)
    inside = (positions >= 0) & (positions < length)
    if border_mode == cv2.BORDER_REFLECT_101 and length > 1:
        period = 2 * (length - 1)
        folded = np.mod(positions, period)
        indices = np.where(folded >= length, period - folded, folded)
    else:
        indices = np.clip(positions, 0, length - 1)
    return indices, inside
