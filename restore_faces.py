#!/usr/bin/env python3
"""Restore every face in images with GPEN, outside ComfyUI: `python restore_faces.py --input face.jpg`.

See `python restore_faces.py --help`. The work is done by `cli.py` and the same pipeline the nodes use.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

# The pack's modules import each other relatively (ComfyUI loads this folder as a package), so the folder is
# registered as a package under this name, without running its ComfyUI-only __init__.py.
PACKAGE = "comfyui_gpen_restore"


def _load_cli() -> types.ModuleType:
    root = Path(__file__).resolve().parent
    if PACKAGE not in sys.modules:
        package = types.ModuleType(PACKAGE)
        package.__path__ = [str(root)]
        sys.modules[PACKAGE] = package
    return importlib.import_module(f"{PACKAGE}.cli")


if __name__ == "__main__":
    sys.exit(_load_cli().main(script_dir=Path(__file__).resolve().parent))
