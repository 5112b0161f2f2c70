"""Where GPEN weights live and which file to offer first, shared by the nodes and the command line."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

from .config import infer_config
from .loader import unwrap_state_dict

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

def is_gpen_file(name: str) -> bool:
    """True for file names with an extension `load_gpen` reads."""
    return Path(name).suffix.lower() in GPEN_EXTENSIONS


def model_size_of(path: Path) -> int | None:
    """The crop size of the GPEN in `path`, read from what the file holds (tensor names and shapes, or the ONNX
    graph's input), or None when it is not a readable GPEN file. Cached per file path, size and modification
    time, so listing a model folder again costs nothing."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return _model_size_of(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _model_size_of(path: str, _size: int, _mtime_ns: int) -> int | None:
    suffix = Path(path).suffix.lower()
    try:
        if suffix == ".onnx":
            from .onnx_model import OnnxGPEN

            return OnnxGPEN(path).size
        if suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(path, framework="pt") as file:
                shapes = {key: torch.empty(file.get_slice(key).get_shape(), device="meta") for key in file.keys()}
        else:
            # mmap: only the tensor headers are read, not the weights.
            shapes = unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
        return int(infer_config(shapes)["size"])
    except Exception:  # any unreadable or foreign file simply ranks last; loading it reports why
        return None


def preferred_model(paths: Mapping[str, Path]) -> str | None:
    """The name (a key of `paths`) to offer first: by what each file holds, the largest GPEN first (GPEN-BFR-2048
    is the reason this pack exists), files that are no readable GPEN last, then by name. None when empty."""

    def rank(name: str) -> tuple[int, str]:
        return (-(model_size_of(paths[name]) or 0), name.lower())

    return min(paths, key=rank, default=None)


def find_models(folders: Sequence[Path]) -> list[Path]:
    """GPEN-loadable files directly in (or below) `folders`, in folder order then by name."""
    found: list[Path] = []
    for folder in folders:
        if folder.is_dir():
            found.extend(sorted(p for p in folder.rglob("*") if p.is_file() and is_gpen_file(p.name)))
    return found


def models_by_name(folders: Iterable[Path]) -> dict[str, Path]:
    """GPEN-loadable files in `folders` by their path relative to their folder (the first folder wins a name
    clash), sorted by name: what a model list shows."""
    paths: dict[str, Path] = {}
    for folder in folders:
        for path in find_models([folder]):
            paths.setdefault(path.relative_to(folder).as_posix(), path)
    return dict(sorted(paths.items()))
