"""The one place where ComfyUI image batches become numpy frames and back.

- ComfyUI `IMAGE`: torch float `[B, H, W, C]`, RGB(A), values in [0, 1], usually on the CPU.
- ComfyUI `MASK`: torch float `[B, H, W]` in [0, 1].
- Frame (what `face_utils` takes): numpy float32 `[H, W, C]`, RGB(A), [0, 1]; C in {1, 3, 4}.

GPEN's own tensors (`[N, 3, S, S]` in [-1, 1]) are converted by `gpen_arch.runner`, which owns the model's call.
"""

from __future__ import annotations

import numpy as np
import torch

from .images import SUPPORTED_CHANNELS


class ImageBatchError(ValueError):
    """Something that is not a ComfyUI IMAGE batch where one is needed."""


def check_image_batch(image: torch.Tensor, *, name: str = "image") -> None:
    """Raise `ImageBatchError` unless `image` is a ComfyUI IMAGE: a float tensor `[B, H, W, C]`, C in {1, 3, 4}."""
    if not isinstance(image, torch.Tensor):
        raise ImageBatchError(f"`{name}` must be an IMAGE tensor [B, H, W, C], got {type(image).__name__}")
    if image.ndim != 4 or image.shape[-1] not in SUPPORTED_CHANNELS or not image.is_floating_point():
        raise ImageBatchError(
            f"`{name}` must be an IMAGE, a float tensor [batch, height, width, channels] with 1, 3 or 4 "
            f"channels; got {image.dtype} {list(image.shape)}. Connect an IMAGE output (Load Image, VAE Decode)."
        )


def frame_to_numpy(image: torch.Tensor, index: int) -> np.ndarray:
    """Frame `index` of an IMAGE batch as a numpy float32 `[H, W, C]` array in [0, 1] (a copy, on the CPU)."""
    return image[index].detach().to(device="cpu", dtype=torch.float32).clamp(0, 1).numpy().copy()


def frames_to_image(frames: list[np.ndarray]) -> torch.Tensor:
    """Stack numpy frames `[H, W, C]` (all the same shape) into an IMAGE `[B, H, W, C]` float32 on the CPU."""
    return torch.from_numpy(np.stack([np.asarray(f, dtype=np.float32) for f in frames]))
