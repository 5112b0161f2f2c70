"""GPEN written for inference: the network (`GPEN`), its configuration read from weights, and `load_gpen`.

Imports only torch and the standard library (onnxruntime and safetensors lazily, when such a file is loaded).
"""

from .errors import UnsupportedCheckpointError
from .model import GPEN

__all__ = ["GPEN", "UnsupportedCheckpointError"]
