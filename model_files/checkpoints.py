"""Model files are data, never code: the one reader of `.pth`/`.pt` checkpoints (`torch.load(weights_only=True)`)
and `.safetensors` files, for GPEN and for the detector and parser weights alike. Imports only torch
(safetensors when such a file is read)."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .errors import UnsupportedCheckpointError

# How torch's weights-only unpickler starts its refusal of anything but tensors and plain containers (torch 2.4+).
WEIGHTS_ONLY_REFUSAL = "Weights only load failed"
# The two layouts torch.save writes: a zip archive (torch >= 1.6) or the legacy pickle stream (protocol 2+).
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = b"\x80"


def read_checkpoint(path: str | Path, *, where_to_get: str) -> object:
    """What a `.pth`/`.pt` file holds, read with `torch.load(weights_only=True, map_location="cpu")`: tensors
    and plain containers only, so no code in the file ever runs. The one place `.pth`/`.pt` files are read, for
    GPEN models and for detector and parser weights alike.

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


def read_safetensors(path: Path, *, where_to_get: str) -> dict[str, torch.Tensor]:
    """The tensors of a `.safetensors` file, on the CPU. Raises `UnsupportedCheckpointError` ending with
    `where_to_get` for a truncated or foreign file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise UnsupportedCheckpointError(
            f"Cannot read {path.name} as safetensors ({exc}): the file is truncated or not safetensors. "
            f"Download it again. {where_to_get}."
        ) from exc
