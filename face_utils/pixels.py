"""Where the pipeline's pixel work runs (crop warps, masks, colour correction, blending), chosen once per run.

Two implementations of one small interface, held together by tests/test_torch_pixels.py: `OpenCvPixels` works on
numpy frames through OpenCV (`alignment`, `paste`), the faster choice on a CPU; `TorchPixels` works on tensors on
a CUDA device (`torch_pixels`), so a frame goes to the GPU once, its faces never leave it, and the finished frame
comes back once. `choose_pixels` picks one from the device the model runs on; the pipeline and the paste stream
are given the choice and never look at what kind of array they hold.

A frame is "uploaded" only when it has faces to work on; frames without faces stay numpy arrays throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from ..gpen_arch.runner import ieee_fp32
from . import alignment, paste, torch_pixels
from .colour import ColourStats
from .conversion import frames_to_image
from .paste import PasteSettings, PreparedFace
from .records import FaceRecord


class Pixels(Protocol):
    """The pixel work of the face pipeline on one kind of frame: a numpy array (OpenCV) or a tensor on a device."""

    def upload(self, frame: np.ndarray) -> object:
        """A CPU float32 frame [H, W, C] as this backend's frame."""

    def crops(self, frame: object, faces: Sequence[FaceRecord]) -> torch.Tensor:
        """The aligned crops of `faces` cut from `frame`: `[n, S, S, C]` float32 on the frame's device."""

    def for_paste(self, crops: torch.Tensor) -> list:
        """Restored crops `[n, S, S, C]` (any device, any float dtype) as `prepare_faces` takes them."""

    def prepare_faces(self, frame: object, crops: Sequence, faces: Sequence[FaceRecord], settings: PasteSettings,
                      *, parser: object | None = None) -> list[PreparedFace | None]:
        """`paste.prepare_faces` on this backend."""

    def blend_faces(self, frame: object, prepared: Sequence[PreparedFace | None], settings: PasteSettings, *,
                    colours: Sequence[ColourStats | None] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`paste.blend_faces` on this backend; the result (image [H, W, C], mask [H, W]) as CPU numpy arrays."""


class OpenCvPixels:
    """The pixel work on numpy frames with OpenCV, on the CPU."""

    def __repr__(self) -> str:
        return "OpenCvPixels()"

    def upload(self, frame: np.ndarray) -> np.ndarray:
        return frame

    def crops(self, frame: np.ndarray, faces: Sequence[FaceRecord]) -> torch.Tensor:
        return frames_to_image([alignment.warp_face(frame, face) for face in faces])

    def for_paste(self, crops: torch.Tensor) -> list[np.ndarray]:
        return [crop.numpy() for crop in crops.detach().to("cpu", torch.float32)]

    def prepare_faces(self, frame, crops, faces, settings, *, parser=None):
        return paste.prepare_faces(frame, crops, faces, settings, parser=parser)

    def blend_faces(self, frame, prepared, settings, *, colours=None):
        return paste.blend_faces(frame, prepared, settings, colours=colours)


class TorchPixels:
    """The pixel work on tensors on `device` (a CUDA GPU), with torch."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __repr__(self) -> str:
        return f"TorchPixels({str(self.device)!r})"

    def upload(self, frame: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(frame).to(self.device)

    def crops(self, frame: torch.Tensor, faces: Sequence[FaceRecord]) -> torch.Tensor:
        with ieee_fp32():  # the same numbers as OpenCV's on the CPU (its filters are convolutions)
            return torch.stack([torch_pixels.warp_face(frame, face) for face in faces])

    def for_paste(self, crops: torch.Tensor) -> list[torch.Tensor]:
        return list(crops.detach().to(self.device, torch.float32))

    def prepare_faces(self, frame, crops, faces, settings, *, parser=None):
        with ieee_fp32():
            return torch_pixels.prepare_faces(frame, crops, faces, settings, parser=parser)

    def blend_faces(self, frame, prepared, settings, *, colours=None):
        with ieee_fp32():
            result, mask = torch_pixels.blend_faces(frame, prepared, settings, colours=colours)
        # One transfer back for both.
        both = torch.cat([result, mask[:, :, None]], dim=2).cpu().numpy()
        return both[:, :, :-1], both[:, :, -1]


OPENCV_PIXELS = OpenCvPixels()


def choose_pixels(device: torch.device | str | None, interpolation: str = "cubic") -> Pixels:
    """The pixel backend for a model on `device`: `TorchPixels` on a CUDA device; OpenCV for the CPU (faster
    there), for other accelerators (MPS, XPU: their bicubic `grid_sample` is unchecked) and for an
    `interpolation` without a torch sampler (lanczos)."""
    if device is None or torch.device(device).type != "cuda" or not torch_pixels.supports(interpolation):
        return OPENCV_PIXELS
    return TorchPixels(torch.device(device))
