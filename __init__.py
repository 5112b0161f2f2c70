"""GPEN face restoration for ComfyUI: registers the model folders and exports the nodes (nothing else at import)."""

from __future__ import annotations

import os

try:
    import folder_paths
except ModuleNotFoundError:
    # Not inside ComfyUI: pytest imports this file when it collects the repository as a package. There is
    # nothing to register then; the command line never imports this file.
    folder_paths = None

# Detector weights are .pth (RetinaFace, ParseNet) or .onnx (YuNet).
DETECTION_EXTENSIONS = (".pth", ".onnx")


def _register_model_folder(name: str, extensions: tuple[str, ...]) -> None:
    """Make sure `models/<name>` is registered, keeping what ReActor, facerestore_cf or extra_model_paths.yaml
    registered before us (their paths, and an empty extension set, which means "every file")."""
    default = os.path.join(folder_paths.models_dir, name)
    if name not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[name] = ([default], set(extensions))
        return
    paths, known = folder_paths.folder_names_and_paths[name]
    if default not in paths:
        paths.append(default)
    if known:
        folder_paths.folder_names_and_paths[name] = (paths, set(known) | set(extensions))


if folder_paths is None:
    NODE_CLASS_MAPPINGS: dict[str, type] = {}
    NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
else:
    from .model_files import DETECTION_FOLDER, GPEN_EXTENSIONS, RESTORE_FOLDER
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    _register_model_folder(RESTORE_FOLDER, GPEN_EXTENSIONS)
    _register_model_folder(DETECTION_FOLDER, DETECTION_EXTENSIONS)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
