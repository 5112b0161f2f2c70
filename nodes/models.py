"""The models behind the nodes' sockets: where GPEN and detector files are in ComfyUI's folders, and how ComfyUI's
model management places GPEN, the face detector and the face parser on the device while a node runs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths
import torch

from ..face_utils import KNOWN_WEIGHTS, FaceDetector, FaceParser
from ..face_utils.parsing import FaceParserCache
from ..face_utils.pipeline import RestoreFn
from ..gpen_arch.runner import GpenRunner
from ..model_files.folders import DETECTION_FOLDER, DOWNLOAD_HINT, GPEN_EXTENSIONS, RESTORE_FOLDER, folder_with_file
from ..model_files.folders import models_by_name
from .inputs import TITLES

NO_MODELS = "(no model files in models/facerestore_models)"
# Device memory freed through ComfyUI before the face detector or parser goes on the GPU: RetinaFace-R50's
# 105 MB of weights plus its activations on a 1024 px image, with headroom (ParseNet at 512 px needs less).
HELPER_NET_MEMORY_BYTES = 1536 * 2**20


@dataclass(frozen=True)
class GpenModel:
    """What flows through a GPEN_MODEL socket: the runner and ComfyUI's patcher for its weights (None for an ONNX
    graph, which onnxruntime places itself)."""

    runner: GpenRunner
    patcher: comfy.model_patcher.ModelPatcher | None

    @property
    def size(self) -> int:
        return self.runner.size


def model_paths() -> dict[str, Path]:
    # Listed by us rather than with `folder_paths.get_filename_list`: other packs re-register the folder with their
    # own extensions (ReActor: .pth only), which would hide .onnx and .safetensors files.
    return models_by_name(map(Path, folder_paths.get_folder_paths(RESTORE_FOLDER)))


def model_path(model_name: str) -> Path:
    title, folders = TITLES["GPENModelLoader"], folder_paths.get_folder_paths(RESTORE_FOLDER)
    if model_name == NO_MODELS:
        raise FileNotFoundError(
            f"{title}: no model files in the facerestore_models folder(s) {', '.join(folders)}. Expected a GPEN "
            f"file there ({', '.join(GPEN_EXTENSIONS)}). {DOWNLOAD_HINT}. Then press R in ComfyUI to refresh the list."
        )
    path = folder_paths.get_full_path(RESTORE_FOLDER, model_name)
    if path is None:
        raise FileNotFoundError(
            f"{title}: {model_name!r} is not in the facerestore_models folder(s) {', '.join(folders)} any more. "
            "Pick another model (press R to refresh the list)."
        )
    return Path(path)


def gpen_run_device() -> torch.device:
    """The device GPEN's weights will be on when it runs: ComfyUI's torch device, except with --novram, where
    ComfyUI leaves weights of modules it cannot cast (GPEN's are plain torch layers) on the offload device."""
    if mm.vram_state == mm.VRAMState.NO_VRAM:
        return mm.unet_offload_device()
    return mm.get_torch_device()


def bind_restorer(gpen_model: GpenModel, faces: int, strength: float, luminance: str = "keep") -> RestoreFn:
    """Place the model through ComfyUI's model management and return `restore(crops, on_face)`."""
    runner = gpen_model.runner
    if gpen_model.patcher is None:
        device, batch_size = mm.get_torch_device(), 1  # onnxruntime uses CUDA when the input lives there
    else:
        # GPEN's layers are plain torch modules (no ComfyUI weight casting), so the model must be fully loaded.
        mm.load_models_gpu([gpen_model.patcher], memory_required=runner.face_memory_bytes(), force_full_load=True)
        device = runner.weights_device  # with --novram ComfyUI leaves the weights on the offload device
        batch_size = runner.batch_size_for(mm.get_free_memory(device), faces, device)

    def restore(crops: torch.Tensor, on_face: Callable[[], None]) -> torch.Tensor:
        return runner.restore(crops, device=device, strength=strength, batch_size=batch_size, on_face=on_face,
                              output_device=crops.device, luminance=luminance,
                              check_interrupted=mm.throw_exception_if_processing_interrupted)

    return restore


@contextmanager
def on_device(net: FaceDetector | FaceParser | None) -> Iterator[None]:
    """Run a helper network (detector, parser) on ComfyUI's torch device and give the memory back afterwards."""
    if net is None:
        yield
        return
    device = mm.get_torch_device()
    mm.free_memory(HELPER_NET_MEMORY_BYTES, device)  # room outside ComfyUI's model list
    net.to(device)
    try:
        yield
    finally:
        net.to(mm.unet_offload_device())


PARSERS = FaceParserCache()


@contextmanager
def parser_for(mask_shape: str | None) -> Iterator[FaceParser | None]:
    """The face parser for the "parsing" mask, on the torch device while it is used (else None)."""
    if mask_shape != "parsing":
        yield None
        return
    parser = PARSERS.get(weights_dir(KNOWN_WEIGHTS["parsenet"].filename), device=mm.unet_offload_device())
    with on_device(parser):
        yield parser


def weights_dir(filename: str) -> Path:
    """The facedetection folder holding `filename`, else the first one (where it is then downloaded)."""
    folders = [Path(p) for p in folder_paths.get_folder_paths(DETECTION_FOLDER)]
    return folder_with_file(filename, folders) or folders[0]

