"""`load_gpen`: any published GPEN-BFR file (.pth/.pt, .safetensors, .onnx) to a ready-to-run module."""

from __future__ import annotations

import logging
import pickle
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
# How torch's weights-only unpickler starts its refusal of anything but tensors and plain containers (torch 2.4+).
WEIGHTS_ONLY_REFUSAL = "Weights only load failed"
# The two layouts torch.save writes: a zip archive (torch >= 1.6) or the legacy pickle stream (protocol 2+).
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = b"\x80"


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
        state_dict = _read_safetensors(path, where_to_get=where_to_get)
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


def read_checkpoint(path: str | Path, *, where_to_get: str) -> object:
    """What a `.pth`/`.pt` file holds, read with `torch.load(weights_only=True, map_location="cpu")`: tensors
    and plain containers only, so no code in the file ever runs. The one place checkpoints are read, for GPEN
    models and for detector and parser weights alike.

    Raises `UnsupportedCheckpointError`, its message ending with `where_to_get` (which file is expected and where
    it comes from), telling apart a pickle that needs code to load, a truncated or corrupt file, and a file
    that is no PyTorch checkpoint at all.
    """
    path = Path(path)
    try:
        with path.open("rb") as file:
            head = file.read(len(ZIP_MAGIC))
    except OSError as exc:
        raise UnsupportedCheckpointError(
            f"Cannot open {path}: {exc.strerror or type(exc).__name__}. {where_to_get}."
        ) from exc
    if not head:
        raise UnsupportedCheckpointError(
            f"{path.name} is an empty file (0 bytes), so it is truncated or corrupt: a download or copy that did "
            f"not complete. Download it again. {where_to_get}."
        )
    if not (head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_PROTO)):
        # Checked before torch.load: its unpickler fed other bytes fails in arbitrary ways (IndexError, KeyError).
        raise UnsupportedCheckpointError(
            f"{path.name} is not a PyTorch checkpoint: torch.save writes a zip archive or a pickle, this file "
            f"starts with {head!r} ({path.stat().st_size:,} bytes). {where_to_get}."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged archive or pickle fails anywhere in torch.load, with no common base class
        raise UnsupportedCheckpointError(f"{_checkpoint_problem(path, exc)} {where_to_get}.") from exc


def _checkpoint_problem(path: Path, exc: Exception) -> str:
    """Whole sentences on why torch.load refused `path`, a zip archive or pickle by its first bytes (torch's own
    text is advice to turn the safety off, so it is not repeated)."""
    if isinstance(exc, pickle.UnpicklingError) and WEIGHTS_ONLY_REFUSAL in str(exc):
        return (
            f"{path.name} is a pickle that needs code to load, which is never run: it holds Python objects "
            "besides tensors. Use a file of plain weights instead (the official release of this model)."
        )
    return (
        f"{path.name} is truncated or corrupt ({path.stat().st_size:,} bytes; torch.load raised "
        f"{type(exc).__name__}). Download it again."
    )


def _read_safetensors(path: Path, *, where_to_get: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UnsupportedCheckpointError(
            f"Cannot read {path.name} as safetensors ({exc}): the file is truncated or not safetensors. "
            f"Download it again. {where_to_get}."
        ) from exc
