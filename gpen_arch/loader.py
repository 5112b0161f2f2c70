"""`load_gpen`: any published GPEN-BFR file (.pth/.pt, .safetensors, .onnx) to a ready-to-run module."""

from __future__ import annotations

import logging
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .config import WHERE_TO_GET
from .errors import UnsupportedCheckpointError
from .model import GPEN

logger = logging.getLogger(__name__)

TORCH_SUFFIXES = (".pth", ".pt")
# Wrappers seen around GPEN state dicts, most inference-worthy first: training checkpoints hold the EMA
# generator as `g_ema` (rosinality-style) or `params_ema` (BasicSR-style) next to the raw weights.
CONTAINER_KEYS = ("g_ema", "params_ema", "params", "state_dict")
# Errors torch.load raises for files it cannot read safely: code-carrying pickles (weights_only refuses them
# before anything runs), truncated archives and plain garbage.
TORCH_LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, KeyError)


def load_gpen(path: str | Path) -> nn.Module:
    """Load a GPEN model from `path`, in eval mode, on the CPU.

    `.pth`/`.pt` are read with `torch.load(weights_only=True)` (no code in the file ever runs),
    `.safetensors` with safetensors, `.onnx` through onnxruntime (an optional dependency). Hyperparameters come
    from the weights. The result takes `[B, 3, S, S]` RGB in [-1, 1] and returns the same shape; `.size` is S.
    Raises `UnsupportedCheckpointError` for anything that is not a usable GPEN file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GPEN model file not found: {path}. {WHERE_TO_GET}.")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from .onnx_model import OnnxGPEN

        return OnnxGPEN(path)
    if suffix == ".safetensors":
        state_dict = _read_safetensors(path)
    elif suffix in TORCH_SUFFIXES:
        state_dict = unwrap_state_dict(_read_torch(path), source=path.name)
    else:
        raise UnsupportedCheckpointError(
            f"Cannot read {path.name}: expected a .pth, .pt, .safetensors or .onnx GPEN file, "
            f"found a '{suffix or 'no'}' extension. {WHERE_TO_GET}."
        )
    try:
        model = GPEN.from_state_dict(state_dict)
    except UnsupportedCheckpointError as exc:
        raise UnsupportedCheckpointError(f"{path.name}: {exc}") from exc
    logger.info("Loaded %s as GPEN(%s)", path.name, model.extra_repr())
    return model


def unwrap_state_dict(obj: object, *, source: str = "checkpoint") -> dict[str, torch.Tensor]:
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
            f"{', '.join(CONTAINER_KEYS)}; found {found}. {WHERE_TO_GET}."
        )
    state_dict = dict(obj)
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    return state_dict


def _is_tensor_mapping(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(key, str) and isinstance(v, torch.Tensor) for key, v in obj.items())


def _read_torch(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except TORCH_LOAD_ERRORS as exc:
        raise UnsupportedCheckpointError(
            f"Cannot read {path.name} as plain weights ({type(exc).__name__}: {str(exc)[:200]}). "
            "It is truncated or corrupt, or it is a pickle that needs code to load, which is never run. "
            f"Download the file again from its official source. {WHERE_TO_GET}."
        ) from exc


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UnsupportedCheckpointError(
            f"Cannot read {path.name} as safetensors ({exc}): the file is truncated or not safetensors. "
            f"Download it again. {WHERE_TO_GET}."
        ) from exc
