"""The face pipeline's pixel work on a torch device (a GPU): crop warps and paste-back, with masks, feathering and
colour correction, on tensors that stay where the model is.

These are the twins of `alignment.warp_face` and `paste.prepare_faces` / `paste.blend_faces`, which use OpenCV
and are the faster choice on a CPU (a 2048 crop warp: OpenCV about 2.4x faster than torch's `grid_sample` on 2
cores), so `pixels.choose_pixels` takes this backend (`pixels.TorchPixels`) only on a CUDA device. Geometry,
filter designs and constants are those modules' own (imported, never restated); the arithmetic is the same steps
in torch:

- warps: torch's bicubic `grid_sample` is Keys' kernel with a = -0.75, as OpenCV's INTER_CUBIC; the region under
  the output is cut first with the frame's border rule (reflect-101, replicate or black), so the sampler's own
  border clamping only ever sees that region's replicated edge, as OpenCV's BORDER_REPLICATE does;
- anti-aliasing: `cv2.pyrDown`'s 5-tap binomial with stride 2 and the same FIR (`resample.lowpass_fir`) as
  depthwise convolutions with replicated edges;
- colour correction: OpenCV's Gaussian taps (`cv2.getGaussianKernel`, its own kernel size rule), its area
  shrinking (the same fractional-pixel weights, as two small matrix products) and bilinear enlarging.

Both paths sample at exact float32 positions (opencv-python 5's cubic and linear warps no longer quantise them
to 1/32 px), each rounding them its own way, so they agree to about 6e-5 on the fixture photos rather than bit for
bit (tests/test_torch_pixels.py holds 3e-4; tests/NUMERICS.md). Lanczos has no
torch sampler: settings asking for it take the OpenCV path (`supports`).

Images here are float32 tensors [H, W, C] in 0..1 (C = 1, 3 or 4) on one device; crops [S, S, C].
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..gpen_arch.runner import with_luminance
from .alignment import BORDERS, source_rectangle
from .colour import (
    COLOR_CORRECTION_GRID,
    COLOR_CORRECTION_SIGMA,
    COLOR_GAIN_RANGE,
    COLOR_STATS_SIGMA,
    ColourStats,
)
from .images import LUMA_WEIGHTS_RGB
from .parsing import PARSE_SIZE, FaceParser
from .paste import ELLIPSE_SEMI_AXES_UV, PasteSettings, PreparedFace, face_region
from .records import FaceRecord
from .resample import (
    SHRINK_THRESHOLD,
    border_indices,
    affine_scale,
    compose_affine,
    lowpass_fir,
    prefilter_support,
    pyramid_halvings,
    translate_affine,
)

# Interpolations with a torch sampler of the same kernel (grid_sample's modes).
SAMPLERS = {"cubic": "bicubic", "linear": "bilinear"}
# Source pixels a cubic sample reads beyond its position (2 taps), plus one for the rectangle's rounding.
CUBIC_REACH_PX = 3.0
# cv2.pyrDown's kernel: the 5-tap binomial.
PYRAMID_TAPS = (1.0 / 16, 4.0 / 16, 6.0 / 16, 4.0 / 16, 1.0 / 16)


def supports(interpolation: str) -> bool:
    """Whether this path can resample with `interpolation` (else use the OpenCV path)."""
    return interpolation in SAMPLERS


def warp_face(image: torch.Tensor, face: FaceRecord, *, interpolation: str = "cubic", border: str = "reflect"
              ) -> torch.Tensor:
    """`alignment.warp_face` (antialiased) on `image`'s device: the aligned crop [S, S, C] of `face`."""
    if tuple(image.shape[:2]) != face.image_size_hw:
        raise ValueError(
            f"The face was detected on a {face.image_size_hw} (h, w) frame but the image is "
            f"{tuple(image.shape[:2])}; warp the frame the face came from"
        )
    matrix, size = face.affine, face.crop_size
    scale = affine_scale(matrix)
    shrink = 1.0 / scale
    # Only the region under the crop is read: the cubic's reach, plus the anti-aliasing filter's when shrinking.
    margin = prefilter_support(shrink) if scale < SHRINK_THRESHOLD else CUBIC_REACH_PX
    x0, y0, x1, y1 = source_rectangle(matrix, size, margin=margin)
    region = _chw(_crop_region(image, x0, y0, x1, y1, BORDERS[border]))
    source, filtered_from_region = _antialias(region, shrink)
    filtered_from_image = compose_affine(filtered_from_region, translate_affine(-x0, -y0))
    source_from_crop = compose_affine(filtered_from_image, cv2.invertAffineTransform(matrix))
    crop = _sample(source, source_from_crop, (size, size), interpolation)
    return _hwc(crop).clamp(0.0, 1.0)


def prepare_faces(
    image: torch.Tensor,
    crops: Sequence[torch.Tensor],
    faces: Sequence[FaceRecord],
    settings: PasteSettings,
    *,
    parser: FaceParser | None = None,
) -> list[PreparedFace | None]:
    """`paste.prepare_faces` on `image`'s device: crops [s, s, C'] (moved there if elsewhere); the prepared faces
    hold tensors on that device and `ColourStats` of 1-D tensors."""
    if len(crops) != len(faces):
        raise ValueError(f"Got {len(crops)} crops for {len(faces)} faces; pass one restored crop per face")
    if settings.mask_shape == "parsing" and parser is None:
        raise ValueError("mask_shape 'parsing' needs a face parser, or choose mask_shape 'ellipse' or 'box'")
    return [_prepare_one(image, crop.to(image.device, torch.float32), face, settings, parser)
            for crop, face in zip(crops, faces)]


def blend_faces(
    image: torch.Tensor,
    prepared: Sequence[PreparedFace | None],
    settings: PasteSettings,
    *,
    colours: Sequence[ColourStats | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`paste.blend_faces` on `image`'s device: (image [H, W, C], mask [H, W])."""
    result = image.clone()
    combined = torch.zeros(image.shape[:2], dtype=torch.float32, device=image.device)
    for position, face in enumerate(prepared):
        if face is not None:
            colour = face.colour if colours is None or colours[position] is None else colours[position]
            _blend_one(result, combined, image, face, settings, colour)
    return result, combined


def _prepare_one(
    original: torch.Tensor, crop: torch.Tensor, face: FaceRecord, settings: PasteSettings, parser: FaceParser | None
) -> PreparedFace | None:
    side = crop.shape[0]
    placed = face_region(face, tuple(crop.shape[:2]), tuple(original.shape[:2]))
    if placed is None:
        return None
    (y0, y1, x0, x1), crop_from_region = placed
    region_hw = (y1 - y0, x1 - x0)
    mask = _region_mask(crop, crop_from_region, region_hw, settings, parser)
    channels = _colour_channels(original)
    shrink = affine_scale(crop_from_region)
    source, filtered_from_crop = _antialias(_chw(crop), shrink)
    source_from_region = compose_affine(filtered_from_crop, crop_from_region)
    warped = _hwc(_sample(source, source_from_region, region_hw, settings.interpolation)).clamp(0.0, 1.0)
    if crop.shape[2] == 4:
        mask = mask * warped[:, :, 3]  # a crop's alpha limits where it is pasted, as in paste._prepare_one
    restored = _convert_channels(warped, channels)
    face_side_px = side / affine_scale(crop_from_region)
    colour = None
    if settings.color_correction and not settings.keep_luminance:
        colour = _colour_stats(original[y0:y1, x0:x1, :channels], restored, mask, face_side_px)
    return PreparedFace(face, (y0, y1, x0, x1), mask, restored, face_side_px, colour)


def _blend_one(
    result: torch.Tensor, combined: torch.Tensor, original: torch.Tensor, face: PreparedFace,
    settings: PasteSettings, colour: ColourStats | None,
) -> None:
    y0, y1, x0, x1 = face.box_yyxx
    region_combined = combined[y0:y1, x0:x1]
    region_combined += face.mask * (1.0 - region_combined)  # the union, as paste._blend_one writes it
    if settings.opacity == 0.0:
        return
    channels = _colour_channels(result)
    current = result[y0:y1, x0:x1, :channels]
    original_region = original[y0:y1, x0:x1, :channels]
    restored = face.restored
    if settings.keep_luminance:
        restored = with_luminance(restored, original_region) if restored.shape[-1] == 3 else original_region
    elif colour is not None:
        reference = original_region
        own = face.colour
        if colour is not own and own is not None:
            spread = torch.where(own.reference_std > 1e-4,
                                 colour.reference_std / own.reference_std.clamp(min=1e-4), 1.0)
            reference = (reference - own.reference_mean) * spread + colour.reference_mean
        restored = _colour_apply(reference, restored, face.mask, face.face_side_px, *_gain_offset(colour))
    target = original_region + settings.opacity * (restored - original_region)
    weight = face.mask[:, :, None]
    current.copy_(torch.where(weight > 0.0, current + weight * (target - current), current))


def _region_mask(
    crop: torch.Tensor, crop_from_region: np.ndarray, region_hw: tuple[int, int], settings: PasteSettings,
    parser: FaceParser | None,
) -> torch.Tensor:
    """paste._region_mask on the device: the mask [h, w] at each region pixel's position in the crop."""
    height, width = region_hw
    side = crop.shape[0]
    xs = torch.arange(width, dtype=torch.float32, device=crop.device)[None, :]
    ys = torch.arange(height, dtype=torch.float32, device=crop.device)[:, None]
    (a, b, c), (d, e, f) = (crop_from_region / side).astype(np.float32).tolist()
    shift = 0.5 / side
    u = a * xs + (b * ys + (c + shift))
    v = d * xs + (e * ys + (f + shift))
    if settings.mask_shape != "parsing":
        return _mask_uv(u, v, settings.mask_shape, settings.erosion, settings.feather)
    box = _mask_uv(u, v, "box", settings.erosion, settings.feather)
    rgb = _chw(crop)[:3] if crop.shape[2] != 1 else _chw(crop).expand(3, -1, -1)
    parsed = parser.face_probability(rgb[None]).to(crop.device)
    if settings.feather > 0.0:
        parsed = gaussian_blur(parsed[None, None], settings.feather * PARSE_SIZE / 3.0)[0, 0]
    grid = torch.stack([u * 2.0 - 1.0, v * 2.0 - 1.0], dim=-1)[None]
    sampled = F.grid_sample(parsed[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return sampled[0, 0].clamp(0.0, 1.0) * box


def _mask_uv(u: torch.Tensor, v: torch.Tensor, shape: str, erosion: float, feather: float) -> torch.Tensor:
    """paste.face_mask_uv in torch (same formula, same constants)."""
    if shape == "box":
        inside = torch.minimum(torch.minimum(u, 1.0 - u), torch.minimum(v, 1.0 - v))
    else:
        semi_u, semi_v = ELLIPSE_SEMI_AXES_UV
        du, dv = (u - 0.5) / semi_u, (v - 0.5) / semi_v
        radius = torch.sqrt(du * du + dv * dv)
        gradient = torch.sqrt((du / semi_u) ** 2 + (dv / semi_v) ** 2) / radius.clamp(min=1e-6)
        inside = (1.0 - radius) / gradient.clamp(min=1e-6)
    if feather <= 0.0:
        return (inside > erosion).float()
    t = ((inside - erosion) / feather).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _colour_stats(reference: torch.Tensor, restored: torch.Tensor, mask: torch.Tensor, face_side_px: float
                  ) -> ColourStats | None:
    """colour.colour_stats on the device; the statistics are 1-D tensors there."""
    small_reference, small_restored, weight, shrink_factor = _shrunk(reference, restored, mask, face_side_px)
    total = weight.sum()
    if float(total) <= 1e-6:
        return None
    sigma = max(COLOR_STATS_SIGMA * face_side_px * shrink_factor, 0.5)

    def mean_std(array: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        array = gaussian_blur(array, sigma)
        mean = (array * weight).sum(dim=(0, 2, 3)) / total
        variance = (((array - mean[None, :, None, None]) ** 2) * weight).sum(dim=(0, 2, 3)) / total
        return mean, variance.sqrt()

    return ColourStats(*mean_std(small_reference), *mean_std(small_restored))


def _gain_offset(colour: ColourStats) -> tuple[torch.Tensor, torch.Tensor]:
    """ColourStats.gain_offset for statistics held as tensors."""
    gain = torch.where(colour.restored_std > 1e-4, colour.reference_std / colour.restored_std.clamp(min=1e-4), 1.0)
    gain = gain.clamp(*COLOR_GAIN_RANGE)
    return gain, colour.reference_mean - gain * colour.restored_mean


def _colour_apply(reference: torch.Tensor, restored: torch.Tensor, mask: torch.Tensor, face_side_px: float,
                  gain: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """colour.colour_apply on the device: [h, w, C] tensors, gain and offset per channel."""
    height, width = mask.shape
    small_reference, small_restored, weight, shrink_factor = _shrunk(reference, restored, mask, face_side_px)
    sigma = max(COLOR_CORRECTION_SIGMA * face_side_px * shrink_factor, 0.5)
    gain4, offset4 = gain[None, :, None, None], offset[None, :, None, None]
    local_total = gaussian_blur(weight, sigma)
    difference = gaussian_blur(small_reference * weight, sigma) - gaussian_blur(
        (small_restored * gain4 + offset4) * weight, sigma)
    local = torch.where(local_total > 1e-4, difference / local_total.clamp(min=1e-4), 0.0)
    local = F.interpolate(local, size=(height, width), mode="bilinear", align_corners=False)
    return (restored * gain + offset + _hwc(local[0])).clamp(0.0, 1.0)


def _shrunk(reference: torch.Tensor, restored: torch.Tensor, mask: torch.Tensor, face_side_px: float
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """colour._shrunk on the device, as [1, C, h', w'] tensors (mask as [1, 1, h', w'] weights)."""
    height, width = mask.shape
    factor = min(1.0, COLOR_CORRECTION_GRID / face_side_px)
    small_hw = (max(1, round(height * factor)), max(1, round(width * factor)))

    rows = _area_weights(height, small_hw[0], mask.device)
    cols = _area_weights(width, small_hw[1], mask.device)

    def shrink(array: torch.Tensor) -> torch.Tensor:
        return rows @ array @ cols.T

    return (shrink(_chw(reference)[None]), shrink(_chw(restored)[None]), shrink(mask[None, None]),
            small_hw[1] / width)


def _area_weights(size: int, small: int, device: torch.device) -> torch.Tensor:
    """[small, size] weights of cv2.resize's INTER_AREA shrink along one axis: each output pixel averages the input
    pixels its footprint covers, those cut by its edges by the fraction covered."""
    edges = np.arange(small + 1) * (size / small)
    starts, stops = edges[:-1, None], edges[1:, None]
    pixels = np.arange(size)[None, :]
    overlap = np.clip(np.minimum(stops, pixels + 1) - np.maximum(starts, pixels), 0.0, None)
    return torch.from_numpy((overlap / (size / small)).astype(np.float32)).to(device)


# --- resampling primitives ([C, H, W] or [N, C, H, W] tensors) ------------------------------------------------


def _antialias(source: torch.Tensor, shrink: float) -> tuple[torch.Tensor, np.ndarray]:
    """resample.antialias_for_shrink on [C, H, W]: halvings, then the FIR; returns the filtered image and the 2x3
    matrix from `source` pixels to its pixels."""
    identity = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    if shrink <= 1.0 / SHRINK_THRESHOLD:
        return source, identity
    halvings = pyramid_halvings(shrink)
    pyramid = torch.tensor(PYRAMID_TAPS, dtype=source.dtype, device=source.device)
    for _ in range(halvings):
        source = _separable(source, pyramid, stride=2)
    scale = 0.5**halvings
    kernel = torch.from_numpy(lowpass_fir(shrink * scale, halvings, shrink)).to(source.device, source.dtype)
    return _separable(source, kernel), np.array([[scale, 0.0, 0.0], [0.0, scale, 0.0]])


def _separable(image: torch.Tensor, taps: torch.Tensor, *, stride: int = 1) -> torch.Tensor:
    """A symmetric odd-length 1-D filter along both axes of [C, H, W] or [N, C, H, W], edges replicated, output
    pixel i at input pixel stride * i (cv2.sepFilter2D for stride 1, cv2.pyrDown's filter for stride 2)."""
    batched = image if image.ndim == 4 else image[None]
    channels, half = batched.shape[1], taps.numel() // 2
    out = F.pad(batched, (half, half, half, half), mode="replicate")
    out = F.conv2d(out, taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1), stride=(1, stride), groups=channels)
    out = F.conv2d(out, taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1), stride=(stride, 1), groups=channels)
    return out if image.ndim == 4 else out[0]


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """cv2.GaussianBlur(image, (0, 0), sigma, BORDER_REPLICATE) on [C, H, W] or [N, C, H, W] float32: OpenCV's taps
    and its kernel size rule for float images (8 sigma + 1, made odd)."""
    size = round(sigma * 8 + 1) | 1
    taps = torch.from_numpy(cv2.getGaussianKernel(size, sigma, cv2.CV_32F).ravel()).to(image.device)
    return _separable(image, taps)


def _sample(source: torch.Tensor, source_from_out: np.ndarray, out_hw: tuple[int, int], interpolation: str
            ) -> torch.Tensor:
    """Resample [C, H, W] onto an [C, h, w] grid whose pixel (x, y) lies at `source_from_out` @ (x, y, 1) in
    `source` (pixel centres at integers), edges replicated: cv2.warpAffine with WARP_INVERSE_MAP."""
    height, width = out_hw
    source_h, source_w = source.shape[-2:]
    # Normalised to grid_sample's [-1, 1] across the source's outer pixel edges (align_corners=False).
    to_unit = np.array([[2.0 / source_w, 0.0, 1.0 / source_w - 1.0], [0.0, 2.0 / source_h, 1.0 / source_h - 1.0]])
    (a, b, c), (d, e, f) = compose_affine(to_unit, source_from_out).tolist()
    xs = torch.arange(width, dtype=torch.float32, device=source.device)[None, :]
    ys = torch.arange(height, dtype=torch.float32, device=source.device)[:, None]
    grid = torch.stack([(a * xs + b * ys + c).expand(height, width), (d * xs + e * ys + f).expand(height, width)],
                       dim=-1)
    if interpolation not in SAMPLERS:
        raise ValueError(f"The device path resamples with {tuple(SAMPLERS)}, not {interpolation!r}; paste "
                         "with OpenCV (no device) for that interpolation")
    return F.grid_sample(source[None], grid[None], mode=SAMPLERS[interpolation], padding_mode="border",
                         align_corners=False)[0]


def _crop_region(image: torch.Tensor, x0: int, y0: int, x1: int, y1: int, border_mode: int) -> torch.Tensor:
    """resample.crop_region on a tensor [H, W, C] (same border rules, same index arithmetic)."""
    height, width = image.shape[:2]
    if 0 <= x0 and 0 <= y0 and x1 <= width and y1 <= height:
        return image[y0:y1, x0:x1]
    rows, rows_inside = (torch.from_numpy(a).to(image.device) for a in border_indices(y0, y1, height, border_mode))
    cols, cols_inside = (torch.from_numpy(a).to(image.device) for a in border_indices(x0, x1, width, border_mode))
    region = image[rows[:, None], cols[None, :]]
    if border_mode == cv2.BORDER_CONSTANT:
        region = region * (rows_inside[:, None] & cols_inside[None, :])[:, :, None].to(image.dtype)
    return region


def _convert_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """images.convert_channels on [H, W, C] tensors."""
    colour = image[:, :, :3] if image.shape[2] == 4 else image
    if colour.shape[2] == channels:
        return colour
    if channels == 1:
        luma = torch.from_numpy(LUMA_WEIGHTS_RGB).to(image.device)
        return (colour @ luma)[:, :, None]
    return colour.expand(-1, -1, 3)


def _colour_channels(image: torch.Tensor) -> int:
    return 1 if image.shape[2] == 1 else 3


def _chw(image: torch.Tensor) -> torch.Tensor:
    return image.permute(2, 0, 1)


def _hwc(image: torch.Tensor) -> torch.Tensor:
    return image.permute(1, 2, 0)

