"""Pasting restored face crops back into their frame (or a k-times larger canvas of it).

Each face is handled only inside the canvas rectangle its crop covers: the restored crop is warped back there
(low-passed first when it is shrunk, so a 2048 crop on a 200 pixel face does not alias), optionally colour
matched to the original pixels, and blended in through a soft mask measured in units of the crop, which
alignment has normalised to the face. Pixels where the mask is zero keep their exact input values.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from .alignment import INTERPOLATIONS
from .choices import DEFAULT_EROSION, DEFAULT_FEATHER, MASK_SHAPES
from .colour import ColourStats, colour_apply, colour_stats, with_luminance
from .images import check_image, colour_channels, convert_channels, ensure_hwc
from .parsing import PARSE_SIZE, FaceParser
from .records import FaceRecord
from .resample import affine_scale, antialias_for_shrink, compose_affine, scale_affine, translate_affine

logger = logging.getLogger(__name__)

# Semi-axes of the ellipse mask as fractions of the crop side, centred in the crop: the full height, and a
# little narrower than the crop because aligned faces are taller than wide (both templates put the eyes about
# 0.21-0.25 of the crop apart, the face about 0.5 wide).
ELLIPSE_SEMI_AXES_UV = (0.44, 0.5)
# Canvas sizes may differ from an exact multiple of the frame by rounding; more than this many pixels of
# disagreement between the two axes means another aspect ratio.
CANVAS_ROUNDING_PX = 1.0


class CanvasMismatchError(ValueError):
    """The canvas is not the frame the faces were detected on, nor a uniformly scaled copy of it."""


@dataclass(frozen=True)
class PasteSettings:
    """How restored crops are blended back.

    Attributes:
        mask_shape: "ellipse" (default; an ellipse filling the crop's height), "box" (the crop square) or
            "parsing" (ParseNet's face mask, limited to the box; needs a `FaceParser`).
        erosion: how far the mask's outer edge lies inside the shape, as a fraction of the crop side (which
            alignment makes proportional to the face). 0.04 keeps clear of the crop's border pixels.
        feather: width of the soft transition, inward from the eroded edge, as a fraction of the crop side.
        opacity: how much of the pasted face shows over the original inside the mask: 1 all of it, 0 none (the
            image unchanged). GPEN's own blend with its input (upstream's 0.8) is the runner's `strength`, not this.
        color_correction: match the low-frequency colour and tone of the restored face to the original under the
            mask (a per-channel mean/contrast match over the face, then a smooth local mean match), which removes
            colour casts and the visible edge they make; the detail the restorer added is kept.
        interpolation: resampler for the inverse warp: "cubic" (default), "lanczos" or "linear".
        keep_luminance: paste only the restored face's colour and keep the picture's own luminance exactly (for
            colourised faces: the face gains colour and never loses the original's detail). Colour correction,
            which would pull the colour back to the original's, is then not applied.
    """

    mask_shape: str = "ellipse"
    erosion: float = DEFAULT_EROSION
    feather: float = DEFAULT_FEATHER
    opacity: float = 1.0
    color_correction: bool = True
    interpolation: str = "cubic"
    keep_luminance: bool = False

    def for_colourised(self, keep_luminance: bool) -> PasteSettings:
        """These settings for faces a model colourised: no colour correction (the original's colour, often none,
        would pull theirs back), the picture's own luminance kept exactly when `keep_luminance`."""
        return replace(self, color_correction=False, keep_luminance=keep_luminance)

    def __post_init__(self) -> None:
        if self.mask_shape not in MASK_SHAPES:
            raise ValueError(f"Unknown mask_shape {self.mask_shape!r}; expected one of {MASK_SHAPES}")
        if not 0.0 <= self.erosion < 0.5:
            raise ValueError(f"erosion is a fraction of the crop side in [0, 0.5), got {self.erosion}")
        if not 0.0 <= self.feather <= 0.5:
            raise ValueError(f"feather is a fraction of the crop side in [0, 0.5], got {self.feather}")
        if not 0.0 <= self.opacity <= 1.0:
            raise ValueError(f"opacity must be in 0..1, got {self.opacity}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"Unknown interpolation {self.interpolation!r}; expected one of {tuple(INTERPOLATIONS)}"
            )


def paste_faces(
    image: np.ndarray,
    crops: Sequence[np.ndarray],
    faces: Sequence[FaceRecord],
    settings: PasteSettings = PasteSettings(),
    *,
    parser: FaceParser | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste restored `crops` back at their `faces`.

    Args:
        image: float32 [H, W, C] in 0..1 (C = 1, 3 or 4): the frame the faces were detected on, or a copy of it
            scaled by any factor k (for example 2x by an upscaler); k is read from the size ratio.
        crops: restored crops, float32 [s, s, C'] in 0..1, one per face, in any channel count (converted to the
            image's; the image's alpha is kept) and any size s (the face's affine is rescaled from its
            `crop_size` to s). A crop's own alpha (C' = 4) weights its mask: it is pasted only where that is
            above 0 (see `face_utils.repair`).
        faces: aligned records (see `align_face`), in paste order: later faces go over earlier ones.
        settings: mask, opacity and colour options.
        parser: needed when `settings.mask_shape` is "parsing" (see `load_face_parser`).

    Returns:
        (pasted image, float32 [H, W, C], a new array) and (mask, float32 [H, W] in 0..1: the union of the face
        masks, opacity not included). Wherever mask is 0 the image is bit-identical to the input.
    """
    image = check_image(image)
    return blend_faces(image, prepare_faces(image, crops, faces, settings, parser=parser), settings)


@dataclass
class PreparedFace:
    """One face ready to be blended into its canvas: the rectangle it covers (`box_yyxx`: y0, y1, x0, x1), its
    mask there, the restored pixels warped there (in the canvas's colour channels), the face's side in canvas
    pixels, and its colour statistics (None when colour correction is off)."""

    face: FaceRecord
    box_yyxx: tuple[int, int, int, int]
    mask: np.ndarray
    restored: np.ndarray
    face_side_px: float
    colour: ColourStats | None


def prepare_faces(
    image: np.ndarray,
    crops: Sequence[np.ndarray],
    faces: Sequence[FaceRecord],
    settings: PasteSettings = PasteSettings(),
    *,
    parser: FaceParser | None = None,
) -> list[PreparedFace | None]:
    """The first half of `paste_faces` (same arguments): each face's geometry, mask, warped pixels and colour
    statistics, measured on `image` (None for a face entirely outside the canvas). Video paths smooth the colour
    statistics over time between this and `blend_faces`."""
    image = check_image(image)
    if len(crops) != len(faces):
        raise ValueError(f"Got {len(crops)} crops for {len(faces)} faces; pass one restored crop per face")
    if settings.mask_shape == "parsing" and parser is None:
        raise ValueError(
            "mask_shape 'parsing' needs a face parser: load one with face_utils.load_face_parser(model_dir), or "
            "choose mask_shape 'ellipse' or 'box'"
        )
    return [_prepare_one(image, check_image(crop, "crop"), face, settings, parser) for crop, face in zip(crops, faces)]


def blend_faces(
    image: np.ndarray,
    prepared: Sequence[PreparedFace | None],
    settings: PasteSettings = PasteSettings(),
    *,
    colours: Sequence[ColourStats | None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The second half of `paste_faces`: blend `prepared` faces into a copy of `image` in order (later over
    earlier), each colour-corrected with its own statistics or with `colours[i]` when given (smoothed ones).
    Returns (image, mask) as `paste_faces` does."""
    image = check_image(image)
    result = image.copy()
    combined = np.zeros(image.shape[:2], dtype=np.float32)
    for position, face in enumerate(prepared):
        if face is not None:
            colour = face.colour if colours is None or colours[position] is None else colours[position]
            _blend_one(result, combined, image, face, settings, colour)
    return result, combined


def canvas_scale_xy(canvas_hw: tuple[int, int], frame_hw: tuple[int, int]) -> tuple[float, float]:
    """Per-axis factors from the detection frame to the canvas; raises `CanvasMismatchError` unless they agree
    up to rounding of the canvas size."""
    (canvas_h, canvas_w), (frame_h, frame_w) = canvas_hw, frame_hw
    scale_x, scale_y = canvas_w / frame_w, canvas_h / frame_h
    # Either axis may carry the rounding, so the sizes disagree only if neither factor predicts the other side.
    height_off = abs(canvas_h - frame_h * scale_x) > CANVAS_ROUNDING_PX
    width_off = abs(canvas_w - frame_w * scale_y) > CANVAS_ROUNDING_PX
    if height_off and width_off:
        raise CanvasMismatchError(
            f"The faces were detected on a {frame_w}x{frame_h} (w x h) image but the canvas is {canvas_w}x{canvas_h}, "
            f"which is not the same picture scaled ({scale_x:.4g}x wide, {scale_y:.4g}x high). Paste onto that image "
            "or a uniformly resized copy of it."
        )
    return scale_x, scale_y


def crop_from_canvas_affine(face: FaceRecord, crop_side: int, canvas_hw: tuple[int, int]) -> np.ndarray:
    """2x3 matrix mapping canvas pixels to pixels of a `crop_side` crop of `face`."""
    scale_x, scale_y = canvas_scale_xy(canvas_hw, face.image_size_hw)
    crop_scale = crop_side / face.crop_size
    frame_from_canvas = scale_affine(1.0 / scale_x, 1.0 / scale_y)
    return compose_affine(scale_affine(crop_scale, crop_scale), compose_affine(face.affine, frame_from_canvas))


def face_region(
    face: FaceRecord, crop_hw: tuple[int, int], canvas_hw: tuple[int, int]
) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """The canvas rectangle (y0, y1, x0, x1) a crop of `crop_hw` pixels of `face` covers, clipped to the canvas,
    and the 2x3 matrix from that rectangle's pixels to the crop's; None when the face lies outside the canvas.
    Nothing outside the rectangle is read or written by paste-back. Raises ValueError for an unaligned face or a
    crop that is not square."""
    if not face.is_aligned:
        raise ValueError("Cannot paste an unaligned face: align it with face_utils.align_face first")
    crop_side, crop_w = crop_hw
    if crop_w != crop_side:
        raise ValueError(f"Restored crops must be square, got {crop_w}x{crop_side} (w x h)")
    canvas_h, canvas_w = canvas_hw
    crop_from_canvas = crop_from_canvas_affine(face, crop_side, (canvas_h, canvas_w))
    canvas_from_crop = cv2.invertAffineTransform(crop_from_canvas)
    edge = crop_side - 0.5
    corners = np.array([[-0.5, -0.5, 1.0], [edge, -0.5, 1.0], [-0.5, edge, 1.0], [edge, edge, 1.0]])
    corners_xy = corners @ canvas_from_crop.T
    x0 = max(math.floor(corners_xy[:, 0].min()), 0)
    y0 = max(math.floor(corners_xy[:, 1].min()), 0)
    x1 = min(math.ceil(corners_xy[:, 0].max()) + 1, canvas_w)
    y1 = min(math.ceil(corners_xy[:, 1].max()) + 1, canvas_h)
    if x1 <= x0 or y1 <= y0:
        logger.info("Face at %s lies outside the canvas; nothing pasted", face.box_xyxy)
        return None
    return (y0, y1, x0, x1), compose_affine(crop_from_canvas, translate_affine(x0, y0))


def face_mask_uv(u: np.ndarray, v: np.ndarray, shape: str, erosion: float, feather: float) -> np.ndarray:
    """Mask value at normalised crop coordinates (u, v in 0..1 across the crop, (0.5, 0.5) its centre) for the
    geometric shapes "ellipse" and "box": 1 deeper than erosion + feather inside the shape, easing to 0 at
    erosion inside its edge."""
    if shape == "box":
        inside = np.minimum(np.minimum(u, 1.0 - u), np.minimum(v, 1.0 - v))
    elif shape == "ellipse":
        semi_u, semi_v = ELLIPSE_SEMI_AXES_UV
        du, dv = (u - 0.5) / semi_u, (v - 0.5) / semi_v
        radius = np.sqrt(du * du + dv * dv)
        # First-order distance to the ellipse: (1 - r) / |grad r|, exact on the boundary's normal direction.
        gradient = np.sqrt((du / semi_u) ** 2 + (dv / semi_v) ** 2) / np.maximum(radius, 1e-6)
        inside = (1.0 - radius) / np.maximum(gradient, 1e-6)
    else:
        raise ValueError(f"face_mask_uv draws 'ellipse' or 'box', got {shape!r}")
    if feather <= 0.0:
        return (inside > erosion).astype(np.float32)
    t = np.clip((inside - erosion) / feather, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def _prepare_one(
    original: np.ndarray, crop: np.ndarray, face: FaceRecord, settings: PasteSettings, parser: FaceParser | None
) -> PreparedFace | None:
    side = crop.shape[0]
    placed = face_region(face, crop.shape[:2], original.shape[:2])
    if placed is None:
        return None
    (y0, y1, x0, x1), crop_from_region = placed
    mask = _region_mask(crop, crop_from_region, (y1 - y0, x1 - x0), settings, parser)
    channels = colour_channels(original)
    warped = _warp_crop_to_region(crop, crop_from_region, (y1 - y0, x1 - x0), settings)
    if crop.shape[2] == 4:
        mask = mask * warped[:, :, 3]  # a crop's alpha limits where it is pasted (a repaired face: its damage)
    restored = convert_channels(warped, channels)
    face_side_px = side / affine_scale(crop_from_region)
    colour = None
    if settings.color_correction and not settings.keep_luminance:
        colour = colour_stats(original[y0:y1, x0:x1, :channels], restored, mask, face_side_px)
    return PreparedFace(face, (y0, y1, x0, x1), mask, restored, face_side_px, colour)


def _blend_one(
    result: np.ndarray,
    combined: np.ndarray,
    original: np.ndarray,
    face: PreparedFace,
    settings: PasteSettings,
    colour: ColourStats | None,
) -> None:
    y0, y1, x0, x1 = face.box_yyxx
    region_combined = combined[y0:y1, x0:x1]
    # The union 1 - (1 - c)(1 - m), written so a tiny m still makes c positive in float32 (every pixel that
    # changes is inside the returned mask).
    region_combined += face.mask * (1.0 - region_combined)
    weight = face.mask
    if not weight.any() or settings.opacity == 0.0:
        return
    channels = colour_channels(result)
    current = result[y0:y1, x0:x1, :channels]
    restored = face.restored
    if settings.keep_luminance:
        # Luma is linear in RGB: a target with the original's luma stays on it through every blend below.
        restored = with_luminance(restored, original[y0:y1, x0:x1, :channels])
    elif colour is not None:
        reference = original[y0:y1, x0:x1, :channels]
        own = face.colour
        if colour is not own and own is not None:
            # Statistics smoothed over time: the local colour target is this frame's original, moved onto the
            # smoothed mean and spread (else the local step would bring the frame's own wobble back).
            spread = np.where(own.reference_std > 1e-4, colour.reference_std / np.maximum(own.reference_std, 1e-4), 1)
            reference = ((reference - own.reference_mean) * spread + colour.reference_mean).astype(np.float32)
        restored = colour_apply(reference, restored, face.mask, face.face_side_px, *colour.gain_offset())
    # The face's own blend with the original at `opacity`, laid over what earlier faces left through its mask:
    # where faces overlap, their restorations share the opacity instead of each applying it again. Written in
    # place through one buffer (a 700-px region: 26 -> 7 ms); where the weight is 0 the step is an exact 0.
    original_region = original[y0:y1, x0:x1, :channels]
    step = np.subtract(restored, original_region)
    step *= np.float32(settings.opacity)
    step += original_region  # the face's target
    step -= current
    step *= weight[:, :, None]
    current += step


def _region_mask(
    crop: np.ndarray,
    crop_from_region: np.ndarray,
    region_hw: tuple[int, int],
    settings: PasteSettings,
    parser: FaceParser | None,
) -> np.ndarray:
    """The face mask [h, w] float32 over the canvas region, evaluated at each pixel's position in the crop."""
    height, width = region_hw
    side = crop.shape[0]
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    # Crop pixel centres are at integer coordinates, so the crop spans -0.5 .. side - 0.5.
    (a, b, c), (d, e, f) = (crop_from_region / side).astype(np.float32)
    shift = np.float32(0.5 / side)
    u = (a * xs + (b * ys + (c + shift)))
    v = (d * xs + (e * ys + (f + shift)))
    if settings.mask_shape != "parsing":
        return face_mask_uv(u, v, settings.mask_shape, settings.erosion, settings.feather)
    box = face_mask_uv(u, v, "box", settings.erosion, settings.feather)
    parsed = parser.face_mask(crop, size=PARSE_SIZE)
    if settings.feather > 0.0:
        # Soften the class boundaries by the same face-relative amount as the box edge.
        sigma = settings.feather * PARSE_SIZE / 3.0
        parsed = cv2.GaussianBlur(parsed, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REPLICATE)
    sampled = cv2.remap(
        parsed, u * PARSE_SIZE - 0.5, v * PARSE_SIZE - 0.5, interpolation=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )
    return np.clip(sampled, 0.0, 1.0) * box


def _warp_crop_to_region(
    crop: np.ndarray, crop_from_region: np.ndarray, region_hw: tuple[int, int], settings: PasteSettings
) -> np.ndarray:
    """The crop resampled onto the canvas region; low-passed first when it has more pixels than the face."""
    source, filtered_from_crop = antialias_for_shrink(crop, affine_scale(crop_from_region))
    crop_from_region = compose_affine(filtered_from_crop, crop_from_region)
    height, width = region_hw
    warped = cv2.warpAffine(
        source, crop_from_region, (width, height),
        flags=INTERPOLATIONS[settings.interpolation] | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE,
    )
    return np.clip(ensure_hwc(warped), 0.0, 1.0)
