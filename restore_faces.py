#!/usr/bin/env python3
"""Restore every face in images with GPEN, outside ComfyUI: `python restore_faces.py --input face.jpg`.

See `python restore_faces.py --help`. The work is done by `cli/`, on the same pipeline the nodes use.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

# The pack's modules import each other relatively, so the folder is imported as one package, as ComfyUI imports it
# (there under the folder's name). Its __init__.py does nothing outside ComfyUI.
PACKAGE = "comfyui_gpen_restore"


def load_package() -> types.ModuleType:
    """The pack folder imported as the package `comfyui_gpen_restore` (importlib's recipe for importing a source
    folder directly), once per process."""
    if PACKAGE not in sys.modules:
        root = Path(__file__).resolve().parent
        spec = importlib.util.spec_from_file_location(
            PACKAGE, root / "__init__.py", submodule_search_locations=[str(root)]
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = package
        spec.loader.exec_module(package)
    return sys.modules[PACKAGE]


if __name__ == "__main__":
    load_package()
    from comfyui_gpen_restore.cli import main as cli

    sys.exit(cli.main(script_dir=Path(__file__).resolve().parent))
