"""Face pipeline for GPEN: detection, tracking, alignment and a seam-free, colour-true paste-back.

This package never imports ComfyUI. Importing it loads no model and downloads nothing; facexlib (and with it
torchvision) is imported only when a RetinaFace detector or the face parser is loaded.

Conventions
    Images are numpy float32 arrays [H, W, C] with values in 0..1, RGB order, C = 1 (grey), 3 (RGB) or 4 (RGBA,
    straight alpha; alpha is ignored by detection and kept by paste-back). Callers convert torch tensors at their
    boundary (`tensor.cpu().numpy()`). Coordinates are (x, y) pixels with pixel centres at integer positions (the
    convention of `cv2.warpAffine` and `cv2.resize`). BGR exists only inside the calls to facexlib and OpenCV's
    detector.

Records (`face_utils.records`)
    FaceRecord(frame_index, image_size_hw, box_xyxy, score, landmarks_xy, crop_size=None, template=None,
        affine_crop_from_image=None, frame_fingerprint=None, track_id=None): frozen; landmarks in `LANDMARK_NAMES`
        order (left eye, right eye, nose, left and right mouth corner, left/right as seen in the image). Methods: to_dict(), from_dict(d), to_json(),
        from_json(s), with_frame(index); properties affine (2x3 float64, raises `FaceRecordError` if unaligned),
        is_aligned, box_size.

Weights (`face_utils.weights`)
    resolve_weights(filename, model_dir, *, url, sha256) -> Path: a file already in model_dir is used as is
        (trusted: users may place other compatible training runs); a missing one is downloaded by
        torch.hub.download_url_to_file (progress bar on stderr) to a temporary file in model_dir, checked against
        the full sha256 and only then renamed into place. Raises WeightsUnavailableError (offline, HTTP error,
        connection lost; the message names the file, the address and the folder) or ChecksumError (a subclass;
        also a truncated download; the download is deleted).
    KNOWN_WEIGHTS: key -> WeightsSpec(filename, url, sha256) for "retinaface_resnet50", "retinaface_mobile0.25",
        "yunet" and "parsenet"; resolve_known_weights(key, model_dir). Weights files are read through
        model_files.checkpoints.read_checkpoint (tensors only; no code in a file ever runs).

Detection (`face_utils.detection`: tiles, passes and merging; `face_utils.detectors`: the networks)
    DETECTORS = ("retinaface_resnet50", "retinaface_mobile0.25", "yunet")
    load_detector(name, model_dir, *, device="cpu") -> FaceDetector: RetinaFace from facexlib
        (weights loaded by us with weights_only=True and strict keys, so facexlib never downloads) on `device`;
        YuNet through cv2.FaceDetectorYN on the CPU. Bad name -> ValueError listing DETECTORS; weights missing and
        not downloadable -> WeightsUnavailableError naming the other detectors (and which are already in
        model_dir); a damaged or foreign weights file -> model_files' UnsupportedCheckpointError (a ValueError).
    FaceDetector.detect(image, *, frame_index=0, score_threshold=0.9, detection_size=0, min_face_size=0)
        -> list[FaceRecord], best score first, unaligned. FaceDetector.to(device) moves a RetinaFace detector
        (facexlib's own device attributes included) for offloading. detection_size is the long side of the copy
        the network sees (only ever shrunk); 0 = full resolution, in overlapping tiles plus a quarter-scale pass
        above 1920x1088, detections merged; coordinates are mapped back to `image`. No face -> [] and an
        info log line. Settings are checked by `pipeline.DetectSettings` (their one owner), not here.

Selection (`face_utils.selection`; the one implementation of these rules)
    ORDERS = ("largest", "left_to_right", "top_to_bottom", "best_score")
    order_faces(faces, order) -> list[FaceRecord]: ties keep the input order.
    parse_index_spec(index) -> list[int] | None: "all" (or empty) -> None, else comma-separated positions ("0",
        "0, 2", "-1" = the last); a malformed spec raises ValueError showing the syntax.
    pick(items, index): the items at those positions, in the order written, each once; positions past the end
        are logged and ignored.
    select_tracks(tracks, *, index, max_faces, min_face_size): tracks by id (numbered in `order` by tracking),
        less those under min_face_size, at most max_faces.

Alignment (`face_utils.alignment`)
    TEMPLATES = ("gpen", "ffhq"): upstream GPEN's own five-point template (default) and the FFHQ-512 template
        facexlib, ReActor and FaceFusion use, both scaled to the crop size.
    reference_points(template, crop_size) -> float64 [5, 2].
    similarity_transform(src_xy, dst_xy) -> 2x3: least-squares similarity (Umeyama).
    align_face(face, *, crop_size, template="gpen") -> FaceRecord with crop_size, template and
        affine_crop_from_image filled in.
    warp_face(image, face, *, interpolation="cubic", antialias=True, border="reflect") -> float32 [S, S, C]:
        low-passed to the crop's resolution when the face is larger than the crop, bicubic (or "lanczos",
        "linear") otherwise; border "reflect", "replicate" or "constant" (black).

Paste-back (`face_utils.paste`)
    MASK_SHAPES = ("ellipse", "box", "parsing")
    PasteSettings(mask_shape="ellipse", erosion=0.04, feather=0.1, opacity=1.0, color_correction=True,
        interpolation="cubic"): erosion and feather are fractions of the crop side, i.e. of the face.
    paste_faces(image, crops, faces, settings=PasteSettings(), *, parser=None) -> (image, mask [H, W]): image
        may be the detection frame or any uniformly scaled copy (CanvasMismatchError otherwise); crops may have
        any size and channel count; opacity blends restored with original pixels; colour correction matches
        the restored face's low-frequency colour to the original under the mask; later faces go over earlier
        ones; mask is the union of the face masks (opacity excluded). Outside the mask the result is
        bit-identical to the input, and only the rectangle under each crop is computed.
    face_mask_uv(u, v, shape, erosion, feather): the geometric masks in normalised crop coordinates.
    canvas_scale_xy(canvas_hw, frame_hw): per-axis scale from the detection frame to a canvas; raises
        CanvasMismatchError unless the canvas is the frame uniformly scaled (up to rounding of its size).
    prepare_faces + blend_faces: paste_faces in two halves, so that video paths can smooth each face's
        ColourStats over time in between (`face_utils.paste_stream.PasteStream` does, frame by frame).

Tracking (`face_utils.tracking`)
    assign_tracks(frames, *, order, max_gap) -> [Track]: per-frame detections linked into people with stable
        ids (numbered by `order` in the frame each first appears), short gaps filled by interpolation;
        smooth_tracks(tracks, *, smoothing): two-sided,
        zero-lag smoothing of landmarks and boxes that never crosses a scene cut; smooth_series for any
        per-frame statistic.

Pipeline (`face_utils.pipeline`; the nodes and the command line share it; its inputs and outputs in
`face_utils.face_set`)
    DetectSettings (the one owner of the detection, selection and tracking rules), detect_faces(image or
    FrameSource, detector, settings) -> FaceSet (the GPEN_FACES socket), warp_crops, paste_back,
    restore_frames(frames, ..., on_frame) (streams any FrameSource), restore_image; each takes
    `pixels=choose_pixels(model_device)`.

Pixel backends (`face_utils.pixels`)
    choose_pixels(device, interpolation) -> Pixels, chosen once per run: OpenCvPixels (numpy and OpenCV, the CPU)
    or TorchPixels(device) (a CUDA device: `face_utils.torch_pixels`, the twins of alignment.warp_face and
    paste.prepare_faces/blend_faces on tensors, within 1e-4 of them).

Other face sources (`face_utils.landmark_faces`)
    LandmarkFaces(payload): core ComfyUI's FACE_LANDMARKS (its MediaPipe face mesh) behind the FaceDetector
    interface: the iris centres, nose tip and mouth corners become the five points, put in image order from the
    face's own geometry.

Temporal consistency (`face_utils.temporal`)
    TemporalConsistency(emit, shots): between restore and paste in the frame loop (`restore_frames(...,
    temporal_consistency=True)`), each restored face averaged with its track's neighbours within 3 frames where
    their aligned inputs agree, so invented detail does not flicker; 7 frames held.

Repair (`face_utils.repair`)
    RepairSettings(grow, feather); a picture-space damage mask is cut out with each face (with_damage), painted
    white in the crop for GPEN-Inpainting (painted) and becomes the restored crop's alpha, grown and feathered
    (paste_weight); paste-back weights a crop's mask by its alpha, so only the damage changes.

Face parsing (`face_utils.parsing`)
    load_face_parser(model_dir, *, device="cpu") -> FaceParser (facexlib's ParseNet,
        parsing_parsenet.pth, resolved like detector weights).
    FaceParser.to(device); FaceParser.face_mask(crop, *, size=None) -> float32 [S, S] in 0..1, the probability of
        the face classes (`FACE_CLASSES`: skin, brows, eyes, glasses, ears, earrings, nose, mouth, lips, hair);
        FaceParser.face_probability(rgb [1, 3, S, S] tensor) -> the same at PARSE_SIZE, on the parser's device.

Errors
    ImageFormatError (bad image array), FaceRecordError, AlignmentError, CanvasMismatchError are ValueErrors;
    WeightsUnavailableError and ChecksumError are RuntimeErrors.
"""

from __future__ import annotations

import importlib

# The names above, by the module that owns each. They are imported on first use (a module-level __getattr__, PEP
# 562) rather than with the package: most of those modules import torch and OpenCV, which take seconds, and the
# command line answers --help without them.
_EXPORTS = {
    "alignment": ("AlignmentError", "align_face", "reference_points", "similarity_transform", "warp_face"),
    "choices": ("DETECTORS", "MASK_SHAPES", "ORDERS", "TEMPLATES"),
    "detection": ("FaceDetector",),
    "detectors": ("load_detector",),
    "images": ("ImageFormatError",),
    "parsing": ("FaceParser", "load_face_parser"),
    "paste": ("CanvasMismatchError", "PasteSettings", "canvas_scale_xy", "face_mask_uv", "paste_faces"),
    "records": ("LANDMARK_NAMES", "FaceRecord", "FaceRecordError"),
    "selection": ("order_faces", "parse_index_spec", "pick", "select_tracks"),
    "weights": ("KNOWN_WEIGHTS", "ChecksumError", "WeightsSpec", "WeightsUnavailableError", "resolve_known_weights",
                "resolve_weights"),
}
_OWNER = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_OWNER)


def __getattr__(name: str) -> object:
    if name not in _OWNER:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_OWNER[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
