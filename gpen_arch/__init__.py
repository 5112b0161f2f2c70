"""GPEN written for inference: the network (`GPEN`), its configuration read from weights, `load_gpen`, and
`GpenRunner`, the one owner of how a loaded GPEN is called.

Imports only torch and the standard library (safetensors and onnxruntime lazily, when such a file is loaded).
"""

from .config import infer_config
from .errors import MissingDependencyError, UnsupportedCheckpointError
from .loader import load_gpen, unwrap_state_dict
from .model import GPEN
from .runner import DEFAULT_STRENGTH, PRECISIONS, GpenRunner, check_strength, choose_dtype

__all__ = [
    "DEFAULT_STRENGTH",
    "GPEN",
    "PRECISIONS",
    "GpenRunner",
    "MissingDependencyError",
    "UnsupportedCheckpointError",
    "check_strength",
    "choose_dtype",
    "infer_config",
    "load_gpen",
    "unwrap_state_dict",
]
