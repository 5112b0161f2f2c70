"""GPEN written for inference: the network (`GPEN`), its configuration read from weights, and `load_gpen`.

Imports only torch and the standard library (safetensors and onnxruntime lazily, when such a file is loaded).
"""

from .config import infer_config
from .errors import UnsupportedCheckpointError
from .loader import load_gpen, unwrap_state_dict
from .model import GPEN

__all__ = ["GPEN", "UnsupportedCheckpointError", "infer_config", "load_gpen", "unwrap_state_dict"]
