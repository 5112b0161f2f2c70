"""The one place where image layouts change: ComfyUI `IMAGE` batches, numpy frames and GPEN model tensors.

- ComfyUI `IMAGE`: torch float `[B, H, W, C]`, RGB(A), values in [0, 1], usually on the CPU.
- ComfyUI `MASK`: torch float `[B, H, W]` in [0, 1].
- Frame (what `face_utils` takes): numpy float32 `[H, W, C]`, RGB(A), [0, 1]; C in {1, 3, 4}.
- GPEN input/output: torch `[N, 3, S, S]`, RGB, [-1, 1], on the model's device and dtype.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGE_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA: what ComfyUI nodes produce and face_utils accepts


def check_image(image: torch.Tensor, *, where: str, name: str = "image") -> None:
    """Raise `ValueError` unless `image` is a ComfyUI IMAGE: a float tensor `[B, H, W, C]`, C in {1, 3, 4}."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{where}: `{name}` must be an IMAGE tensor [B, H, W, C], got {type(image).__name__}")
    if image.ndim != 4 or image.shape[-1] not in IMAGE_CHANNELS or not image.is_floating_point():
        raise ValueError(
            f"{where}: `{name}` must be an IMAGE, a float tensor [batch, height, width, channels] with 1, 3 or 4 "
            f"channels; got {image.dtype} {list(image.shape)}. Connect an IMAGE output (Load Image, VAE Decode)."
        )


def frame_to_numpy(image: torch.Tensor, index: int) -> np.ndarray:
    """Frame `index` of an IMAGE batch as a numpy float32 `[H, W, C]` array in [0, 1] (a copy, on the CPU)."""
    return image[index].detach().to(device="cpu", dtype=torch.float32).clamp(0, 1).numpy().copy()


def frames_to_image(frames: list[np.ndarray]) -> torch.Tensor:
    """Stack numpy frames `[H, W, C]` (all the same shape) into an IMAGE `[B, H, W, C]` float32 on the CPU."""
    return torch.from_numpy(np.stack([np.asarray(f, dtype=np.float32) for f in frames]))


def resize_crops(crops: torch.Tensor, size: int) -> torch.Tensor:
    """Square crops `[N, H, W, C]` (channels last) resized to `[N, size, size, C]`.

    Bicubic with antialiasing, so shrinking a 2048 crop for a 512 model does not alias; values are clamped back
    to [0, 1] because bicubic overshoots at edges.
    """
    if crops.shape[1] == size and crops.shape[2] == size:
        return crops
    chw = crops.movedim(-1, 1)
    out = F.interpolate(chw, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return out.clamp(0, 1).movedim(1, -1)


def rgb_crops(crops: torch.Tensor) -> torch.Tensor:
    """Crops `[N, S, S, C]` (C in {1, 3, 4}) as RGB `[N, S, S, 3]`: alpha dropped, grey repeated (a view)."""
    return crops[..., :3] if crops.shape[-1] >= 3 else crops.expand(*crops.shape[:-1], 3)


def crops_to_model_input(crops: torch.Tensor, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Crops `[N, S, S, C]` in [0, 1] (see `rgb_crops`) to GPEN's `[N, 3, S, S]` in [-1, 1] on `device` as
    `dtype` (upstream GPEN normalises with mean 0.5 and std 0.5)."""
    x = rgb_crops(crops).to(device=device, dtype=torch.float32).movedim(-1, 1)
    return (x * 2 - 1).to(dtype)


def model_output_to_crops(output: torch.Tensor) -> torch.Tensor:
    """GPEN output `[N, 3, S, S]` (about [-1, 1], any device and dtype) to crops `[N, S, S, 3]` float32 in
    [0, 1] on the CPU."""
    return ((output.float() + 1) / 2).clamp(0, 1).movedim(1, -1).cpu()
