"""GPEN face restoration for ComfyUI.

ComfyUI calls `comfy_entrypoint()`, which registers the model folders and hands it the pack's extension. Importing
this package does nothing else, so the command line and the tests import it without ComfyUI.
"""

from __future__ import annotations

import os


async def comfy_entrypoint():
    """The pack's `ComfyExtension` (ComfyUI's V3 entry point), after registering its model folders."""
    import folder_paths

    from .model_files.folders import DETECTION_EXTENSIONS, DETECTION_FOLDER, GPEN_EXTENSIONS, RESTORE_FOLDER
    from .nodes import GPENExtension

    for name, extensions in ((RESTORE_FOLDER, GPEN_EXTENSIONS), (DETECTION_FOLDER, DETECTION_EXTENSIONS)):
        _register_model_folder(folder_paths, name, extensions)
    return GPENExtension()


def _register_model_folder(folder_paths, name: str, extensions: tuple[str, ...]) -> None:
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
