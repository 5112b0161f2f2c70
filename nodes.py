"""ComfyUI nodes: thin wrappers that validate inputs, convert, call `pipeline`, and return.

Only this module and `__init__.py` import ComfyUI (`comfy`, `folder_paths`). Socket types of our own:
`GPEN_MODEL` (a `GpenModel`), `FACE_DETECTOR` (a `face_utils.FaceDetector`) and `GPEN_FACES` (a tuple of aligned
`face_utils.FaceRecord`, one per face crop, each with the index of the frame it came from).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import comfy.model_management as model_management
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch
from torch import nn

from .face_utils import pipeline
from .face_utils.conversion import check_image, frame_to_numpy, frames_to_image
from .face_utils import (
    DETECTORS,
    KNOWN_WEIGHTS,
    MASK_SHAPES,
    ORDERS,
    TEMPLATES,
    FaceDetector,
    FaceParser,
    FaceRecord,
    PasteSettings,
    load_detector,
    load_face_parser,
    parse_index_spec,
)
from .gpen_arch import load_gpen
from .face_utils.weights import DETECTION_FOLDER, folder_with_file
from .gpen_arch.files import DOWNLOAD_HINT, GPEN_EXTENSIONS, RESTORE_FOLDER, find_models, preferred_model

logger = logging.getLogger(__name__)

CATEGORY = "image/restoration/GPEN"
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
NO_MODELS = "(no model files in models/facerestore_models)"
# The face parser used by the "parsing" mask shape (facexlib's ParseNet, as upstream GPEN uses).
PARSER_WEIGHTS = "parsenet"
# Device memory freed through ComfyUI before the face detector or parser goes on the GPU: RetinaFace-R50's
# 105 MB of weights plus its activations on a 1024 px image, with headroom (ParseNet at 512 px needs less).
DETECTOR_MEMORY_BYTES = 1536 * 2**20

# Widget definitions shared by several nodes, so the same setting looks and behaves the same everywhere.
FACE_SIZE = ("INT", {"default": 512, "min": 64, "max": 4096, "step": 64, "tooltip": (
    "Side of the aligned face crops in pixels. Ignored when a GPEN model is connected: crops are then cut at the "
    "model's own size (512 for GPEN-BFR-512, 2048 for GPEN-BFR-2048).")})
TEMPLATE = (list(TEMPLATES), {"default": "gpen", "tooltip": (
    "Where the eyes, nose and mouth land in the crop. 'gpen' is the template GPEN was trained with (keep it for "
    "GPEN); 'ffhq' is the one GFPGAN/CodeFormer and FaceFusion use, tighter around the face.")})
THRESHOLD = ("FLOAT", {"default": 0.9, "min": 0.05, "max": 1.0, "step": 0.01, "tooltip": (
    "Keep detections scoring at least this. 0.9 is upstream GPEN's value; lower it to catch small, blurred or "
    "turned faces (and more false ones).")})
ORDER = (list(ORDERS), {"default": "largest", "tooltip": (
    "How faces are numbered for face_index: largest first, left to right, top to bottom, or best score first.")})
FACE_INDEX = ("STRING", {"default": "all", "tooltip": (
    "Which faces to restore: 'all', or positions in the chosen order separated by commas, e.g. '0' for the "
    "first (largest) face or '0,2'. '-1' is the last. Counted per frame.")})
MAX_FACES = ("INT", {"default": 0, "min": 0, "max": 64, "tooltip": (
    "Restore at most this many faces per frame, after ordering and face_index (0 = no limit).")})
STRENGTH = ("FLOAT", {"default": pipeline.DEFAULT_STRENGTH, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": (
    "Blend of the restored face with the original crop: 1 = fully restored, 0 = unchanged. 0.8 is upstream "
    "GPEN's default and keeps some of the original texture.")})
MASK_SHAPE = (list(MASK_SHAPES), {"default": "ellipse", "tooltip": (
    "Shape of the paste mask in the crop: 'ellipse' (face oval), 'box' (whole crop minus the erosion), or "
    "'parsing' (skin, eyes, nose, mouth and hair from a face-parsing network; downloads parsing_parsenet.pth "
    "into models/facedetection on first use).")})
EROSION = ("FLOAT", {"default": PasteSettings.erosion, "min": 0.0, "max": 0.4, "step": 0.01, "tooltip": (
    "Shrink the mask inward by this fraction of the crop size, so the crop's own border never shows.")})
FEATHER = ("FLOAT", {"default": PasteSettings.feather, "min": 0.0, "max": 0.5, "step": 0.01, "tooltip": (
    "Width of the soft mask edge as a fraction of the crop size; larger hides seams, smaller keeps more of "
    "the restored face.")})
COLOR_CORRECTION = ("BOOLEAN", {"default": True, "tooltip": (
    "Match the restored face's colour to the original's (per-channel mean and spread inside the mask), "
    "avoiding the colour casts GPEN can produce.")})


@dataclass(frozen=True)
class GpenModel:
    """What flows through a GPEN_MODEL socket: the module, ComfyUI's patcher for it (None for an ONNX-backed
    model, which places itself through onnxruntime), its size and the dtype it runs in."""

    name: str
    module: nn.Module
    patcher: object | None
    size: int
    dtype: torch.dtype

    def __repr__(self) -> str:
        return f"GpenModel({self.name!r}, size={self.size}, dtype={self.dtype}, onnx={self.patcher is None})"


class GPENModelLoader:
    DESCRIPTION = (
        "Loads a GPEN face-restoration model (GPEN-BFR-256/512/1024/2048, .pth/.pt/.safetensors/.onnx) from "
        "models/facerestore_models. The model's size is read from the weights. ComfyUI's model management moves "
        "it to the GPU when it runs and frees it under memory pressure."
    )
    CATEGORY = "loaders"
    RETURN_TYPES = ("GPEN_MODEL",)
    RETURN_NAMES = ("gpen_model",)
    OUTPUT_TOOLTIPS = ("The loaded GPEN model, for 'Restore faces (GPEN)' and 'Detect and align faces'.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        names = _model_names()
        options = names or [NO_MODELS]
        return {
            "required": {
                "model_name": (options, {"default": preferred_model(names) or NO_MODELS, "tooltip": (
                    "A GPEN file in models/facerestore_models (the folder ReActor and facerestore_cf use).")}),
                "precision": (list(PRECISIONS), {"default": "auto", "tooltip": (
                    "auto: fp16 or bf16 where the GPU handles it well, fp32 on the CPU. fp32 is exact but slower "
                    "and takes twice the memory. .onnx models always run in fp32.")}),
                "compile": ("BOOLEAN", {"default": False, "tooltip": (
                    "Compile the network with torch.compile: the first run takes minutes, later runs of the same "
                    "size are faster. Needs Triton on NVIDIA GPUs, a C++ compiler on the CPU. Ignored for .onnx.")}),
            }
        }

    def load(self, model_name: str, precision: str, compile: bool = False) -> tuple[GpenModel]:
        where = "Load GPEN model"
        path = _model_path(model_name, where)
        module = load_gpen(path)
        if not pipeline.is_torch_gpen(module):
            if precision not in ("auto", "fp32") or compile:
                logger.warning("%s: %s is an ONNX model and runs in fp32 through onnxruntime; precision %s and "
                               "compile ignored", where, model_name, precision)
            return (GpenModel(model_name, module, None, pipeline.model_size(module), torch.float32),)
        load_device = model_management.get_torch_device()
        dtype = _dtype_for(precision, load_device)
        module = module.to(dtype=dtype).eval()
        if compile:
            module.compile()  # in place: still a GPEN, its weights still placed by the patcher below
        patcher = comfy.model_patcher.ModelPatcher(
            module, load_device=load_device, offload_device=model_management.unet_offload_device()
        )
        logger.info("%s: %s is GPEN-%d, running in %s on %s", where, model_name, module.size, dtype, load_device)
        return (GpenModel(model_name, module, patcher, module.size, dtype),)


class GPENFaceDetectorLoader:
    DESCRIPTION = (
        "Loads a face detector: RetinaFace ResNet-50 (most accurate, upstream GPEN's choice), RetinaFace "
        "MobileNet-0.25 (fast) or YuNet (tiny, CPU). Weights are taken from models/facedetection, or downloaded "
        "there (checksum-verified) the first time this node runs."
    )
    CATEGORY = "loaders"
    RETURN_TYPES = ("FACE_DETECTOR",)
    RETURN_NAMES = ("face_detector",)
    OUTPUT_TOOLTIPS = ("The face detector, for 'Detect and align faces' and 'Restore faces (one node)'.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "detector": (list(DETECTORS), {"default": DETECTORS[0], "tooltip": (
                    "retinaface_resnet50: best on small and turned faces. retinaface_mobile0.25: several times "
                    "faster, misses more small faces. yunet: OpenCV's 230 kB detector, always on the CPU.")}),
            }
        }

    def load(self, detector: str) -> tuple[FaceDetector]:
        model_dir = _weights_dir(KNOWN_WEIGHTS[detector].filename)
        # Kept on the offload device between runs; the nodes that detect move it to the GPU while they work.
        loaded = load_detector(detector, model_dir, device=model_management.unet_offload_device())
        return (loaded,)


class GPENDetectFaces:
    DESCRIPTION = (
        "Finds faces in every frame of an image batch, picks which to keep, and cuts each out aligned (eyes, nose "
        "and mouth at fixed places), ready for a restorer. Outputs the crops, the face records paste-back needs, "
        "and a preview with boxes and landmarks. Frames without faces give no crops; when no frame has a face the "
        "crops are one black placeholder and the face list is empty (logged), so the rest of the graph still runs."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "GPEN_FACES", "IMAGE")
    RETURN_NAMES = ("face_crops", "faces", "preview")
    OUTPUT_TOOLTIPS = (
        "Aligned face crops, one per face (square). When no face is found: one black placeholder crop.",
        "One record per crop: its frame, box, landmarks and the transform to paste it back.",
        "The input frames with each kept face's box, landmarks, number and score drawn.",
    )
    FUNCTION = "detect"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The image or batch of frames to find faces in."}),
                "face_detector": ("FACE_DETECTOR", {"tooltip": "From 'Load face detector (GPEN)'."}),
                "face_size": FACE_SIZE,
                "template": TEMPLATE,
                "score_threshold": THRESHOLD,
                "order": ORDER,
                "face_index": FACE_INDEX,
                "max_faces": MAX_FACES,
            },
            "optional": {
                "gpen_model": ("GPEN_MODEL", {"tooltip": "Connect to cut crops at this model's size."}),
            },
        }

    def detect(
        self,
        image: torch.Tensor,
        face_detector: FaceDetector,
        face_size: int,
        template: str,
        score_threshold: float,
        order: str,
        face_index: str,
        max_faces: int,
        gpen_model: GpenModel | None = None,
    ) -> tuple[torch.Tensor, tuple[FaceRecord, ...], torch.Tensor]:
        where = "Detect and align faces"
        check_image(image, where=where)
        crop_size = gpen_model.size if gpen_model is not None else face_size
        settings = _detect_settings(crop_size, template, score_threshold, order, face_index, max_faces, where)
        with _detector_on_device(face_detector):
            faces = pipeline.detect_faces(
                image, face_detector, settings,
                check_interrupted=model_management.throw_exception_if_processing_interrupted,
            )
        _log_faces_found(where, len(faces), image.shape[0], (
            "face_crops holds one black placeholder (so preview and sampler nodes downstream keep working), faces "
            "is empty, and paste-back will pass the image through unchanged"))
        if faces:
            crops = pipeline.warp_crops(image, faces)
        else:
            # ComfyUI's image nodes (Preview, Save, VAE Encode) fail on an empty batch, so no face is one black crop.
            crops = torch.zeros((1, crop_size, crop_size, image.shape[-1]), dtype=torch.float32)
        preview = frames_to_image([
            pipeline.draw_faces(frame_to_numpy(image, i), [f for f in faces if f.frame_index == i])
            for i in range(image.shape[0])
        ])
        device = model_management.intermediate_device()
        return crops.to(device), tuple(faces), preview.to(device)


class GPENRestoreFaces:
    DESCRIPTION = (
        "Restores aligned face crops with a GPEN model. Crops of any size are resized to the model's size; the "
        "output crops have the model's size. Works on any face crops, not only those from 'Detect and align "
        "faces'."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("restored_crops",)
    OUTPUT_TOOLTIPS = ("The restored crops, same count and order as the input crops, at the model's size.",)
    FUNCTION = "restore"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "gpen_model": ("GPEN_MODEL", {"tooltip": "From 'Load GPEN model'."}),
                "face_crops": ("IMAGE", {"tooltip": "Aligned square face crops, e.g. from 'Detect and align faces'."}),
                "strength": STRENGTH,
            }
        }

    def restore(self, gpen_model: GpenModel, face_crops: torch.Tensor, strength: float) -> tuple[torch.Tensor]:
        where = "Restore faces (GPEN)"
        check_image(face_crops, where=where, name="face_crops")
        if face_crops.shape[1] != face_crops.shape[2]:
            raise pipeline.FaceInputError(
                f"{where}: face crops must be square, got {face_crops.shape[2]}x{face_crops.shape[1]}; connect the "
                "face_crops output of 'Detect and align faces' (or crops of equal width and height)"
            )
        count = face_crops.shape[0]
        if count == 0:
            logger.info("%s: no face crops to restore (no face was found); passing the empty batch on", where)
            empty = torch.zeros((0, gpen_model.size, gpen_model.size, 3), dtype=torch.float32)
            return (empty.to(model_management.intermediate_device()),)
        restore = _bind_restorer(gpen_model, count, strength)
        progress = comfy.utils.ProgressBar(count)
        restored = restore(face_crops, lambda: progress.update(1))
        logger.info("%s: restored %d crop(s) with %s", where, count, gpen_model.name)
        return (restored.to(model_management.intermediate_device()),)


class GPENPasteFaces:
    DESCRIPTION = (
        "Pastes face crops back where 'Detect and align faces' found them, with a soft mask and colour matching. "
        "The image may be the original or an upscaled copy (faces are placed at the same relative position). "
        "Also outputs the paste mask."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    OUTPUT_TOOLTIPS = (
        "The image with the faces pasted in; frames without faces pass through unchanged.",
        "Where faces were pasted (1 inside, soft edge, 0 elsewhere), one per frame.",
    )
    FUNCTION = "paste"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The image the faces were detected on, or an upscaled copy of it."}),
                "face_crops": ("IMAGE", {"tooltip": "Restored crops, in the order of `faces` (one per face)."}),
                "faces": ("GPEN_FACES", {"tooltip": "From the same 'Detect and align faces' node as the crops."}),
                "mask_shape": MASK_SHAPE,
                "erosion": EROSION,
                "feather": FEATHER,
                "color_correction": COLOR_CORRECTION,
                "opacity": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": (
                    "How much of the pasted face shows over the original inside the mask (1 = all).")}),
            }
        }

    def paste(
        self,
        image: torch.Tensor,
        face_crops: torch.Tensor,
        faces: tuple[FaceRecord, ...],
        mask_shape: str,
        erosion: float,
        feather: float,
        color_correction: bool,
        opacity: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        where = "Paste faces back"
        check_image(image, where=where)
        check_image(face_crops, where=where, name="face_crops")
        settings = PasteSettings(mask_shape=mask_shape, erosion=erosion, feather=feather, strength=opacity,
                                 color_correction=color_correction)
        if not faces:
            # Detect's placeholder crop (or anything else) has no face to go to.
            logger.warning("%s: no faces to paste (none was found); the image passes through unchanged", where)
            face_crops = face_crops[:0]
        parser = _load_parser() if mask_shape == "parsing" and faces else None
        try:
            out, mask = pipeline.paste_back(
                image, face_crops, faces, settings, parser=parser,
                check_interrupted=model_management.throw_exception_if_processing_interrupted,
            )
        except pipeline.FaceInputError as exc:
            raise pipeline.FaceInputError(f"{where}: {exc}") from exc
        device = model_management.intermediate_device()
        return out.to(device), mask.to(device)


class GPENRestoreFacesOneNode:
    DESCRIPTION = (
        "Detects, restores and pastes back every chosen face in one node, frame by frame, holding only one "
        "frame's crops at a time (suited to long video frame batches). Frames without faces pass through "
        "unchanged with an empty mask."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    OUTPUT_TOOLTIPS = (
        "The image with restored faces; frames without faces pass through unchanged.",
        "Where faces were pasted (1 inside, soft edge, 0 elsewhere), one per frame.",
    )
    FUNCTION = "restore"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The image or batch of frames whose faces to restore."}),
                "gpen_model": ("GPEN_MODEL", {"tooltip": "From 'Load GPEN model'."}),
                "face_detector": ("FACE_DETECTOR", {"tooltip": "From 'Load face detector (GPEN)'."}),
                "strength": STRENGTH,
                "score_threshold": THRESHOLD,
                "order": ORDER,
                "face_index": FACE_INDEX,
                "max_faces": MAX_FACES,
                "template": TEMPLATE,
                "mask_shape": MASK_SHAPE,
                "erosion": EROSION,
                "feather": FEATHER,
                "color_correction": COLOR_CORRECTION,
            }
        }

    def restore(
        self,
        image: torch.Tensor,
        gpen_model: GpenModel,
        face_detector: FaceDetector,
        strength: float,
        score_threshold: float,
        order: str,
        face_index: str,
        max_faces: int,
        template: str,
        mask_shape: str,
        erosion: float,
        feather: float,
        color_correction: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        where = "Restore faces (GPEN, one node)"
        check_image(image, where=where)
        detect_settings = _detect_settings(gpen_model.size, template, score_threshold, order, face_index,
                                           max_faces, where)
        paste_settings = PasteSettings(mask_shape=mask_shape, erosion=erosion, feather=feather, strength=1.0,
                                       color_correction=color_correction)
        parser = _load_parser() if mask_shape == "parsing" else None
        # Sized for a few faces per frame; the restorer halves its batch if memory runs out.
        restore = _bind_restorer(gpen_model, pipeline.MAX_BATCH_SIZE, strength)
        progress = comfy.utils.ProgressBar(image.shape[0])
        with _detector_on_device(face_detector):
            out, mask, restored = pipeline.restore_frames(
                image, face_detector, restore, detect_settings, paste_settings, parser=parser,
                on_progress=lambda done, total: progress.update_absolute(done, total),
                check_interrupted=model_management.throw_exception_if_processing_interrupted,
            )
        _log_faces_found(where, restored, image.shape[0], "the image passes through unchanged, the mask is empty")
        device = model_management.intermediate_device()
        return out.to(device), mask.to(device)


NODE_CLASS_MAPPINGS = {
    "GPENModelLoader": GPENModelLoader,
    "GPENFaceDetectorLoader": GPENFaceDetectorLoader,
    "GPENDetectFaces": GPENDetectFaces,
    "GPENRestoreFaces": GPENRestoreFaces,
    "GPENPasteFaces": GPENPasteFaces,
    "GPENRestoreFacesOneNode": GPENRestoreFacesOneNode,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "GPENModelLoader": "Load GPEN model",
    "GPENFaceDetectorLoader": "Load face detector (GPEN)",
    "GPENDetectFaces": "Detect and align faces (GPEN)",
    "GPENRestoreFaces": "Restore faces (GPEN)",
    "GPENPasteFaces": "Paste faces back (GPEN)",
    "GPENRestoreFacesOneNode": "Restore faces (GPEN, one node)",
}


def _model_names() -> list[str]:
    """GPEN-loadable files in every registered facerestore_models folder, as paths relative to their folder.

    Listed here rather than with `folder_paths.get_filename_list` because other packs re-register the folder
    with their own extensions (ReActor: .pth only), which would hide .onnx and .safetensors files."""
    folders = [Path(p) for p in folder_paths.get_folder_paths(RESTORE_FOLDER)]
    return sorted({p.relative_to(folder).as_posix() for folder in folders for p in find_models([folder])})


def _model_path(model_name: str, where: str) -> Path:
    folders = folder_paths.get_folder_paths(RESTORE_FOLDER)
    if model_name == NO_MODELS:
        raise FileNotFoundError(
            f"{where}: no model files in the facerestore_models folder(s) {', '.join(folders)}. Expected a GPEN "
            f"file there ({', '.join(GPEN_EXTENSIONS)}). {DOWNLOAD_HINT}. Then press R "
            "in ComfyUI to refresh the list."
        )
    path = folder_paths.get_full_path(RESTORE_FOLDER, model_name)
    if path is None:
        raise FileNotFoundError(
            f"{where}: {model_name!r} is not in the facerestore_models folder(s) {', '.join(folders)} any more. "
            "Pick another model (press R to refresh the list)."
        )
    return Path(path)


def _dtype_for(precision: str, device: torch.device) -> torch.dtype:
    """The dtype GPEN runs in: the one asked for, or for "auto" what ComfyUI considers good on `device`."""
    if precision != "auto":
        return DTYPES[precision]
    if model_management.should_use_fp16(device, prioritize_performance=True):
        return torch.float16
    if model_management.should_use_bf16(device, prioritize_performance=True):
        return torch.bfloat16
    return torch.float32


def _bind_restorer(gpen_model: GpenModel, faces: int, strength: float) -> pipeline.RestoreFn:
    """Place the model through ComfyUI's model management and return `restore(crops, on_face)`."""
    if gpen_model.patcher is None:
        # ONNX-backed: onnxruntime uses CUDA when the input lives there; it holds no torch weights to place.
        device = model_management.get_torch_device()
        batch_size = 1
    else:
        per_face = pipeline.face_memory_bytes(gpen_model.size, gpen_model.dtype)
        # GPEN's layers are plain torch modules (no ComfyUI weight casting), so the model must be fully loaded.
        model_management.load_models_gpu([gpen_model.patcher], memory_required=per_face, force_full_load=True)
        # Run where the weights are: with --novram ComfyUI leaves them on the offload device.
        device = next(gpen_model.module.parameters()).device
        batch_size = pipeline.batch_size_for(
            gpen_model.size, gpen_model.dtype, model_management.get_free_memory(device), faces, device=device
        )

    def restore(crops: torch.Tensor, on_face: Callable[[], None]) -> torch.Tensor:
        return pipeline.restore_crops(
            gpen_model.module, crops, device=device, dtype=gpen_model.dtype, strength=strength,
            batch_size=batch_size, on_face=on_face,
            check_interrupted=model_management.throw_exception_if_processing_interrupted,
        )

    return restore


def _detect_settings(
    crop_size: int, template: str, score_threshold: float, order: str, face_index: str, max_faces: int, where: str
) -> pipeline.DetectSettings:
    try:
        parse_index_spec(face_index)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    return pipeline.DetectSettings(crop_size=crop_size, template=template, score_threshold=score_threshold,
                                   order=order, index=face_index, max_faces=max_faces)


def _log_faces_found(where: str, faces: int, frames: int, consequence: str) -> None:
    if faces == 0:
        logger.warning("%s: no face found in %d frame(s); %s", where, frames, consequence)
    else:
        logger.info("%s: %d face(s) in %d frame(s)", where, faces, frames)


@contextmanager
def _detector_on_device(detector: FaceDetector) -> Iterator[None]:
    """Run the detector on ComfyUI's torch device, and give the memory back afterwards (also on errors)."""
    device = model_management.get_torch_device()
    # Room for the detector outside ComfyUI's model list (weights and activations of a 1024 px detection).
    model_management.free_memory(DETECTOR_MEMORY_BYTES, device)
    detector.to(device)
    try:
        yield
    finally:
        detector.to(model_management.unet_offload_device())


def _weights_dir(filename: str) -> Path:
    """The facedetection folder holding `filename`, else the first one (where it is then downloaded)."""
    folders = [Path(p) for p in folder_paths.get_folder_paths(DETECTION_FOLDER)]
    return folder_with_file(filename, folders) or folders[0]


def _load_parser() -> FaceParser:
    model_dir = _weights_dir(KNOWN_WEIGHTS[PARSER_WEIGHTS].filename)
    device = model_management.get_torch_device()
    model_management.free_memory(DETECTOR_MEMORY_BYTES, device)
    return load_face_parser(model_dir, device=device)

