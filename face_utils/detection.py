"""Finding faces in a frame, whatever the network: `FaceDetector.detect` shrinks the frame or cuts it into
overlapping tiles with a coarser pass on top, runs the network on each, maps the detections back and merges the
faces several passes found. The networks themselves (RetinaFace, YuNet) and `load_detector` are in `detectors`."""

from __future__ import annotations

import logging
import math

import cv2
import numpy as np
import torch

from .images import check_image, to_rgb
from .records import FaceRecord

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
