"""Image checks and channel conversions shared by detection, alignment and paste-back.

Images are numpy float32 arrays [H, W, C] with values in 0..1, RGB channel order, C = 1 (grey), 3 (RGB) or
4 (RGBA, straight alpha).
"""

from __future__ import annotations

import cv2
import numpy as np

SUPPORTED_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA: what ComfyUI nodes produce and face_utils accepts

# ITU-R BT.601 luma weights: the grey conversion OpenCV and most image libraries use.
LUMA_WEIGHTS_RGB = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class ImageFormatError(ValueError):
    """An image does not have the expected layout, dtype or channel count."""


def check_image(image: object, name: str = "image") -> np.ndarray:
    """Validate `image` as float [H, W, C] with C in {1, 3, 4}; returns it as float32 (no copy if it already is)."""
    if not isinstance(image, np.ndarray):
        raise ImageFormatError(
            f"{name} must be a numpy array [H, W, C] float32 in 0..1, got {type(image).__name__}; convert torch "
            "tensors with .cpu().numpy()"
        )
    if image.ndim != 3 or image.shape[2] not in SUPPORTED_CHANNELS:
        raise ImageFormatError(
            f"{name} must have shape [H, W, C] with C in {SUPPORTED_CHANNELS}, got {tuple(image.shape)}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageFormatError(f"{name} is empty: shape {tuple(image.shape)}")
    if not np.issubdtype(image.dtype, np.floating):
        raise ImageFormatError(
            f"{name} must be floating point with values in 0..1, got dtype {image.dtype}; for uint8 use "
            "image.astype(np.float32) / 255"
        )
    return image.astype(np.float32, copy=False)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] view or copy of a checked image: grey is repeated, the alpha of RGBA is dropped."""
    channels = image.shape[2]
    if channels == 3:
        return image
    if channels == 1:
        return np.repeat(image, 3, axis=2)
    return image[:, :, :3]


def convert_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Colour channels of `image` converted to `channels` (1 or 3): RGB to grey by BT.601 luma, grey to RGB by
    repetition. Alpha is never produced here; callers keep their own."""
    colour = image[:, :, :3] if image.shape[2] == 4 else image
    if colour.shape[2] == channels:
        return colour
    if channels == 1:
        return (colour @ LUMA_WEIGHTS_RGB)[:, :, None].astype(np.float32, copy=False)
    if channels == 3:
        return np.repeat(colour, 3, axis=2)
    raise ValueError(f"channels must be 1 or 3, got {channels}")


def colour_channels(image: np.ndarray) -> int:
    """Number of colour channels (alpha excluded): 1 or 3."""
    return 1 if image.shape[2] == 1 else 3


def ensure_hwc(array: np.ndarray) -> np.ndarray:
    """OpenCV drops the channel axis of single-channel results; put it back."""
    return array[:, :, None] if array.ndim == 2 else array


# A picture's fingerprint: its grey thumbnail of FINGERPRINT_SIDE^2 area-averaged cells in 8 bits. Scaling the
# picture (an upscaler, a resize) leaves it within a few levels; another picture of the same size differs by tens.
FINGERPRINT_SIDE = 8
# Mean absolute difference (in 8-bit levels) above which two thumbnails are different pictures: pasting restored
# faces back moves a thumbnail by a level or two, model upscalers by a few; unrelated photos differ by 30 or more.
FINGERPRINT_TOLERANCE = 12.0


def picture_fingerprint(image: np.ndarray) -> str:
    """A short, scale-independent fingerprint of a checked image (hex text, JSON-friendly)."""
    grey = convert_channels(image, 1)[:, :, 0]
    # OpenCV's area filter is the exact block mean at any size.
    thumb = cv2.resize(grey, (FINGERPRINT_SIDE, FINGERPRINT_SIDE), interpolation=cv2.INTER_AREA)
    return np.clip(np.rint(thumb * 255), 0, 255).astype(np.uint8).tobytes().hex()


def same_picture(fingerprint_a: str, fingerprint_b: str) -> bool:
    """True when two `picture_fingerprint`s belong to the same picture (or scaled copies of it)."""
    a = np.frombuffer(bytes.fromhex(fingerprint_a), dtype=np.uint8).astype(np.float32)
    b = np.frombuffer(bytes.fromhex(fingerprint_b), dtype=np.uint8).astype(np.float32)
    return a.shape == b.shape and float(np.abs(a - b).mean()) <= FINGERPRINT_TOLERANCE
