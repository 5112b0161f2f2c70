"""Where GPEN weights live and which file to offer first, shared by the nodes and the command line."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

# The ComfyUI model folder ReActor and facerestore_cf users already fill.
RESTORE_FOLDER = "facerestore_models"
GPEN_EXTENSIONS = (".pth", ".pt", ".safetensors", ".onnx")  # what gpen_arch.load_gpen reads

# Official sources: upstream GPEN's README (GPEN-BFR-256/512 on its OSS bucket; 1024/2048 on ModelScope).
DOWNLOAD_HINT = (
    "Download GPEN-BFR-512.pth from https://public-vigen-video.oss-cn-shanghai.aliyuncs.com/robin/models/"
    "GPEN-BFR-512.pth, or GPEN-BFR-1024/2048 from https://www.modelscope.cn/models/damo/"
    "cv_gpen_image-portrait-enhancement-hires (pytorch_model.pt is 1024, pytorch_model-2048.pt is 2048); the "
    ".onnx files ReActor uses work too"
)

# Model sizes in file names only rank the choice of a default; the real size is always read from the weights.
_SIZE_IN_NAME = re.compile(r"(256|512|1024|2048)")


def is_gpen_file(name: str) -> bool:
    """True for file names with an extension `load_gpen` reads."""
    return Path(name).suffix.lower() in GPEN_EXTENSIONS


def preferred_model(names: Iterable[str]) -> str | None:
    """The model to offer first: a file named like GPEN, the highest resolution in its name winning (GPEN-BFR-2048
    is the reason this pack exists), then alphabetical. None when `names` is empty."""

    def rank(name: str) -> tuple[int, int, str]:
        stem = Path(name).name.lower()
        sizes = [int(s) for s in _SIZE_IN_NAME.findall(stem)]
        return (0 if "gpen" in stem else 1, -max(sizes, default=0), stem)

    ordered = sorted(names, key=rank)
    return ordered[0] if ordered else None


def find_models(folders: Sequence[Path]) -> list[Path]:
    """GPEN-loadable files directly in (or below) `folders`, in folder order then by name."""
    found: list[Path] = []
    for folder in folders:
        if folder.is_dir():
            found.extend(sorted(p for p in folder.rglob("*") if p.is_file() and is_gpen_file(p.name)))
    return found
