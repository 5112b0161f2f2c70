"""`load_gpen`: any published GPEN-BFR file (.pth/.pt, .safetensors, .onnx) to a ready-to-run module."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..model_files.checkpoints import read_checkpoint, read_safetensors
from ..model_files.errors import UnsupportedCheckpointError
from .config import WHERE_TO_GET, infer_config
from .model import GPEN

logger = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pth", ".pt")
# Wrappers seen around GPEN state dicts, most inference-worthy first: training checkpoints hold the EMA
# generator as `g_ema` (rosinality-style) or `params_ema` (BasicSR-style) next to the raw weights.
CONTAINER_KEYS = ("g_ema", "params_ema", "params", "state_dict")


def load_gpen(path: str | Path, *, where_to_get: str = WHERE_TO_GET) -> nn.Module:
    """Load a GPEN model from `path`, in eval mode, on the CPU.

    `.pth`/`.pt` are read with `torch.load(weights_only=True)` (no code in the file ever runs),
    `.safetensors` with safetensors, `.onnx` through onnxruntime (an optional dependency). Hyperparameters come
    from the weights. The result takes `[B, 3, S, S]` RGB in [-1, 1] and returns the same shape; `.size` is S.
    Raises `UnsupportedCheckpointError` for anything that is not a usable GPEN file. Every message ends with
    `where_to_get`, a sentence saying which file is expected and where it comes from (by default the ComfyUI
    folder; the command line names the download address instead).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GPEN model file not found: {path}. {where_to_get}.")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from .onnx_model import OnnxGPEN

        try:
            return OnnxGPEN(path)
        except UnsupportedCheckpointError as exc:
            raise UnsupportedCheckpointError(f"{exc} {where_to_get}.") from exc
    if suffix == ".safetensors":
        state_dict = read_safetensors(path, where_to_get=where_to_get)
    elif suffix in TORCH_SUFFIXES:
        checkpoint = read_checkpoint(path, where_to_get=where_to_get)
        state_dict = unwrap_state_dict(checkpoint, source=path.name, where_to_get=where_to_get)
    else:
        raise UnsupportedCheckpointError(
            f"Cannot read {path.name}: expected a .pth, .pt, .safetensors or .onnx GPEN file, "
            f"found a '{suffix or 'no'}' extension. {where_to_get}."
        )
    try:
        model = GPEN.from_state_dict(state_dict)
    except UnsupportedCheckpointError as exc:
        raise UnsupportedCheckpointError(f"{path.name}: {exc} {where_to_get}.") from exc
    logger.info("Loaded %s as GPEN(%s)", path.name, model.extra_repr())
    return model


def unwrap_state_dict(
    obj: object, *, source: str = "checkpoint", where_to_get: str = WHERE_TO_GET
) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a checkpoint: unwraps `CONTAINER_KEYS` and a DataParallel `module.` prefix."""
    while isinstance(obj, Mapping) and not _is_tensor_mapping(obj):
        inner = next((obj[k] for k in CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not _is_tensor_mapping(obj):
        found = f"a {type(obj).__name__}"
        if isinstance(obj, Mapping):
            found += f" with keys {', '.join(map(str, list(obj)[:6]))}"
        raise UnsupportedCheckpointError(
            f"{source}: expected a GPEN state dict (name -> tensor), possibly inside one of "
            f"{', '.join(CONTAINER_KEYS)}; found {found}. {where_to_get}."
        )
    state_dict = dict(obj)
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    return state_dict


def _is_tensor_mapping(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(key, str) and isinstance(v, torch.Tensor) for key, v in obj.items())


def model_size(path: Path) -> int | None:
    """The crop size of the GPEN in `path`, read from what the file holds (tensor names and shapes, or the ONNX
    graph's input), or None when it is not a readable GPEN file. Cached per file path, size and modification
    time, so listing a model folder again costs nothing."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return _model_size(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _model_size(path: str, _size: int, _mtime_ns: int) -> int | None:
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".onnx":
            from .onnx_model import OnnxGPEN

            return OnnxGPEN(path).size
        if suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(path, framework="pt") as file:
                shapes = {key: torch.empty(file.get_slice(key).get_shape(), device="meta") for key in file.keys()}
        else:
            # mmap: only the tensor headers are read, not the weights.
            shapes = unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
        return int(infer_config(shapes)["size"])
    except Exception:  # any unreadable or foreign file simply ranks last; loading it reports why
        return None
