"""GPEN written for inference, as a spandrel architecture is: the network (`GPEN`), its configuration read from
weights, the loader (`load_gpen`, `model_size`) and `GpenRunner`, the one owner of how a loaded GPEN is called.

Imports torch, the standard library and `model_files` (the one checkpoint reader and the loaders' errors;
safetensors and onnxruntime lazily, when such a file is loaded). The names below are imported on first use, as
`face_utils`'s are (see there), so `gpen_arch.choices` (the runner's precisions and upstream's blend) costs nothing
to the command line's --help.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "choices": ("DEFAULT_STRENGTH", "PRECISIONS"),
    "config": ("infer_config",),
    "loader": ("load_gpen", "model_size", "unwrap_state_dict"),
    "model": ("GPEN",),
    "runner": ("GpenRunner", "check_strength", "choose_dtype"),
}
_OWNER = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_OWNER)


def __getattr__(name: str) -> object:
    if name not in _OWNER:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_OWNER[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
