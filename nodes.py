"""ComfyUI nodes (V3 schema): thin classes that validate, convert, call the pipeline, and return.

Only this module and `__init__.py` import ComfyUI (`comfy`, `folder_paths`, `comfy_api`). Socket types of our own,
declared once below: `GPEN_MODEL` (a `GpenModel`), `FACE_DETECTOR` (a `face_utils.FaceDetector`) and `GPEN_FACES`
(a `face_utils.pipeline.FaceSet`: the aligned faces of a batch, possibly none).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch

# `latest` is what ComfyUI's own nodes import; the versioned `comfy_api.v0_0_2` re-exports these very objects (an
# alias, not a frozen copy), so importing it would pin nothing and only add a name to keep in step.
from comfy_api.latest import ComfyExtension, io

from .face_utils import DETECTORS, KNOWN_WEIGHTS, MASK_SHAPES, ORDERS, TEMPLATES, FaceDetector, FaceParser
from .face_utils import PasteSettings, load_detector
from .face_utils.conversion import check_image, frame_to_numpy, frames_to_image
from .face_utils.parsing import FaceParserCache
from .face_utils.pipeline import DetectSettings, FaceSet, RestoreFn, detect_faces, paste_back
from .face_utils.pipeline import restore_crop_batch, restore_image, warp_crops
from .face_utils.pixels import choose_pixels
from .face_utils.preview import draw_faces
from .gpen_arch.loader import model_size
from .gpen_arch.runner import DEFAULT_STRENGTH, MAX_BATCH_SIZE, PRECISIONS, GpenRunner
from .model_files.folders import COMFYUI_WHERE_TO_GET, DETECTION_FOLDER, DOWNLOAD_HINT, GPEN_EXTENSIONS
from .model_files.folders import RESTORE_FOLDER, folder_with_file, models_by_name, preferred_model

logger = logging.getLogger(__name__)

GpenModelSocket = io.Custom("GPEN_MODEL")
FaceDetectorSocket = io.Custom("FACE_DETECTOR")
FacesSocket = io.Custom("GPEN_FACES")

# Each node's display name, the one source of it: schemas, messages and tooltips all read it from here.
TITLES = {
    "GPENModelLoader": "Load GPEN model",
    "GPENFaceDetectorLoader": "Load face detector (GPEN)",
    "GPENDetectFaces": "Detect and align faces (GPEN)",
    "GPENRestoreFaces": "Restore faces (GPEN)",
    "GPENPasteFaces": "Paste faces back (GPEN)",
    "GPENRestoreFacesOneNode": "Restore faces (GPEN, one node)",
}
CATEGORY = "image/restoration/GPEN"
OUTPUT_SIZES = ("model", "input")  # restored crops at the model's size, or at the size they came in
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


# Widgets several nodes share, so one setting looks and behaves the same everywhere (fresh objects per schema).
def _face_size() -> io.Int.Input:
    return io.Int.Input("face_size", default=512, min=64, max=4096, step=64, tooltip=(
        "Side of the aligned face crops in pixels. Ignored when a GPEN model is connected: crops are then cut at the "
        "model's own size (512 for GPEN-BFR-512, 2048 for GPEN-BFR-2048)."))


def _template() -> io.Combo.Input:
    return io.Combo.Input("template", options=list(TEMPLATES), default="gpen", tooltip=(
        "Where the eyes, nose and mouth land in the crop. 'gpen' is the template GPEN was trained with (keep it for "
        "GPEN); 'ffhq' is the one GFPGAN/CodeFormer and FaceFusion use, tighter around the face."))


def _selection() -> list[io.Input]:
    return [
        io.Float.Input("score_threshold", default=0.9, min=0.05, max=1.0, step=0.01, tooltip=(
            "Keep detections scoring at least this. 0.9 is upstream GPEN's value; lower it to catch small, blurred "
            "or turned faces (and more false ones).")),
        io.Combo.Input("order", options=list(ORDERS), default="largest", tooltip=(
            "How faces are numbered (their track ids, drawn in the preview): largest first, left to right, top to "
            "bottom, or best score first, in the first frame each face appears in.")),
        io.String.Input("face_index", default="all", tooltip=(
            "Which faces to restore: 'all', or ids in the chosen order separated by commas, e.g. '0' for the first "
            "(largest) face or '0,2'; '-1' is the last. In video frames an id follows the same person through "
            "the shot.")),
        io.Int.Input("max_faces", default=0, min=0, max=64, tooltip=(
            "Restore at most this many faces (the first ids after face_index; in video, the same people in every "
            "frame). 0 = no limit.")),
    ]


def _tracking() -> list[io.Input]:
    return [
        io.Float.Input("temporal_smoothing", default=1.0, min=0.0, max=4.0, step=0.1, optional=True, tooltip=(
            "For video frames: how strongly each face's landmarks are smoothed over time (a two-sided filter over "
            "the whole batch, so still faces stop jittering and moving faces do not lag; scene cuts are never "
            "smoothed across). 0 = off. Single images are unaffected.")),
        io.Int.Input("max_gap", default=5, min=0, max=60, optional=True, tooltip=(
            "For video frames: a face the detector misses for up to this many frames is still restored there, "
            "at a position interpolated from the frames around the gap (0 = never fill).")),
        io.Int.Input("detection_size", default=0, min=0, max=8192, step=32, optional=True, tooltip=(
            "Long side of the copy the detector sees. 0 = full resolution (in overlapping tiles above 1920x1088), "
            "which finds 45-px faces in a 4000-px group photo; 1024 = the former setting, much faster on large "
            "images but misses faces under about 90 px there.")),
    ]


def _strength() -> io.Float.Input:
    return io.Float.Input("strength", default=DEFAULT_STRENGTH, min=0.0, max=1.0, step=0.01, tooltip=(
        "Blend of the restored face with the original crop: 1 = fully restored, 0 = unchanged. 0.8 is upstream "
        "GPEN's default and keeps some of the original texture."))


def _paste_settings() -> list[io.Input]:
    return [
        io.Combo.Input("mask_shape", options=list(MASK_SHAPES), default="ellipse", tooltip=(
            "Shape of the paste mask in the crop: 'ellipse' (face oval), 'box' (whole crop minus the erosion), or "
            "'parsing' (skin, eyes, nose, mouth and hair from a face-parsing network; downloads "
            "parsing_parsenet.pth into models/facedetection on first use).")),
        io.Float.Input("erosion", default=PasteSettings.erosion, min=0.0, max=0.4, step=0.01, tooltip=(
            "Shrink the mask inward by this fraction of the crop size, so the crop's own border never shows.")),
        io.Float.Input("feather", default=PasteSettings.feather, min=0.0, max=0.5, step=0.01, tooltip=(
            "Width of the soft mask edge as a fraction of the crop size; larger hides seams, smaller keeps more of "
            "the restored face.")),
        io.Boolean.Input("color_correction", default=True, tooltip=(
            "Match the restored face's colour to the original's (per-channel mean and spread inside the mask), "
            "avoiding the colour casts GPEN can produce.")),
    ]


def _image_and_mask_outputs() -> list[io.Output]:
    return [io.Image.Output("image", tooltip="The image with the restored faces; frames without faces unchanged."),
            io.Mask.Output("mask", tooltip="Where faces were pasted (1 inside, soft edge, 0 elsewhere), per frame.")]


def _model_input() -> io.Input:
    return GpenModelSocket.Input("gpen_model", tooltip=f"From '{TITLES['GPENModelLoader']}'.")


def _detector_input() -> io.Input:
    return FaceDetectorSocket.Input("face_detector", tooltip=f"From '{TITLES['GPENFaceDetectorLoader']}'.")


def _title(node: type) -> str:
    """The display name of a node class, or of the clone ComfyUI makes of it to run `execute`."""
    return next(TITLES[c.__name__] for c in node.__mro__ if c.__name__ in TITLES)


def _named_errors(execute: Callable) -> Callable:
    """Wrap a node's `execute` so that bad or mismatched inputs (a `ValueError`) come back naming the node."""

    @functools.wraps(execute)
    def named(cls, *args, **kwargs):
        try:
            return execute(cls, *args, **kwargs)
        except ValueError as exc:
            raise type(exc)(f"{_title(cls)}: {exc}") from exc

    return named


def _schema(node_id: str, **fields) -> io.Schema:
    return io.Schema(node_id=node_id, display_name=TITLES[node_id], **fields)


class GPENModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        paths = _model_paths()
        return _schema(
            "GPENModelLoader", category="loaders",
            description=(
                "Loads a GPEN face-restoration model (GPEN-BFR-256/512/1024/2048, .pth/.pt/.safetensors/.onnx) from "
                "models/facerestore_models. The model's size is read from the weights. ComfyUI's model management "
                "moves it to the GPU when it runs and frees it under memory pressure."),
            inputs=[
                io.Combo.Input("model_name", options=list(paths) or [NO_MODELS],
                               default=preferred_model(paths, model_size) or NO_MODELS, tooltip=(
                    "A GPEN file in models/facerestore_models (the folder ReActor and facerestore_cf use); the "
                    "default is the largest GPEN there, judged by what each file holds.")),
                io.Combo.Input("precision", options=list(PRECISIONS), default="auto", tooltip=(
                    "auto: fp16 or bf16 where the GPU handles it well, fp32 on the CPU. fp32 is exact but slower "
                    "and takes twice the memory. .onnx models always run in fp32.")),
                io.Boolean.Input("compile", default=False, tooltip=(
                    "Compile the network with torch.compile: the first run takes minutes, later runs of the same "
                    "size are faster. Needs Triton on NVIDIA GPUs, a C++ compiler on the CPU. Ignored for .onnx.")),
            ],
            outputs=[GpenModelSocket.Output("gpen_model", tooltip=(
                f"The loaded GPEN model, for '{TITLES['GPENRestoreFaces']}', '{TITLES['GPENDetectFaces']}' and "
                f"'{TITLES['GPENRestoreFacesOneNode']}'."))],
        )

    @classmethod
    def fingerprint_inputs(cls, model_name: str, precision: str, compile: bool = False) -> tuple:
        # A file replaced under the same name must load again, not come from ComfyUI's cache.
        path = folder_paths.get_full_path(RESTORE_FOLDER, model_name)
        stat = Path(path).stat() if path else None
        return (model_name, precision, compile, stat and stat.st_size, stat and stat.st_mtime_ns)

    @classmethod
    @_named_errors
    def execute(cls, model_name: str, precision: str, compile: bool = False) -> io.NodeOutput:
        path = _model_path(model_name)
        device = mm.get_torch_device()
        runner = GpenRunner.load(
            path, precision=precision, compile=compile, where_to_get=COMFYUI_WHERE_TO_GET,
            fp16_ok=mm.should_use_fp16(device, prioritize_performance=True),
            bf16_ok=mm.should_use_bf16(device, prioritize_performance=True),
        )
        patcher = None
        if not runner.is_onnx:
            patcher = comfy.model_patcher.ModelPatcher(
                runner.module, load_device=device, offload_device=mm.unet_offload_device()
            )
        logger.info("%s: %s is GPEN-%d, running in %s on %s", TITLES["GPENModelLoader"], model_name, runner.size,
                    runner.dtype, "onnxruntime" if runner.is_onnx else device)
        return io.NodeOutput(GpenModel(runner, patcher))


class GPENFaceDetectorLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            "GPENFaceDetectorLoader", category="loaders",
            description=(
                "Loads a face detector: RetinaFace ResNet-50 (most accurate, upstream GPEN's choice), RetinaFace "
                "MobileNet-0.25 (fast) or YuNet (tiny, CPU). Weights are taken from models/facedetection, or "
                "downloaded there (checksum-verified) the first time this node runs."),
            inputs=[io.Combo.Input("detector", options=list(DETECTORS), default=DETECTORS[0], tooltip=(
                "retinaface_resnet50: best on small and turned faces. retinaface_mobile0.25: several times faster, "
                "misses more small faces. yunet: OpenCV's 230 kB detector, always on the CPU."))],
            outputs=[FaceDetectorSocket.Output("face_detector", tooltip=(
                f"The face detector, for '{TITLES['GPENDetectFaces']}' and '{TITLES['GPENRestoreFacesOneNode']}'."))],
        )

    @classmethod
    @_named_errors
    def execute(cls, detector: str) -> io.NodeOutput:
        model_dir = _weights_dir(KNOWN_WEIGHTS[detector].filename)
        # Kept on the offload device between runs; the nodes that detect move it to the GPU while they work.
        return io.NodeOutput(load_detector(detector, model_dir, device=mm.unet_offload_device()))


class GPENDetectFaces(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            "GPENDetectFaces", category=CATEGORY,
            description=(
                "Finds faces in every frame of an image batch, picks which to keep, and cuts each out aligned (eyes, "
                "nose and mouth at fixed places), ready for a restorer. Outputs the crops, the faces paste-back "
                "needs, and a preview. When no frame has a face, the crops are one black placeholder (never "
                "restored) and the faces are empty, so the rest of the graph passes the image through."),
            inputs=[
                io.Image.Input("image", tooltip="The image or batch of frames to find faces in."),
                _detector_input(), _face_size(), _template(), *_selection(),
                GpenModelSocket.Input("gpen_model", optional=True,
                                      tooltip="Connect to cut crops at this model's size."),
                *_tracking(),
            ],
            outputs=[
                io.Image.Output("face_crops", tooltip=(
                    "Aligned face crops, one per face (square). When no face is found: one black placeholder.")),
                FacesSocket.Output("faces", tooltip="The faces: frame, track, box, landmarks, the transform back."),
                io.Image.Output("preview", tooltip="The frames with each kept face's box, landmarks, id and score."),
            ],
        )

    @classmethod
    @_named_errors
    def execute(cls, image, face_detector, face_size, template, score_threshold, order, face_index, max_faces,
                gpen_model: GpenModel | None = None, temporal_smoothing: float = 1.0, max_gap: int = 5,
                detection_size: int = 0) -> io.NodeOutput:
        check_image(image)
        crop_size = gpen_model.size if gpen_model is not None else face_size
        settings = DetectSettings(crop_size=crop_size, template=template, score_threshold=score_threshold,
                                  order=order, index=face_index, max_faces=max_faces,
                                  smoothing=temporal_smoothing, max_gap=max_gap, detection_size=detection_size)
        with _on_device(face_detector):
            faces = detect_faces(image, face_detector, settings,
                                 check_interrupted=mm.throw_exception_if_processing_interrupted)
        _log_faces(cls, faces, "paste-back will pass the image through unchanged")
        if len(faces):
            crops = warp_crops(image, faces, free_bytes=mm.get_free_memory(mm.intermediate_device()),
                               pixels=choose_pixels(mm.get_torch_device()))
        else:
            # ComfyUI's image nodes (VAE Encode, upscalers) fail on an empty batch: one black crop flows to them,
            # which the restore node recognises and never runs GPEN on.
            crops = torch.zeros((1, crop_size, crop_size, image.shape[-1]), dtype=torch.float32)
        positions = faces.positions_by_frame()
        preview = frames_to_image([draw_faces(frame_to_numpy(image, i), [faces.faces[p] for p in positions.get(i, [])])
                                   for i in range(image.shape[0])])
        device = mm.intermediate_device()
        return io.NodeOutput(crops.to(device), faces, preview.to(device))


class GPENRestoreFaces(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            "GPENRestoreFaces", category=CATEGORY,
            description=(
                "Restores aligned face crops with a GPEN model. Crops of any size are resized to the model's size; "
                f"the output crops have the model's size. Works on any face crops, not only those from "
                f"'{TITLES['GPENDetectFaces']}'; black crops (its no-face placeholder) pass through unrestored."),
            inputs=[
                _model_input(),
                io.Image.Input("face_crops",
                               tooltip=f"Aligned square face crops, e.g. from '{TITLES['GPENDetectFaces']}'."),
                _strength(),
                FacesSocket.Input("faces", optional=True, tooltip=(
                    f"Optional: the faces from '{TITLES['GPENDetectFaces']}'; when it found none, GPEN does not run.")),
                io.Combo.Input("output_size", options=list(OUTPUT_SIZES), default="model", optional=True, tooltip=(
                    "Size of the restored crops: the model's (2048 px for GPEN-BFR-2048), or that of the input crops. "
                    "For long videos through the separate nodes, cut small crops (face_size, no model connected) "
                    "and keep them small here: 300 crops at 2048 px take 15 GB, at 512 px under 1 GB.")),
            ],
            outputs=[io.Image.Output("restored_crops", tooltip=(
                "The restored crops, same count and order as the input crops, at the chosen output_size."))],
        )

    @classmethod
    @_named_errors
    def execute(cls, gpen_model: GpenModel, face_crops, strength, faces: FaceSet | None = None,
                output_size: str = "model") -> io.NodeOutput:
        check_image(face_crops, name="face_crops")

        def bind(count: int) -> RestoreFn:
            progress, restore = comfy.utils.ProgressBar(count), _bind_restorer(gpen_model, count, strength)
            return lambda crops, _on_face: restore(crops, lambda: progress.update(1))

        out, count = restore_crop_batch(
            face_crops, bind, size=gpen_model.size if output_size == "model" else face_crops.shape[1],
            free_bytes=mm.get_free_memory(mm.intermediate_device()), none_found=faces is not None and not len(faces),
            chunk=MAX_BATCH_SIZE,
        )
        skipped = face_crops.shape[0] - count
        logger.info("%s: restored %d crop(s) with %s%s", _title(cls), count, gpen_model.runner.name,
                    f"; {skipped} black placeholder crop(s) passed through unrestored" if skipped else "")
        return io.NodeOutput(out.to(mm.intermediate_device()))


class GPENPasteFaces(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            "GPENPasteFaces", category=CATEGORY,
            description=(
                f"Pastes face crops back where '{TITLES['GPENDetectFaces']}' found them, with a soft mask and colour "
                "matching. The image may be the original or an upscaled copy (faces are placed at the same relative "
                "position). Also outputs the paste mask."),
            inputs=[
                io.Image.Input("image", tooltip="The image the faces were detected on, or an upscaled copy of it."),
                io.Image.Input("face_crops", tooltip="Restored crops, in the order of `faces` (one per face)."),
                FacesSocket.Input("faces", tooltip=f"From the same '{TITLES['GPENDetectFaces']}' node as the crops."),
                *_paste_settings(),
                io.Float.Input("opacity", default=1.0, min=0.0, max=1.0, step=0.01, tooltip=(
                    "How much of the pasted face shows over the original inside the mask (1 = all).")),
            ],
            outputs=_image_and_mask_outputs(),
        )

    @classmethod
    @_named_errors
    def execute(cls, image, face_crops, faces: FaceSet, mask_shape, erosion, feather, color_correction,
                opacity) -> io.NodeOutput:
        check_image(image)
        check_image(face_crops, name="face_crops")
        settings = PasteSettings(mask_shape=mask_shape, erosion=erosion, feather=feather, opacity=opacity,
                                 color_correction=color_correction)
        if not len(faces):
            logger.info("%s: no faces to paste (%s); the image passes through unchanged", _title(cls),
                        faces.summary())
            face_crops = face_crops[:0]
        with _parser(mask_shape if len(faces) else None) as parser:
            out, mask = paste_back(image, face_crops, faces, settings, parser=parser,
                                   check_interrupted=mm.throw_exception_if_processing_interrupted,
                                   pixels=choose_pixels(mm.get_torch_device()))
        device = mm.intermediate_device()
        return io.NodeOutput(out.to(device), mask.to(device))


class GPENRestoreFacesOneNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return _schema(
            "GPENRestoreFacesOneNode", category=CATEGORY,
            description=(
                "Detects, restores and pastes back every chosen face in one node, frame by frame, holding only one "
                "frame's crops at a time (suited to long video frame batches). Frames without faces pass through "
                "unchanged with an empty mask."),
            inputs=[
                io.Image.Input("image", tooltip="The image or batch of frames whose faces to restore."),
                _model_input(), _detector_input(), _strength(), *_selection(), _template(), *_paste_settings(),
                *_tracking(),
            ],
            outputs=_image_and_mask_outputs(),
        )

    @classmethod
    @_named_errors
    def execute(cls, image, gpen_model: GpenModel, face_detector, strength, score_threshold, order, face_index,
                max_faces, template, mask_shape, erosion, feather, color_correction, temporal_smoothing: float = 1.0,
                max_gap: int = 5, detection_size: int = 0) -> io.NodeOutput:
        check_image(image)
        detect_settings = DetectSettings(crop_size=gpen_model.size, template=template, score_threshold=score_threshold,
                                         order=order, index=face_index, max_faces=max_faces,
                                         smoothing=temporal_smoothing, max_gap=max_gap,
                                         detection_size=detection_size)
        paste_settings = PasteSettings(mask_shape=mask_shape, erosion=erosion, feather=feather,
                                       color_correction=color_correction)
        # Sized for a few faces per frame; the runner halves its batch if memory runs out.
        restore = _bind_restorer(gpen_model, MAX_BATCH_SIZE, strength)
        progress = comfy.utils.ProgressBar(image.shape[0])
        with _on_device(face_detector), _parser(mask_shape) as parser:
            out, mask, faces = restore_image(
                image, face_detector, restore, detect_settings, paste_settings, parser=parser,
                on_progress=lambda done, total: progress.update_absolute(done, total),
                check_interrupted=mm.throw_exception_if_processing_interrupted,
                pixels=choose_pixels(mm.get_torch_device()),
            )
        _log_faces(cls, faces, "the image passes through unchanged, the mask is empty")
        device = mm.intermediate_device()
        return io.NodeOutput(out.to(device), mask.to(device))


class GPENExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [GPENModelLoader, GPENFaceDetectorLoader, GPENDetectFaces, GPENRestoreFaces, GPENPasteFaces,
                GPENRestoreFacesOneNode]


def _model_paths() -> dict[str, Path]:
    # Listed by us rather than with `folder_paths.get_filename_list`: other packs re-register the folder with their
    # own extensions (ReActor: .pth only), which would hide .onnx and .safetensors files.
    return models_by_name(map(Path, folder_paths.get_folder_paths(RESTORE_FOLDER)))


def _model_path(model_name: str) -> Path:
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


def _bind_restorer(gpen_model: GpenModel, faces: int, strength: float) -> RestoreFn:
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
                              output_device=crops.device,
                              check_interrupted=mm.throw_exception_if_processing_interrupted)

    return restore


def _log_faces(node: type, faces: FaceSet, consequence: str) -> None:
    if len(faces):
        logger.info("%s: %s", _title(node), faces.summary())
    else:
        logger.warning("%s: %s, none to restore; %s", _title(node), faces.summary(), consequence)


@contextmanager
def _on_device(net: FaceDetector | FaceParser | None) -> Iterator[None]:
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


_PARSERS = FaceParserCache()


@contextmanager
def _parser(mask_shape: str | None) -> Iterator[FaceParser | None]:
    """The face parser for the "parsing" mask, on the torch device while it is used (else None)."""
    if mask_shape != "parsing":
        yield None
        return
    parser = _PARSERS.get(_weights_dir(KNOWN_WEIGHTS["parsenet"].filename), device=mm.unet_offload_device())
    with _on_device(parser):
        yield parser


def _weights_dir(filename: str) -> Path:
    """The facedetection folder holding `filename`, else the first one (where it is then downloaded)."""
    folders = [Path(p) for p in folder_paths.get_folder_paths(DETECTION_FOLDER)]
    return folder_with_file(filename, folders) or folders[0]
