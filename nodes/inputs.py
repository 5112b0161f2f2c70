"""What the nodes show: socket types of our own, node titles and categories, and the widgets several nodes share
(so one setting looks and behaves the same everywhere), with the wrapper that names the node in its errors."""

from __future__ import annotations

import functools
from collections.abc import Callable

# `latest` is what ComfyUI's own nodes import; the versioned `comfy_api.v0_0_2` re-exports these very objects (an
# alias, not a frozen copy), so importing it would pin nothing and only add a name to keep in step.
from comfy_api.latest import io

from ..face_utils import MASK_SHAPES, ORDERS, TEMPLATES, PasteSettings
from ..face_utils.choices import DEFAULT_TEMPORAL_CONSISTENCY
from ..face_utils.repair import RepairSettings
from ..gpen_arch.choices import LUMINANCES
from ..gpen_arch.runner import DEFAULT_STRENGTH
from .host import advanced, search_aliases

GpenModelSocket = io.Custom("GPEN_MODEL")
FaceDetectorSocket = io.Custom("FACE_DETECTOR")
FacesSocket = io.Custom("GPEN_FACES")
# Core ComfyUI's face landmarks (0.33: 'Detect Face Landmarks (MediaPipe)'), taken wherever a detector is.
FaceLandmarksSocket = io.Custom("FACE_LANDMARKS")

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
# What users type into the node search for these nodes, besides the titles (where the host takes aliases).
_RESTORE_WORDS = ("face restore", "restore face", "face restoration", "restoration", "enhance face", "fix face")
SEARCH_WORDS = {
    "GPENModelLoader": ("face restore model", "face restoration model", "facerestore", "load gpen"),
    "GPENFaceDetectorLoader": ("face detection", "retinaface", "yunet", "face detector"),
    "GPENDetectFaces": ("face detection", "align faces", "face crop", "crop faces", "retinaface"),
    "GPENRestoreFaces": _RESTORE_WORDS,
    "GPENPasteFaces": ("paste face", "face paste back", "face mask", "uncrop face"),
    "GPENRestoreFacesOneNode": (*_RESTORE_WORDS, "face swap fix", "video face restore"),
}


# Widgets several nodes share, so one setting looks and behaves the same everywhere (fresh objects per schema).
def face_size_input() -> io.Int.Input:
    return io.Int.Input("face_size", default=512, min=64, max=4096, step=64, tooltip=(
        "Side of the aligned face crops in pixels. Ignored when a GPEN model is connected: crops are then cut at the "
        "model's own size (512 for GPEN-BFR-512, 2048 for GPEN-BFR-2048)."))


def template_input() -> io.Combo.Input:
    return io.Combo.Input("template", options=list(TEMPLATES), default="gpen", **advanced(), tooltip=(
        "Where the eyes, nose and mouth land in the crop. 'gpen' is the template GPEN was trained with (keep it for "
        "GPEN); 'ffhq' is the one GFPGAN/CodeFormer and FaceFusion use, tighter around the face."))


def selection_inputs() -> list[io.Input]:
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
        io.Int.Input("max_faces", default=0, min=0, max=64, **advanced(), tooltip=(
            "Restore at most this many faces (the first ids after face_index; in video, the same people in every "
            "frame). 0 = no limit.")),
    ]


def tracking_inputs() -> list[io.Input]:
    return [
        io.Float.Input("temporal_smoothing", default=1.0, min=0.0, max=4.0, step=0.1, optional=True, **advanced(),
                       tooltip=(
            "For video frames: how strongly each face's landmarks are smoothed over time (a two-sided filter over "
            "the whole batch, so still faces stop jittering and moving faces do not lag; scene cuts are never "
            "smoothed across). 1 = as much as each face's own track shows is right (wide for a still face, "
            "narrow for a fast one), 0 = off, other values scale that. Single images are unaffected.")),
        io.Int.Input("max_gap", default=5, min=0, max=60, optional=True, **advanced(), tooltip=(
            "For video frames: a face the detector misses for up to this many frames is still restored there, "
            "at a position interpolated from the frames around the gap (0 = never fill).")),
        io.Int.Input("detection_size", default=0, min=0, max=8192, step=32, optional=True, **advanced(), tooltip=(
            "Long side of the copy the detector sees. 0 = full resolution (in overlapping tiles above 1920x1088), "
            "which finds 45-px faces in a 4000-px group photo; 1024 = the former setting, much faster on large "
            "images but misses faces under about 90 px there.")),
    ]


def strength_input() -> io.Float.Input:
    return io.Float.Input("strength", default=DEFAULT_STRENGTH, min=0.0, max=1.0, step=0.01, tooltip=(
        "Blend of the restored face with the original crop: 1 = fully restored, 0 = unchanged. 0.8 is upstream "
        "GPEN's default and keeps some of the original texture."))


def luminance_input() -> io.Combo.Input:
    return io.Combo.Input("luminance", options=list(LUMINANCES), default="keep", optional=True, **advanced(), tooltip=(
        "For colourising models only: 'keep' gives each face its own luminance exactly, so it gains colour and "
        "never loses detail (the model sees the face in grey, as it was trained); 'model' takes the model's whole "
        "output. Colour correction is off for colourised faces (it would pull them back to grey)."))


def consistency_input() -> io.Input:
    return io.Boolean.Input("temporal_consistency", default=DEFAULT_TEMPORAL_CONSISTENCY, optional=True, **advanced(),
                            tooltip=(
        "For video frames: steady the detail GPEN invents (pores, hair, lashes), which otherwise differs from frame "
        "to frame and shimmers: each restored face is averaged with the same person's in the 3 frames before and "
        "after, pixel by pixel, where their inputs agree, so a blink or a moving mouth still follows the video. "
        "Never across a cut; not for repaired faces; single images are unaffected. On 'Restore faces (GPEN)' it "
        "needs `faces` connected (the tracks). Off: each frame restored on its own."))


def canvas_input() -> io.Input:
    return io.Image.Input("canvas", optional=True, tooltip=(
        "Optional: the same image enlarged (e.g. by core's 'Upscale Image (using Model)' with realesrnet_x2): the "
        "restored faces are pasted onto it and the outputs have its size. Upstream GPEN's selfie mode in one node: "
        "GPEN-BFR-2048 for the faces, an upscaler for the background."))


def damage_input() -> io.Input:
    return io.Mask.Input("damage", optional=True, tooltip=(
        "For repairing models (GPEN-Inpainting): where the picture is damaged (white = scratched, torn or missing), "
        "drawn in ComfyUI's mask editor or from any mask node; one mask for all frames or one per frame. The faces "
        "are painted white there, as the model was trained, and only the damage is pasted back."))


def repair_inputs() -> list[io.Input]:
    return [
        io.Float.Input("damage_grow", default=RepairSettings.grow, min=0.0, max=0.25, step=0.01, optional=True,
                       **advanced(), tooltip=(
            "Repairing: paste back this much around the damage too, as a fraction of the face.")),
        io.Float.Input("damage_feather", default=RepairSettings.feather, min=0.0, max=0.25, step=0.01,
                       optional=True, **advanced(), tooltip=(
            "Repairing: soften the edge of the pasted area over this fraction of the face.")),
    ]


def paste_inputs() -> list[io.Input]:
    return [
        io.Combo.Input("mask_shape", options=list(MASK_SHAPES), default="ellipse", tooltip=(
            "Shape of the paste mask in the crop: 'ellipse' (face oval), 'box' (whole crop minus the erosion), or "
            "'parsing' (skin, eyes, nose, mouth and hair from a face-parsing network; downloads "
            "parsing_parsenet.pth into models/facedetection on first use).")),
        io.Float.Input("erosion", default=PasteSettings.erosion, min=0.0, max=0.4, step=0.01, **advanced(), tooltip=(
            "Shrink the mask inward by this fraction of the crop size, so the crop's own border never shows.")),
        io.Float.Input("feather", default=PasteSettings.feather, min=0.0, max=0.5, step=0.01, **advanced(), tooltip=(
            "Width of the soft mask edge as a fraction of the crop size; larger hides seams, smaller keeps more of "
            "the restored face.")),
        io.Boolean.Input("color_correction", default=True, tooltip=(
            "Match the restored face's colour to the original's (per-channel mean and spread inside the mask), "
            "avoiding the colour casts GPEN can produce.")),
    ]


def image_and_mask_outputs() -> list[io.Output]:
    return [io.Image.Output("image", tooltip="The image with the restored faces; frames without faces unchanged."),
            io.Mask.Output("mask", tooltip="Where faces were pasted (1 inside, soft edge, 0 elsewhere), per frame.")]


def model_input() -> io.Input:
    return GpenModelSocket.Input("gpen_model", tooltip=f"From '{TITLES['GPENModelLoader']}'.")


def detector_input() -> io.Input:
    # One socket takes either face source; its name stays what saved workflows link to.
    return io.MultiType.Input(FaceDetectorSocket.Input("face_detector", tooltip=(
        f"From '{TITLES['GPENFaceDetectorLoader']}', or the face landmarks of core ComfyUI's 'Detect Face Landmarks "
        "(MediaPipe)' node (its faces are taken as it chose them: score_threshold and detection_size do not apply).")),
        types=[FaceLandmarksSocket])


def title(node: type) -> str:
    """The display name of a node class, or of the clone ComfyUI makes of it to run `execute`."""
    return next(TITLES[c.__name__] for c in node.__mro__ if c.__name__ in TITLES)


def named_errors(execute: Callable) -> Callable:
    """Wrap a node's `execute` so that bad or mismatched inputs (a `ValueError`) come back naming the node."""

    @functools.wraps(execute)
    def named(cls, *args, **kwargs):
        try:
            return execute(cls, *args, **kwargs)
        except ValueError as exc:
            raise type(exc)(f"{title(cls)}: {exc}") from exc

    return named


def schema(node_id: str, **fields) -> io.Schema:
    return io.Schema(node_id=node_id, display_name=TITLES[node_id], **search_aliases(*SEARCH_WORDS[node_id]), **fields)

