"""ComfyUI nodes (V3 schema): thin classes that validate, convert, call the pipeline, and return.

Only this package and the pack's `__init__.py` import ComfyUI (`comfy`, `folder_paths`, `comfy_api`). Rooms:
`loaders` (GPEN model, face detector), `faces` (detect, restore, paste back, one-node restore), `inputs` (sockets,
titles, shared widgets), `models` (model files in ComfyUI's folders, placement through model management) and
`host` (what the running ComfyUI offers beyond 0.8.0: search aliases, advanced inputs, its loaders' category).
Socket types of our own: `GPEN_MODEL` (a `models.GpenModel`), `FACE_DETECTOR` (a `face_utils.FaceDetector`) and
`GPEN_FACES` (a `face_utils.face_set.FaceSet`: the aligned faces of a batch, possibly none).
"""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .faces import GPENDetectFaces, GPENPasteFaces, GPENRestoreFaces, GPENRestoreFacesOneNode
from .inputs import TITLES
from .loaders import GPENFaceDetectorLoader, GPENModelLoader
from .models import NO_MODELS

__all__ = ["NO_MODELS", "TITLES", "GPENDetectFaces", "GPENExtension", "GPENFaceDetectorLoader", "GPENModelLoader",
           "GPENPasteFaces", "GPENRestoreFaces", "GPENRestoreFacesOneNode"]


class GPENExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [GPENModelLoader, GPENFaceDetectorLoader, GPENDetectFaces, GPENRestoreFaces, GPENPasteFaces,
                GPENRestoreFacesOneNode]

