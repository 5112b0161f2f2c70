"""Repairing damaged faces (GPEN-Inpainting, trained on faces whose damaged pixels are painted white).

The damage is a mask in picture space (1 = damaged: scratches, tears, missing parts). It is cut out with each face
exactly as the face's pixels are (an extra channel of the frame, `with_damage`), painted white in the crop
(`painted`), and after the model ran becomes the restored crop's alpha, grown and feathered in face units
(`paste_weight`). Paste-back weights its mask by a crop's alpha, so only the damaged area changes: every other
pixel of the picture stays bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..gpen_arch.runner import crops_rgb
from .choices import DEFAULT_DAMAGE_FEATHER, DEFAULT_DAMAGE_GROW
from .face_set import FaceInputError
from .images import to_rgb
from .torch_pixels import gaussian_blur


# Damage, and paste weight, below half an 8-bit level is none: the far tails of the filters that cut the damage out
# with the face and feather it (growing would spread them over the whole crop).
DAMAGE_FLOOR = 0.5 / 255


@dataclass(frozen=True)
class RepairSettings:
    """How much around the damage is pasted back, as fractions of the crop side (so of the face): the damage grown
    by `grow` is pasted whole, with a soft edge `feather` wide laid outside it."""

    grow: float = DEFAULT_DAMAGE_GROW
    feather: float = DEFAULT_DAMAGE_FEATHER

    def __post_init__(self) -> None:
        if not 0.0 <= self.grow <= 0.25:
            raise ValueError(f"damage_grow is a fraction of the face in [0, 0.25], got {self.grow}")
        if not 0.0 <= self.feather <= 0.25:
            raise ValueError(f"damage_feather is a fraction of the face in [0, 0.25], got {self.feather}")


def check_damage(damage: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
    """A picture-space damage mask [H, W] in 0..1 for a frame of `frame_hw`, or a FaceInputError naming both
    sizes."""
    damage = np.asarray(damage, dtype=np.float32)
    if damage.shape != tuple(frame_hw):
        raise FaceInputError(f"the damage mask is {damage.shape[1] if damage.ndim > 1 else '?'}x{damage.shape[0]}, the "
                         f"picture {frame_hw[1]}x{frame_hw[0]}: draw the mask on this picture (white = damaged)")
    return np.clip(damage, 0.0, 1.0)


def damage_frames(masks: torch.Tensor, frame_count: int, frame_hw: tuple[int, int]):
    """A ComfyUI MASK `[B, H, W]` (or `[H, W]`; a single mask serves every frame) as `damage(frame_index)` for
    `frame_count` frames of `frame_hw`; a FaceInputError naming what does not match."""
    masks = masks[None] if masks.ndim == 2 else masks
    if masks.ndim != 3 or masks.shape[0] not in (1, frame_count):
        raise FaceInputError(f"expected one damage mask, or one per frame ({frame_count}), as a MASK [B, H, W]; got "
                         f"shape {list(masks.shape)}")
    check_damage(masks[0].cpu().numpy(), frame_hw)
    return lambda index: masks[min(index, masks.shape[0] - 1)].cpu().numpy()


def with_damage_batch(image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """An IMAGE batch `[B, H, W, C]` as RGB with its damage (a MASK, see `damage_frames`) as a fourth channel."""
    frames, height, width = image.shape[:3]
    damage = damage_frames(masks, frames, (height, width))
    rgb = crops_rgb(image)
    alpha = torch.stack([torch.from_numpy(damage(index)) for index in range(frames)]).to(image.device)
    return torch.cat([rgb, alpha[..., None].to(image.dtype)], dim=-1)


def with_damage(frame: np.ndarray, damage: np.ndarray) -> np.ndarray:
    """`frame`'s RGB (grey repeated, alpha dropped) with the damage [H, W] as a fourth channel: crops cut from it
    carry their face's damage in crop space."""
    return np.concatenate([to_rgb(frame), damage[:, :, None]], axis=2)


def painted(crops: torch.Tensor) -> torch.Tensor:
    """Crops `[n, S, S, 4]` cut from `with_damage` frames: RGB painted white where damaged (as the model was
    trained), the damage kept as alpha."""
    damage = crops[..., 3:].clamp(0.0, 1.0)
    damage = torch.where(damage >= DAMAGE_FLOOR, damage, 0.0)
    return torch.cat([crops[..., :3] * (1.0 - damage) + damage, damage], dim=-1)


def paste_weight(restored: torch.Tensor, damage: torch.Tensor, settings: RepairSettings) -> torch.Tensor:
    """Restored crops `[n, s, s, 3]` with alpha: the crop-space damage `[n, S, S]` at their size, 1 on the damage
    grown by `settings.grow` of the side, falling to 0 over `settings.feather` beyond it."""
    side = restored.shape[1]
    alpha = damage[:, None].to(restored.device, torch.float32)
    if alpha.shape[-1] != side:
        alpha = F.interpolate(alpha, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    # Grown by `grow` and by the half of the feather that the blur below takes back inside: the blur (sigma a
    # third of that half) leaves the damage and its grown band at 1 and ramps to 0 over the feather outside.
    grow = round(settings.grow * side + 0.5 * settings.feather * side)
    if grow:
        alpha = F.max_pool2d(alpha, kernel_size=2 * grow + 1, stride=1, padding=grow)
    if settings.feather:
        alpha = gaussian_blur(alpha, settings.feather * side / 6.0)
    # Below the floor nothing is pasted: the Gaussian's last taps, and the rounding noise convolution kernels
    # leave where the exact result is 0, would otherwise touch pixels far from the damage.
    alpha = torch.where(alpha >= DAMAGE_FLOOR, alpha.clamp(max=1.0), 0.0)
    return torch.cat([restored, alpha.movedim(1, -1)], dim=-1)
