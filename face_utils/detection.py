"""Face detection (facexlib's RetinaFace, OpenCV's YuNet) and face selection (order, index, count)."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from ..gpen_arch.errors import UnsupportedCheckpointError
from .images import check_image, to_rgb
from .records import FaceRecord
from .weights import KNOWN_WEIGHTS, WeightsUnavailableError, load_state_dict_into, resolve_known_weights

logger = logging.getLogger(__name__)

DETECTORS = ("retinaface_resnet50", "retinaface_mobile0.25", "yunet")
ORDERS = ("largest", "left_to_right", "top_to_bottom", "best_score")

# Upstream GPEN keeps faces scoring above 0.9.
DEFAULT_SCORE_THRESHOLD = 0.9
# Long side, in pixels, of the copy detection runs on. Upstream GPEN shrinks images over 1500 px to 1000 px;
# 1024 keeps faces of 30 px and more in a 4K frame findable while costing a fraction of full resolution.
DEFAULT_DETECTION_SIZE = 1024
# Overlap above which two detections are one face (the value RetinaFace and YuNet are evaluated with).
NMS_IOU_THRESHOLD = 0.4
# facexlib's network names for our detector names.
_RETINAFACE_NETWORKS = {"retinaface_resnet50": "resnet50", "retinaface_mobile0.25": "mobile0.25"}
# Candidates YuNet keeps before non-maximum suppression (OpenCV's default).
YUNET_TOP_K = 5000

_INDEX_SPEC = re.compile(r"^\s*-?\d+\s*(,\s*-?\d+\s*)*$")


class FaceDetector:
    """A loaded face detector. Use `load_detector`; call `detect` per frame."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def to(self, device: torch.device | str) -> FaceDetector:
        """Move to `device` (for offloading between runs); returns self. YuNet always stays on the CPU."""
        return self

    def detect(
        self,
        image: np.ndarray,
        *,
        frame_index: int = 0,
        score_threshold: float = DEFAULT_SCORE_THRESHOLD,
        detection_size: int = DEFAULT_DETECTION_SIZE,
        min_face_size: float = 0.0,
    ) -> list[FaceRecord]:
        """Faces in one frame, best score first (unaligned records).

        Args:
            image: float32 [H, W, C] in 0..1, RGB (C=3), grey (C=1) or RGBA (C=4; alpha ignored).
            frame_index: stored in each record.
            score_threshold: keep detections scoring at least this (0..1).
            detection_size: long side in pixels of the copy the detector sees when the image is larger (shrunk
                with area filtering, coordinates mapped back); 0 = full resolution.
            min_face_size: drop faces whose box is smaller than this (geometric mean of width and height, in
                pixels of `image`).

        Returns:
            One `FaceRecord` per face; an empty list (logged) when there is none.
        """
        image = check_image(image)
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in 0..1, got {score_threshold}")
        if detection_size < 0:
            raise ValueError(
                f"detection_size must be 0 (full resolution) or a positive long side in pixels, got {detection_size}"
            )
        height, width = image.shape[:2]
        rgb = to_rgb(image)
        scale = 1.0
        if detection_size and max(height, width) > detection_size:
            scale = detection_size / max(height, width)
            dsize_wh = (max(1, round(width * scale)), max(1, round(height * scale)))
            rgb = cv2.resize(rgb, dsize_wh, interpolation=cv2.INTER_AREA)
            # The exact per-axis factors of the rounded size, so the mapping back is exact.
            scale_xy = np.array([dsize_wh[0] / width, dsize_wh[1] / height])
        else:
            scale_xy = np.array([1.0, 1.0])
        boxes, scores, landmarks = self._detect_rgb(np.ascontiguousarray(rgb), score_threshold)
        # Pixel centres sit at integer coordinates in both images: x_full = (x_small + 0.5) / s - 0.5.
        boxes = (boxes.reshape(-1, 2, 2) + 0.5) / scale_xy - 0.5
        landmarks = (landmarks + 0.5) / scale_xy - 0.5

        finite = np.isfinite(boxes).all(axis=(1, 2)) & np.isfinite(scores) & np.isfinite(landmarks).all(axis=(1, 2))
        if not finite.all():
            # A broken detector file (or numerics) must not stop a whole video batch: such rows locate nothing.
            logger.warning(
                "%s gave %d detection(s) with non-finite coordinates or scores in frame %d; dropped them",
                self.name, int((~finite).sum()), frame_index,
            )
        faces = []
        for box, score, points in zip(boxes[finite], scores[finite], landmarks[finite]):
            face = FaceRecord(
                frame_index=frame_index,
                image_size_hw=(height, width),
                box_xyxy=tuple(box.reshape(4)),
                score=float(min(max(score, 0.0), 1.0)),
                landmarks_xy=tuple(map(tuple, points)),
            )
            if face.box_size >= min_face_size and score >= score_threshold:
                faces.append(face)
        faces.sort(key=lambda f: -f.score)
        if not faces:
            logger.info(
                "%s found no face in frame %d (%dx%d, score >= %.2f, min size %g px%s)",
                self.name, frame_index, width, height, score_threshold, min_face_size,
                f", detected at {scale:.3g}x" if scale != 1.0 else "",
            )
        return faces

    def _detect_rgb(
        self, rgb: np.ndarray, score_threshold: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw detections on an RGB float32 0..1 image: boxes [N, 4] xyxy, scores [N], landmarks [N, 5, 2]."""
        raise NotImplementedError


class RetinaFaceDetector(FaceDetector):
    """facexlib's RetinaFace (ResNet-50 or MobileNet-0.25) on a torch device."""

    def __init__(self, name: str, net: torch.nn.Module) -> None:
        super().__init__(name)
        self.net = net

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: torch.device | str) -> RetinaFaceDetector:
        device = torch.device(device)
        # facexlib keeps its own device and the BGR channel means as plain attributes, which nn.Module.to does
        # not move.
        self.net.to(device)
        self.net.device = device
        self.net.mean_tensor = self.net.mean_tensor.to(device)
        return self

    def _detect_rgb(self, rgb, score_threshold):
        # facexlib's boundary: BGR in 0..255 (it subtracts RetinaFace's training channel means itself).
        bgr_255 = np.ascontiguousarray(rgb[:, :, ::-1]) * np.float32(255.0)
        with torch.inference_mode():
            rows = self.net.detect_faces(
                bgr_255, conf_threshold=score_threshold, nms_threshold=NMS_IOU_THRESHOLD, use_origin_size=True
            )
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, 15)
        return rows[:, :4], rows[:, 4], rows[:, 5:15].reshape(-1, 5, 2)


class YuNetDetector(FaceDetector):
    """OpenCV's YuNet (`cv2.FaceDetectorYN`), a 230 kB ONNX network that needs neither torch nor torchvision."""

    def __init__(self, name: str, model_path: Path) -> None:
        super().__init__(name)
        self.model_path = model_path
        self._net = cv2.FaceDetectorYN.create(
            str(model_path), "", (320, 320), DEFAULT_SCORE_THRESHOLD, NMS_IOU_THRESHOLD, YUNET_TOP_K
        )

    def _detect_rgb(self, rgb, score_threshold):
        height, width = rgb.shape[:2]
        # OpenCV's boundary: YuNet takes BGR uint8-range pixels.
        bgr_255 = np.ascontiguousarray(rgb[:, :, ::-1]) * np.float32(255.0)
        bgr_u8 = np.clip(np.rint(bgr_255), 0, 255).astype(np.uint8)
        self._net.setInputSize((width, height))
        self._net.setScoreThreshold(float(score_threshold))
        _, rows = self._net.detect(bgr_u8)
        if rows is None:
            empty = np.zeros((0,))
            return empty.reshape(0, 4), empty, empty.reshape(0, 5, 2)
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, 15)
        boxes = np.concatenate([rows[:, 0:2], rows[:, 0:2] + rows[:, 2:4]], axis=1)
        # YuNet names the points from the subject's side ("right eye" first), which is the image-left eye, so its
        # order is already ours: left eye, right eye, nose, left and right mouth corner as seen in the image.
        return boxes, rows[:, 14], rows[:, 4:14].reshape(-1, 5, 2)


def load_detector(name: str, model_dir: str | Path, *, device: torch.device | str = "cpu") -> FaceDetector:
    """Load detector `name` (one of `DETECTORS`) with weights from `model_dir`.

    The weights file (`KNOWN_WEIGHTS[name].filename`) is used if present there, else downloaded into it first
    (see `face_utils.weights.resolve_weights`). RetinaFace runs on `device`; YuNet always runs on the CPU through
    OpenCV.

    Raises `WeightsUnavailableError` when the file is missing and cannot be downloaded (the message names the
    other detectors, and which of them are already in `model_dir`), `UnsupportedCheckpointError` (a ValueError)
    when the file there is not usable.
    """
    if name not in DETECTORS:
        raise ValueError(f"Unknown face detector {name!r}; expected one of {DETECTORS}")
    try:
        path = resolve_known_weights(name, model_dir)
    except WeightsUnavailableError as exc:
        raise type(exc)(f"{exc} {_other_detectors(name, Path(model_dir))}") from exc
    if name == "yunet":
        try:
            return YuNetDetector(name, path)
        except cv2.error as exc:
            raise UnsupportedCheckpointError(
                f"OpenCV could not load {path} as YuNet ({exc}). Expected {KNOWN_WEIGHTS[name].filename} from "
                f"{KNOWN_WEIGHTS[name].url}; delete the file to have it downloaded again."
            ) from exc
    return RetinaFaceDetector(name, _load_retinaface(name, path, torch.device(device)))


def _other_detectors(name: str, model_dir: Path) -> str:
    """A sentence naming the detectors other than `name`, marking those whose file is already in `model_dir`."""
    others = []
    for other in DETECTORS:
        if other != name:
            present = (model_dir.expanduser() / KNOWN_WEIGHTS[other].filename).is_file()
            others.append(f"{other} ({KNOWN_WEIGHTS[other].filename}{', already in that folder' if present else ''})")
    return f"Or choose another detector: {'; '.join(others)}."


def _load_retinaface(name: str, path: Path, device: torch.device) -> torch.nn.Module:
    # Imported here: facexlib pulls in torchvision, which YuNet users need not load.
    from facexlib.detection.retinaface import RetinaFace

    with warnings.catch_warnings():
        # facexlib builds its ResNet-50 with torchvision's deprecated `pretrained=False` (no download happens).
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\.")
        net = RetinaFace(network_name=_RETINAFACE_NETWORKS[name], half=False, device=device)
    load_state_dict_into(net, path, name)
    return net.to(device).eval()


def select_faces(
    faces: Sequence[FaceRecord],
    *,
    order: str = "largest",
    index: str = "all",
    max_faces: int = 0,
) -> list[FaceRecord]:
    """Sort `faces` by `order`, keep those at the positions in `index`, then at most `max_faces` (0 = no limit).

    Orders (`ORDERS`): "largest" (box area, descending), "left_to_right" and "top_to_bottom" (box centre),
    "best_score" (descending). Ties keep the input order.

    `index` is "all" (or empty) or comma-separated positions in the sorted list, for example "0" or "0, 2";
    negative positions count from the end ("-1" is the last). Faces come out in the order the positions are
    written, each at most once. Positions beyond the faces found are ignored with a log warning, since how
    many faces a frame holds is not known in advance.
    """
    if order not in ORDERS:
        raise ValueError(f"Unknown face order {order!r}; expected one of {ORDERS}")
    if max_faces < 0:
        raise ValueError(f"max_faces must be 0 (no limit) or positive, got {max_faces}")
    positions = parse_index_spec(index)

    keys = {
        "largest": lambda f: -_box_area(f),
        "left_to_right": lambda f: (f.box_xyxy[0] + f.box_xyxy[2]) / 2,
        "top_to_bottom": lambda f: (f.box_xyxy[1] + f.box_xyxy[3]) / 2,
        "best_score": lambda f: -f.score,
    }
    ordered = sorted(faces, key=keys[order])
    if positions is None:
        chosen = ordered
    else:
        chosen, seen, missing = [], set(), []
        for position in positions:
            if not -len(ordered) <= position < len(ordered):
                missing.append(position)
                continue
            resolved = position % len(ordered)
            if resolved not in seen:
                seen.add(resolved)
                chosen.append(ordered[resolved])
        if missing:
            logger.warning(
                "Face index %s not found: only %d face(s) (positions 0..%d); ignoring them",
                missing, len(ordered), len(ordered) - 1,
            )
    return chosen[:max_faces] if max_faces else chosen


def parse_index_spec(index: str) -> list[int] | None:
    """Positions written in a face index spec; None for "all" (see `select_faces`)."""
    if not isinstance(index, str):
        raise ValueError(f"Face index must be a string such as 'all', '0' or '0,2', got {type(index).__name__}")
    text = index.strip()
    if text.lower() in ("", "all"):
        return None
    if not _INDEX_SPEC.match(text):
        raise ValueError(
            f"Face index {index!r} is not understood; expected 'all' or comma-separated face positions counted "
            "from 0 in the chosen order, for example '0' or '0,2' ('-1' = the last face)"
        )
    return [int(part) for part in text.split(",")]


def _box_area(face: FaceRecord) -> float:
    x0, y0, x1, y1 = face.box_xyxy
    return max(x1 - x0, 0.0) * max(y1 - y0, 0.0)
