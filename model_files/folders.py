"""Where the models live, shared by the nodes and the command line: ComfyUI's model folder names (the command line
looks for the same layout), the files each folder offers, which GPEN to offer first, and where to get one.

Standard library only, so the command line reads it before it imports torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

# The ComfyUI model folders ReActor and facerestore_cf users already fill.
RESTORE_FOLDER = "facerestore_models"
GPEN_EXTENSIONS = (".pth", ".pt", ".safetensors", ".onnx")  # what gpen_arch.load_gpen reads
DETECTION_FOLDER = "facedetection"
DETECTION_EXTENSIONS = (".pth", ".onnx")  # RetinaFace and ParseNet are .pth, YuNet is .onnx

# Official sources: upstream GPEN's README (GPEN-BFR-256/512 on its OSS bucket; 1024/2048 on ModelScope).
DOWNLOAD_HINT = (
    "Download GPEN-BFR-512.pth from https://public-vigen-video.oss-cn-shanghai.aliyuncs.com/robin/models/"
    "GPEN-BFR-512.pth, or GPEN-BFR-1024/2048 from https://www.modelscope.cn/models/damo/"
    "cv_gpen_image-portrait-enhancement-hires (pytorch_model.pt is 1024, pytorch_model-2048.pt is 2048); the "
    ".onnx files ReActor uses work too"
)
# What a GPEN loading error inside ComfyUI ends with.
COMFYUI_WHERE_TO_GET = f"Expected a GPEN-BFR-*.pth (or .onnx) in ComfyUI/models/{RESTORE_FOLDER}"


def is_gpen_file(name: str) -> bool:
    """True for file names with an extension `load_gpen` reads."""
    return Path(name).suffix.lower() in GPEN_EXTENSIONS


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


def preferred_model(paths: Mapping[str, Path], size_of: Callable[[Path], int | None]) -> str | None:
    """The name (a key of `paths`) to offer first: the largest GPEN by `size_of` (`gpen_arch.model_size`: what
    each file holds; GPEN-BFR-2048 is the reason this pack exists), files that are no readable GPEN (None) last,
    then by name. None when empty."""

    def rank(name: str) -> tuple[int, str]:
        return (-(size_of(paths[name]) or 0), name.lower())

    return min(paths, key=rank, default=None)


def folder_with_file(filename: str, folders: Sequence[Path]) -> Path | None:
    """The first of `folders` that holds `filename`, or None."""
    return next((folder for folder in folders if (folder / filename).is_file()), None)
