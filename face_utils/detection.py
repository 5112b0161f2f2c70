"""Face detection (facexlib's RetinaFace, OpenCV's YuNet)."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from ..model_files.errors import UnsupportedCheckpointError
from .choices import DETECTORS
from .images import check_image, to_rgb
from .records import FaceRecord
from .weights import KNOWN_WEIGHTS, WeightsUnavailableError, load_state_dict_into, resolve_known_weights

logger = logging.getLogger(__name__)


# Upstream GPEN keeps faces scoring above 0.9.
DEFAULT_SCORE_THRESHOLD = 0.9
# `detection_size` 0: the network sees the image at full resolution (in tiles when large). The former default, a
# 1024-px copy, shrank a 60-px face in a 4000-px group photo to 15 px, under RetinaFace's smallest anchor (16 px,
# facexlib's cfg min_sizes [[16, 32], ...]), and lost it.
DEFAULT_DETECTION_SIZE = 0
# Largest copy (H x W pixels) detected in one forward pass; larger ones are cut into tiles so memory stays bounded
# (activations grow with the area: RetinaFace-R50's first stage alone holds 64 channels at half resolution).
# 1920 x 1088 keeps a 1080p video frame in one pass.
MAX_SINGLE_PASS_PIXELS = 1920 * 1088
# Nominal largest tile side; tiles are made as equal as the 32-px alignment allows (4000 px: 4 tiles of 1152).
TILE_SIZE = 1280
# Minimum overlap of neighbouring tiles. A face whose box spans at most TILE_OVERLAP - 2 * TILE_EDGE_MARGIN = 176 px
# lies whole in some tile; a larger one is at least 176 / PYRAMID_FACTOR = 44 px in the next, downscaled pass, where
# the detector still finds it reliably (benchmarks/bench_recall.py: MobileNet-0.25 finds all 30 faces of 45 px).
TILE_OVERLAP = 192
# Tile origins are multiples of RetinaFace's and YuNet's coarsest feature stride (32; strides 8, 16, 32), so a
# tile's anchor grid is the whole image's and a face inside a tile is seen as in a single pass.
TILE_ALIGN = 32
# A box within this many pixels of an inner tile edge (or beyond it) counts as cut by the tile: the finest feature
# stride, 8 px, the distance at which the box's outermost feature cell already sits on the edge.
TILE_EDGE_MARGIN = 8
# Each pass over tiles is followed by one on the whole image shrunk by this factor (itself tiled if still too large),
# which finds the faces too large to lie whole in a tile.
PYRAMID_FACTOR = 4
# A detection with this fraction of its box inside a larger face is a piece of it (when cut by a tile edge, or
# inside a face found by a coarser pass): IoU alone misses a half face inside a whole one.
PIECE_FRACTION = 0.5
# Overlap above which two detections are one face (the value RetinaFace and YuNet are evaluated with).
NMS_IOU_THRESHOLD = 0.4
# facexlib's network names for our detector names.
_RETINAFACE_NETWORKS = {"retinaface_resnet50": "resnet50", "retinaface_mobile0.25": "mobile0.25"}
# Channels of an RGB image in RetinaFace's (OpenCV's) BGR order.
BGR_FROM_RGB = [2, 1, 0]
# Input sizes whose RetinaFace anchors are kept (`RetinaFaceDetector._priors_for`; 1.4 MB for a 1920 x 1088 pass
# with facexlib's cfg, the same for both networks): a video's frames share one size, a 4000x3000 photo needs 4
# (its full tiles, last column, last row and corner tile) and one more for its shrunk pass.
PRIOR_CACHE_SIZE = 16
# Candidates YuNet keeps before non-maximum suppression (OpenCV's default).
YUNET_TOP_K = 5000


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

        The detector sees a copy of `image` whose long side is `detection_size` pixels (shrunk with area filtering
        when the image is larger; never enlarged), or the image itself for `detection_size=0`. A copy of at most
        `MAX_SINGLE_PASS_PIXELS` (1920 x 1088) is detected in one pass. A larger one is detected in overlapping
        tiles of at most `TILE_SIZE` (1280) px at the copy's resolution, plus one pass on the whole copy shrunk by
        `PYRAMID_FACTOR` (4; tiled again while still too large), which finds the faces too large to lie whole in
        a tile; detections of one face from several passes are merged into one (see `_merge_passes`). The
        network's memory is that of one tile or pass whatever the image size (plus the shrunk copies of the image).

        Args:
            image: float32 [H, W, C] in 0..1, RGB (C=3), grey (C=1) or RGBA (C=4; alpha ignored).
            frame_index: stored in each record.
            score_threshold: keep detections scoring at least this (0..1).
            detection_size: long side in pixels of the copy the detector sees; 0 (the default) = full resolution,
                which finds faces of about 40 px and more in any image size (MobileNet-0.25 on a 4000x3000 crowd:
                all faces of 45 px, 63 % of 30 px; benchmarks/bench_recall.py). 1024 is the former default, 20x
                cheaper on a 4000x3000 photo (one 1024x768 pass instead of 12 tiles and a 1000x750 pass: 0.8 vs
                16.2 megapixels through the network), but faces shrink with the image: a 60-px face there is
                seen at 15 px and lost.
            min_face_size: drop faces whose box is smaller than this (geometric mean of width and height, in
                pixels of `image`).

        Returns:
            One `FaceRecord` per face, coordinates in pixels of `image` (pixel centres at integers); an empty list
            (logged) when there is none.
        """
        image = check_image(image)
        height, width = image.shape[:2]
        rgb = to_rgb(image)
        long_side = min(detection_size or max(height, width), max(height, width))
        passes = []
        while True:
            copy, scale_xy = _shrunk(rgb, long_side)
            rows = self._detect_tiled(copy, score_threshold)
            passes.append((*rows, scale_xy))
            if copy.shape[0] * copy.shape[1] <= MAX_SINGLE_PASS_PIXELS:
                break
            # Tiled: the next pass, on a smaller copy, finds the faces too large to lie whole in a tile.
            long_side = max(1, round(long_side / PYRAMID_FACTOR))

        mapped = []
        for level, (boxes, scores, landmarks, cut, scale_xy) in enumerate(passes):
            # Pixel centres sit at integer coordinates in both images: x_full = (x_small + 0.5) / s - 0.5.
            boxes = (boxes.reshape(-1, 2, 2) + 0.5) / scale_xy - 0.5
            landmarks = (landmarks + 0.5) / scale_xy - 0.5
            mapped.append((boxes, scores, landmarks, cut, np.full(len(scores), level)))
        boxes, scores, landmarks, cut, level = (np.concatenate(column) for column in zip(*mapped))

        finite = np.isfinite(boxes).all(axis=(1, 2)) & np.isfinite(scores) & np.isfinite(landmarks).all(axis=(1, 2))
        if not finite.all():
            # A broken detector file (or numerics) must not stop a whole video batch: such rows locate nothing.
            logger.warning(
                "%s gave %d detection(s) with non-finite coordinates or scores in frame %d; dropped them",
                self.name, int((~finite).sum()), frame_index,
            )
        boxes, scores, landmarks, cut, level = (column[finite] for column in (boxes, scores, landmarks, cut, level))
        if len(passes) > 1:
            keep = _merge_passes(boxes.reshape(-1, 4), scores, cut, level)
            boxes, scores, landmarks = boxes[keep], scores[keep], landmarks[keep]
        # Records only for the rows kept (a low threshold can leave thousands): `FaceRecord.box_size`, vectorised.
        sides = np.clip(boxes[:, 1] - boxes[:, 0], 0.0, None)
        wanted = (scores >= score_threshold) & (np.sqrt(sides[:, 0] * sides[:, 1]) >= min_face_size)
        faces = [
            FaceRecord(
                frame_index=frame_index,
                image_size_hw=(height, width),
                box_xyxy=tuple(boxes[row].reshape(4)),
                score=float(min(max(scores[row], 0.0), 1.0)),
                landmarks_xy=tuple(map(tuple, landmarks[row])),
            )
            for row in np.flatnonzero(wanted)
        ]
        faces.sort(key=lambda f: -f.score)
        if not faces:
            first_scale = passes[0][4][0]
            logger.info(
                "%s found no face in frame %d (%dx%d, score >= %.2f, min size %g px%s%s)",
                self.name, frame_index, width, height, score_threshold, min_face_size,
                f", detected at {first_scale:.3g}x" if first_scale != 1.0 else "",
                f", {len(passes)} passes in tiles" if len(passes) > 1 else "",
            )
        return faces

    def _detect_tiled(
        self, rgb: np.ndarray, score_threshold: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Raw detections on `rgb` (float32 [H, W, 3] in 0..1) in one pass, or in tiles when it is larger than
        `MAX_SINGLE_PASS_PIXELS`: boxes [N, 4] xyxy, scores [N], landmarks [N, 5, 2] in pixels of `rgb`, and
        cut [N] (bool: the box reaches within `TILE_EDGE_MARGIN` of an edge its tile shares with another tile).
        Tiles only shift coordinates (by whole pixels), so the pixel-centre convention is kept as it is. Tiles are
        views: each detector converts its input (and so copies it) once anyway."""
        height, width = rgb.shape[:2]
        if height * width <= MAX_SINGLE_PASS_PIXELS:
            boxes, scores, landmarks = self._detect_rgb(rgb, score_threshold)
            return boxes, scores, landmarks, np.zeros(len(scores), bool)
        found = []
        for y0, y1 in tile_spans(height):
            for x0, x1 in tile_spans(width):
                boxes, scores, landmarks = self._detect_rgb(rgb[y0:y1, x0:x1], score_threshold)
                boxes = boxes + [x0, y0, x0, y0]
                landmarks = landmarks + [x0, y0]
                # Only edges inside the image cut a face: one cut by the image border is cut in every pass.
                cut = np.zeros(len(scores), bool)
                if x0 > 0:
                    cut |= boxes[:, 0] < x0 + TILE_EDGE_MARGIN
                if y0 > 0:
                    cut |= boxes[:, 1] < y0 + TILE_EDGE_MARGIN
                if x1 < width:
                    cut |= boxes[:, 2] > x1 - TILE_EDGE_MARGIN
                if y1 < height:
                    cut |= boxes[:, 3] > y1 - TILE_EDGE_MARGIN
                found.append((boxes, scores, landmarks, cut))
        logger.debug("detected %dx%d px in %d tiles", width, height, len(found))
        return tuple(np.concatenate(column) for column in zip(*found))

    def _detect_rgb(
        self, rgb: np.ndarray, score_threshold: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw detections on an RGB float32 0..1 image [H, W, 3] (any strides: a tile or channel view): boxes
        [N, 4] xyxy, scores [N], landmarks [N, 5, 2]."""
        raise NotImplementedError


def tile_spans(length: int) -> list[tuple[int, int]]:
    """Tiles along one axis of `length` pixels: [start, end) pairs covering 0..length, each at most about
    `TILE_SIZE` long (`TILE_SIZE` + 31 at worst), starts multiples of `TILE_ALIGN`, neighbours overlapping by at
    least `TILE_OVERLAP`; the last tile ends at `length` and may be shorter. One tile when `length <= TILE_SIZE`."""
    if length <= TILE_SIZE:
        return [(0, length)]
    count = math.ceil((length - TILE_OVERLAP) / (TILE_SIZE - TILE_OVERLAP))
    # Equal strides, rounded up to the alignment: count tiles of stride + overlap then reach past `length`.
    stride = math.ceil((length - TILE_OVERLAP) / count / TILE_ALIGN) * TILE_ALIGN
    side = stride + TILE_OVERLAP
    spans = [(0, side)]
    while spans[-1][1] < length:
        start = spans[-1][0] + stride
        spans.append((start, min(start + side, length)))
    return spans


def _shrunk(rgb: np.ndarray, long_side: int) -> tuple[np.ndarray, np.ndarray]:
    """`rgb` with its long side shrunk to `long_side` px (area filtering; unchanged when not larger), and the exact
    per-axis factors [sx, sy] of the rounded size, so coordinates map back exactly."""
    height, width = rgb.shape[:2]
    if max(height, width) <= long_side:
        return rgb, np.array([1.0, 1.0])
    scale = long_side / max(height, width)
    dsize_wh = (max(1, round(width * scale)), max(1, round(height * scale)))
    scale_xy = np.array([dsize_wh[0] / width, dsize_wh[1] / height])
    return cv2.resize(rgb, dsize_wh, interpolation=cv2.INTER_AREA), scale_xy


def _merge_passes(boxes_xyxy: np.ndarray, scores: np.ndarray, cut: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Indices of the detections to keep when one face may have been found by several tiles and passes.

    First, pieces go: a detection with `PIECE_FRACTION` of its box inside a whole (uncut) detection from a coarser
    pass, yet not the same face (IoU at most `NMS_IOU_THRESHOLD`), is part of a face too large for its tile (at
    full resolution an eye of a 1300-px face scores 0.94 as a face of its own). Then greedy non-maximum suppression
    over all passes, in order of preference: boxes not cut by a tile edge first (a cut face has a partial box and
    landmarks), then finer passes (level 0 = the finest: more pixels per face), then higher score. A detection is
    dropped when its IoU with a kept one exceeds `NMS_IOU_THRESHOLD`, or, if it is cut, when `PIECE_FRACTION` of
    its box lies inside a kept one. A cut detection with no whole counterpart is kept: a face the tiles cut and
    the coarser pass missed is still a face.

    Args: boxes_xyxy [N, 4] in pixels; scores [N]; cut [N] bool; level [N] int (pass index). Returns int [K].
    """
    sides = np.clip(boxes_xyxy[:, 2:] - boxes_xyxy[:, :2], 0, None)
    areas = np.maximum(sides[:, 0] * sides[:, 1], 1e-9)

    def overlap(index: int, others: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Intersection areas and IoUs of box `index` with boxes `others` [M]. One row at a time, never an
        [N, N] matrix: a low threshold can leave tens of thousands of candidates."""
        inter_wh = np.clip(
            np.minimum(boxes_xyxy[others, 2:], boxes_xyxy[index, 2:])
            - np.maximum(boxes_xyxy[others, :2], boxes_xyxy[index, :2]), 0, None
        )
        inter = inter_wh[:, 0] * inter_wh[:, 1]
        return inter, inter / (areas[others] + areas[index] - inter)

    whole_coarser = {int(lv): np.flatnonzero(~cut & (level > lv)) for lv in np.unique(level)}
    kept = np.empty(len(scores), dtype=np.int64)
    count = 0
    for index in np.lexsort((-scores, level, cut)):
        coarser = whole_coarser[int(level[index])]
        if len(coarser):
            inter, iou = overlap(index, coarser)
            if ((inter >= PIECE_FRACTION * areas[index]) & (iou <= NMS_IOU_THRESHOLD)).any():
                continue
        if count:
            inter, iou = overlap(index, kept[:count])
            if (iou > NMS_IOU_THRESHOLD).any() or (cut[index] and (inter >= PIECE_FRACTION * areas[index]).any()):
                continue
        kept[count] = index
        count += 1
    return kept[:count].copy()


class RetinaFaceDetector(FaceDetector):
    """facexlib's RetinaFace (ResNet-50 or MobileNet-0.25) on a torch device.

    facexlib's network computes the outputs; the steps around it are ours, with the semantics of facexlib's
    `RetinaFace.detect_faces(use_origin_size=True)` (same preprocessing, decoding, threshold and NMS, so the same
    detections) but cheaper: anchors are built vectorised and cached per input size (facexlib rebuilds them in
    Python loops on every call: 0.14 s at 910x1137), only the anchors scoring above the threshold are decoded,
    and everything stays on the network's device until the few kept rows come back.
    """

    def __init__(self, name: str, net: torch.nn.Module) -> None:
        super().__init__(name)
        self.net = net
        self._priors: dict[tuple[int, int], torch.Tensor] = {}

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
        self._priors.clear()  # cached on the former device
        return self

    def _detect_rgb(
        self, rgb: np.ndarray, score_threshold: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Imported here, as in `_load_retinaface`: this module loads without facexlib and torchvision (YuNet).
        from facexlib.detection.retinaface_utils import decode, decode_landm
        from torchvision.ops import nms

        height, width = rgb.shape[:2]
        variances = self.net.cfg["variance"]
        with torch.inference_mode():
            loc, conf, landmarks = self.net(self._network_input(rgb))
            scores = conf[0, :, 1]
            # Strictly above, as facexlib's detect_faces; only those anchors are decoded.
            rows = torch.nonzero(scores > score_threshold).squeeze(1)
            priors = self._priors_for(height, width)[rows]
            # The network regresses in units of the input size; x, y alternate in both outputs.
            size_xy = torch.tensor([width, height], dtype=torch.float32, device=scores.device)
            boxes = decode(loc[0, rows], priors, variances) * size_xy.repeat(2)
            points = decode_landm(landmarks[0, rows], priors, variances) * size_xy.repeat(5)
            scores = scores[rows]
            keep = nms(boxes, scores, NMS_IOU_THRESHOLD)  # kept rows by descending score, as facexlib's
            found = torch.cat([boxes[keep], scores[keep, None], points[keep]], dim=1).cpu().double().numpy()
        return found[:, :4], found[:, 4], found[:, 5:15].reshape(-1, 5, 2)

    def _network_input(self, rgb: np.ndarray) -> torch.Tensor:
        """RetinaFace's input for an RGB float32 0..1 image: [1, 3, H, W] BGR in 0..255 minus facexlib's training
        channel means (`net.mean_tensor`), on the network's device. The pixels cross to the device once, as they
        are; the channel order and layout change there (on the GPU when the network is there). Same operations
        in the same order as facexlib (x * 255, then minus the mean, in float32), so the same values."""
        if min(rgb.strides) < 0:
            rgb = np.ascontiguousarray(rgb)  # torch takes no negative strides (a flipped view)
        pixels = torch.from_numpy(rgb).to(self.net.mean_tensor.device)
        bgr = pixels.permute(2, 0, 1)[BGR_FROM_RGB].unsqueeze(0)  # one gather: a new contiguous tensor
        return bgr.mul_(255.0).sub_(self.net.mean_tensor).contiguous(memory_format=torch.channels_last)

    def _priors_for(self, height: int, width: int) -> torch.Tensor:
        """RetinaFace's anchors for an input of `height` x `width` on the network's device, cached: a video's
        frames share one size, a tiled image has a few (full tiles, the last column and row, the pyramid pass)."""
        key = (height, width)
        priors = self._priors.get(key)
        if priors is None:
            if len(self._priors) >= PRIOR_CACHE_SIZE:
                del self._priors[next(iter(self._priors))]  # the oldest
            cfg = self.net.cfg
            priors = retinaface_priors(height, width, cfg["min_sizes"], cfg["steps"])
            priors = self._priors[key] = torch.from_numpy(priors).to(self.net.mean_tensor.device)
        return priors


def retinaface_priors(
    height: int, width: int, min_sizes: Sequence[Sequence[int]], steps: Sequence[int]
) -> np.ndarray:
    """RetinaFace's anchors for an input of `height` x `width` px, as facexlib's `PriorBox(cfg, (height,
    width)).forward()` builds them (in Python loops, 0.14 s at 910x1137), vectorised: float32 [N, 4] rows
    (cx, cy, w, h) in units of the input's width and height. Per feature level (stride `steps[k]`, a cell per
    started stride), cells row by row, and per cell one anchor per size in `min_sizes[k]`, centred on the cell.
    Computed in float64 with facexlib's operations in its order (centre = (index + 0.5) * stride / side), then
    rounded once to float32, so the values are the same to the bit."""
    levels = []
    for step, sizes in zip(steps, min_sizes):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        centre_x = (np.arange(cols) + 0.5) * step / width
        centre_y = (np.arange(rows) + 0.5) * step / height
        sizes = np.asarray(sizes, dtype=np.float64)
        level = np.empty((rows, cols, len(sizes), 4))
        level[..., 0] = centre_x[None, :, None]
        level[..., 1] = centre_y[:, None, None]
        level[..., 2] = sizes / width
        level[..., 3] = sizes / height
        levels.append(level.reshape(-1, 4))
    return np.concatenate(levels).astype(np.float32)


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
        # One new contiguous array, then rounded and clipped in place.
        bgr_255 = rgb[:, :, ::-1] * np.float32(255.0)
        bgr_u8 = np.clip(np.rint(bgr_255, out=bgr_255), 0, 255, out=bgr_255).astype(np.uint8)
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
    net.eval()
    _fold_batch_norms(net)
    # Channels-last with the batch norms folded: MobileNet-0.25 on a 970x1137 photo 178 -> 83 ms on 2 CPU cores
    # (channels-last alone 118 ms); the outputs move by about 3e-5.
    return net.to(device, memory_format=torch.channels_last)


def _fold_batch_norms(net: torch.nn.Module) -> None:
    """Fold each inference-mode BatchNorm2d into the convolution before it, in place: in sequences (facexlib's
    conv_bn blocks, ResNet's downsample) and in torchvision's `convK`/`bnK` pairs. The network keeps its class
    and methods; its state dict changes, so weights are loaded before."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for module in list(net.modules()):
        if isinstance(module, torch.nn.Sequential):
            pairs = [(str(i), str(i + 1)) for i in range(len(module) - 1)]
        else:
            pairs = [(f"conv{k}", f"bn{k}") for k in range(1, 4)]
        for conv_name, bn_name in pairs:
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, torch.nn.Identity())
