"""`--background-upscale`: upstream GPEN's selfie mode on the command line. The whole picture is enlarged by an
upscale model (RealESRNet x2 as upstream uses, or any model spandrel reads: the library core ComfyUI's upscaler
uses), and the restored faces are pasted onto that canvas. spandrel is an optional extra, as PyAV is for videos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..model_files.errors import MissingDependencyError, UnsupportedCheckpointError

INSTALL_HINT = "pip install spandrel (or the pack's extra: pip install 'comfyui-gpen-restore[upscale]')"
# The picture goes through the upscaler in tiles of this side (its activations grow with the area: RealESRNet
# holds 32 to 64 channels at full resolution), each with this many pixels of context on every side.
TILE = 512
TILE_PAD = 16


class Upscaler:
    """An upscale model on a device; `upscale(image)` enlarges a float32 [H, W, C] picture by `scale`."""

    def __init__(self, path: Path, device: torch.device) -> None:
        try:
            import spandrel
        except ImportError as exc:
            raise MissingDependencyError(f"--background-upscale needs spandrel, which is not installed here: "
                                         f"{INSTALL_HINT}") from exc
        try:
            descriptor = spandrel.ModelLoader().load_from_file(str(path))
        except Exception as exc:  # spandrel's refusals share no base class
            raise UnsupportedCheckpointError(f"--background-upscale {path.name}: not an upscale model spandrel reads "
                                             f"({type(exc).__name__}: {exc})") from exc
        if not isinstance(descriptor, spandrel.ImageModelDescriptor):
            raise UnsupportedCheckpointError(f"--background-upscale {path.name} is a {descriptor.architecture.name} "
                                             "model, not an upscaler")
        self.name, self.model, self.scale = path.name, descriptor.to(device).eval(), descriptor.scale
        self.device = device

    def upscale(self, image: np.ndarray) -> np.ndarray:
        """`image` enlarged `scale` times, tile by tile (each tile with `TILE_PAD` pixels of context, cut away
        afterwards, so no seam shows); alpha is enlarged by resizing, grey by the RGB model."""
        height, width, channels = image.shape
        rgb = np.repeat(image, 3, axis=2) if channels == 1 else image[:, :, :3]
        source = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
        scale = self.scale
        out = torch.empty((1, 3, height * scale, width * scale))
        with torch.inference_mode():
            for top in range(0, height, TILE):
                for left in range(0, width, TILE):
                    y0, x0 = max(top - TILE_PAD, 0), max(left - TILE_PAD, 0)
                    y1, x1 = min(top + TILE + TILE_PAD, height), min(left + TILE + TILE_PAD, width)
                    tile = self.model(source[:, :, y0:y1, x0:x1].to(self.device)).float().cpu()
                    bottom, right = min(top + TILE, height), min(left + TILE, width)
                    out[:, :, top * scale : bottom * scale, left * scale : right * scale] = tile[
                        :, :, (top - y0) * scale : (bottom - y0) * scale, (left - x0) * scale : (right - x0) * scale]
        result = out[0].permute(1, 2, 0).clamp(0.0, 1.0).numpy()
        if channels == 1:
            result = result.mean(axis=2, keepdims=True)
        elif channels == 4:
            alpha = torch.from_numpy(np.ascontiguousarray(image[:, :, 3]))[None, None]
            enlarged = torch.nn.functional.interpolate(alpha, scale_factor=scale, mode="bicubic").clamp(0, 1)
            result = np.concatenate([result, enlarged[0, 0, :, :, None].numpy()], axis=2)
        return np.ascontiguousarray(result, dtype=np.float32)
