"""Five-point similarity alignment of faces and the anti-aliased warp that cuts out the aligned crop."""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from .choices import TEMPLATES
from .images import check_image, ensure_hwc
from .records import FaceRecord
from .resample import (
    SHRINK_THRESHOLD,
    affine_scale,
    antialias_for_shrink,
    compose_affine,
    crop_region,
    prefilter_support,
    translate_affine,
)

INTERPOLATIONS = {"cubic": cv2.INTER_CUBIC, "linear": cv2.INTER_LINEAR, "lanczos": cv2.INTER_LANCZOS4}
BORDERS = {"reflect": cv2.BORDER_REFLECT_101, "replicate": cv2.BORDER_REPLICATE, "constant": cv2.BORDER_CONSTANT}

# Upstream GPEN's template: the classic 96x112 five-point face template (left eye, right eye, nose, mouth corners)
# made square by centring it in 112x112, padded by 0.25 of that size on every side (so 168x168), then scaled to
# the crop size. The numbers are upstream's `REFERENCE_FACIAL_POINTS`; `reference_points` applies those steps.
_GPEN_POINTS_96x112 = np.array(
    [
        [30.29459953, 51.69630051],
        [65.53179932, 51.50139999],
        [48.02519989, 71.73660278],
        [33.54930115, 92.3655014],
        [62.72990036, 92.20410156],
    ]
)
_GPEN_SQUARE_SHIFT_XY = np.array([(112 - 96) / 2, 0.0])
_GPEN_INNER_PADDING = 0.25
_GPEN_PADDED_SIZE = 112 * (1 + 2 * _GPEN_INNER_PADDING)

# The FFHQ alignment of a 512 crop as facexlib, ReActor and FaceFusion use it (facexlib's `face_template`),
# scaled linearly to other crop sizes as they do.
_FFHQ_POINTS_512 = np.array(
    [
        [192.98138, 239.94708],
        [318.90277, 240.1936],
        [256.63416, 314.01935],
        [201.26117, 371.41043],
        [313.08905, 371.15118],
    ]
)

class AlignmentError(ValueError):
    """Landmarks or settings from which no usable alignment follows."""


def reference_points(template: str, crop_size: int) -> np.ndarray:
    """The five template points [5, 2] (x, y), float64, in pixels of a `crop_size` square crop."""
    if template not in TEMPLATES:
        raise ValueError(f"Unknown alignment template {template!r}; expected one of {TEMPLATES}")
    if crop_size < 8:
        raise ValueError(f"crop_size must be at least 8 pixels, got {crop_size}")
    if template == "gpen":
        padded = _GPEN_POINTS_96x112 + _GPEN_SQUARE_SHIFT_XY + 112 * _GPEN_INNER_PADDING
        return padded * (crop_size / _GPEN_PADDED_SIZE)
    return _FFHQ_POINTS_512 * (crop_size / 512.0)


def similarity_transform(src_xy: np.ndarray, dst_xy: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) taking `src_xy` [N, 2] onto
    `dst_xy` [N, 2] (Umeyama 1991). Returns the 2x3 float64 matrix.

    The point statistics (means, covariance, its SVD, variance) are taken in float32 and the rest in float64,
    the precisions upstream GPEN's alignment ends up with, so our crops reproduce upstream's transform exactly
    rather than within float32 rounding (about 2e-4 px at 2048).
    """
    src = np.asarray(src_xy, dtype=np.float32)
    dst = np.asarray(dst_xy, dtype=np.float32)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = src_c.var(axis=0).sum()
    if src_var <= 1e-12:
        raise AlignmentError(f"Landmarks are all at one point {src_mean.tolist()}; cannot align a face from them")
    covariance = dst_c.T @ src_c / np.float32(len(src))
    u, singular, vt = np.linalg.svd(covariance)
    # Force a proper rotation: flip the weakest axis if the best orthogonal fit is a reflection.
    signs = np.array([1.0, 1.0 if np.linalg.det(covariance) >= 0 else -1.0])
    rotation = u @ np.diag(signs) @ vt
    scale = (1.0 / src_var) * (singular @ signs)
    translation = dst_mean - scale * (rotation @ src_mean)
    return np.concatenate([scale * rotation, translation[:, None]], axis=1).astype(np.float64)


def align_face(face: FaceRecord, *, crop_size: int, template: str = "gpen") -> FaceRecord:
    """A copy of `face` with `crop_size`, `template` and `affine_crop_from_image` filled in.

    The affine is the least-squares similarity taking the face's five landmarks onto `reference_points(template,
    crop_size)`; `crop_size` should be the restoration model's input size.
    """
    target = reference_points(template, crop_size)
    matrix = similarity_transform(np.array(face.landmarks_xy), target)
    return dataclasses.replace(
        face, crop_size=int(crop_size), template=template, affine_crop_from_image=tuple(map(tuple, matrix))
    )


def warp_face(
    image: np.ndarray,
    face: FaceRecord,
    *,
    interpolation: str = "cubic",
    antialias: bool = True,
    border: str = "reflect",
) -> np.ndarray:
    """Cut the aligned crop of `face` out of `image`.

    Args:
        image: float32 [H, W, C] in 0..1 (C = 1, 3 or 4; channels are warped alike, alpha straight), the frame
            the face was detected on.
        face: an aligned record (see `align_face`).
        interpolation: "cubic" (default), "lanczos" (a little sharper when enlarging a small face: +1.7 dB on
            the round trip at 512, but 4-5x slower, about 0.5 s for a 2048 crop on 2 CPU cores) or "linear"
            (upstream GPEN's choice).
        antialias: when the crop has fewer pixels than the face (a large face), the region under it is first
            low-passed to the crop's resolution (see `face_utils.resample`) so the crop does not alias.
        border: how pixels outside the frame are filled: "reflect" (default), "replicate" or "constant" (black,
            as upstream), so a face at the edge does not get a black frame.

    Returns:
        float32 [S, S, C] crop, S = face.crop_size, values clipped to 0..1 (Lanczos and cubic overshoot).
    """
    image = check_image(image)
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"Unknown interpolation {interpolation!r}; expected one of {tuple(INTERPOLATIONS)}")
    if border not in BORDERS:
        raise ValueError(f"Unknown border {border!r}; expected one of {tuple(BORDERS)}")
    if tuple(image.shape[:2]) != face.image_size_hw:
        raise ValueError(
            f"The face was detected on a {face.image_size_hw} (h, w) frame but the image is {image.shape[:2]}; "
            "warp the frame the face came from"
        )
    matrix = face.affine
    size = face.crop_size
    border_mode = BORDERS[border]
    scale = affine_scale(matrix)
    source = image
    if antialias and scale < SHRINK_THRESHOLD:
        # Filter only the region under the crop (plus the filter's reach), bordered as asked.
        x0, y0, x1, y1 = source_rectangle(matrix, size, margin=prefilter_support(1.0 / scale))
        region = crop_region(image, x0, y0, x1, y1, border_mode)
        source, filtered_from_region = antialias_for_shrink(region, 1.0 / scale)
        filtered_from_image = compose_affine(filtered_from_region, translate_affine(-x0, -y0))
        matrix = compose_affine(matrix, cv2.invertAffineTransform(filtered_from_image))
        border_mode = cv2.BORDER_REPLICATE  # the region already holds its border pixels
    crop = cv2.warpAffine(source, matrix, (size, size), flags=INTERPOLATIONS[interpolation], borderMode=border_mode)
    return np.clip(ensure_hwc(crop), 0.0, 1.0, dtype=np.float32)


def source_rectangle(crop_from_image: np.ndarray, size: int, margin: float) -> tuple[int, int, int, int]:
    """Integer (x0, y0, x1, y1) image rectangle under a `size` crop, widened by `margin` pixels."""
    image_from_crop = cv2.invertAffineTransform(crop_from_image)
    corners = np.array([[-0.5, -0.5, 1], [size - 0.5, -0.5, 1], [-0.5, size - 0.5, 1], [size - 0.5, size - 0.5, 1]])
    corners_xy = corners @ image_from_crop.T
    x0 = math.floor(corners_xy[:, 0].min() - margin)
    y0 = math.floor(corners_xy[:, 1].min() - margin)
    x1 = math.ceil(corners_xy[:, 0].max() + margin) + 1
    y1 = math.ceil(corners_xy[:, 1].max() + margin) + 1
    return x0, y0, x1, y1
