"""A synthetic crowd for detection recall: the fixture photos' real faces pasted small at known places into a large,
face-free background. Used by tests/test_face_detection_tiles.py and benchmarks/bench_recall.py.

Ground truth is the detector's own box and landmarks on the original photo, carried through the same resize and
shift as the pixels, so a detection "finds" a pasted face when its box overlaps the known box with IoU > 0.5 (the
PASCAL VOC / WIDER FACE criterion).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from support import read_rgb

SOURCE_IMAGES = ("grace_hopper.jpg", "astronaut.png")
# Side of the square cut around a face, in face sizes: forehead, hair and chin come along, as in a real crowd.
CONTEXT = 1.8
# Width of the soft border a pasted crop is blended in over, in crop sides.
FEATHER = 0.08
# A detection matches a known face above this IoU (PASCAL VOC / WIDER FACE).
MATCH_IOU = 0.5


@dataclass(frozen=True)
class FaceSource:
    """One fixture photo: float32 [H, W, 3] RGB 0..1, and the face the detector finds on it at full resolution
    (box xyxy and landmarks [5, 2], pixels, pixel centres at integers)."""

    rgb: np.ndarray
    box_xyxy: np.ndarray
    landmarks_xy: np.ndarray

    @property
    def box_size(self) -> float:
        width, height = self.box_xyxy[2:] - self.box_xyxy[:2]
        return float(np.sqrt(width * height))


@dataclass(frozen=True)
class Crowd:
    """A synthetic crowd: image float32 [H, W, 3] RGB 0..1; the pasted faces' boxes [N, 4] xyxy and landmarks
    [N, 5, 2], pixels of `image`."""

    image: np.ndarray
    boxes_xyxy: np.ndarray
    landmarks_xy: np.ndarray


def face_sources(detector, images_dir: Path) -> list[FaceSource]:
    """The fixture photos with the one face `detector` finds on each at full resolution."""
    sources = []
    for name in SOURCE_IMAGES:
        rgb = read_rgb(images_dir / name)
        (face,) = detector.detect(rgb, detection_size=0)
        sources.append(FaceSource(rgb, np.array(face.box_xyxy), np.array(face.landmarks_xy)))
    return sources


def background(size_hw: tuple[int, int], seed: int) -> np.ndarray:
    """A smooth, face-free background: a 4x5 grid of random colours in 0.2..0.8, bicubically upsampled."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0.2, 0.8, (4, 5, 3)).astype(np.float32)
    return cv2.resize(coarse, size_hw[::-1], interpolation=cv2.INTER_CUBIC).clip(0, 1)


def paste_face(canvas: np.ndarray, source: FaceSource, face_size: float, centre_xy: tuple[float, float]
               ) -> tuple[np.ndarray, np.ndarray]:
    """Paste `source`'s face into `canvas` (in place) scaled to a box of `face_size` px (geometric mean of width and
    height) with its box centre near `centre_xy`; the crop is clipped to the canvas. Returns the pasted face's box
    [4] and landmarks [5, 2] in canvas pixels."""
    box = source.box_xyxy
    side = CONTEXT * source.box_size
    centre = (box[:2] + box[2:]) / 2
    height, width = source.rgb.shape[:2]
    x0, y0 = np.clip(np.floor(centre - side / 2), 0, None).astype(int)
    x1, y1 = min(width, int(np.ceil(centre[0] + side / 2))), min(height, int(np.ceil(centre[1] + side / 2)))
    crop = source.rgb[y0:y1, x0:x1]
    scale = face_size / source.box_size
    dsize_wh = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    small = cv2.resize(crop, dsize_wh, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC).clip(0, 1)
    scale_xy = np.array([dsize_wh[0] / crop.shape[1], dsize_wh[1] / crop.shape[0]])
    # Pixel centres at integers: u_small = (u_crop + 0.5) * s - 0.5, u_crop = u_source - crop origin.
    to_small = lambda points: (points - [x0, y0] + 0.5) * scale_xy - 0.5  # noqa: E731
    offset = np.round(np.array(centre_xy) - to_small(centre)).astype(int)
    px, py = offset
    cy0, cx0 = max(0, py), max(0, px)
    cy1, cx1 = min(canvas.shape[0], py + small.shape[0]), min(canvas.shape[1], px + small.shape[1])
    # Blended in over a soft border (FEATHER of the crop side): a hard-edged rectangle of hair against the
    # background is no part of a real photo, and at full resolution a detector may take its corner for a face.
    ramp_y = np.clip(np.minimum(np.arange(small.shape[0]), np.arange(small.shape[0])[::-1]) / (FEATHER * side * scale),
                     0, 1)
    ramp_x = np.clip(np.minimum(np.arange(small.shape[1]), np.arange(small.shape[1])[::-1]) / (FEATHER * side * scale),
                     0, 1)
    alpha = (ramp_y[:, None] * ramp_x[None, :])[..., None].astype(np.float32)
    window = (slice(cy0, cy1), slice(cx0, cx1))
    inner = (slice(cy0 - py, cy1 - py), slice(cx0 - px, cx1 - px))
    canvas[window] = alpha[inner] * small[inner] + (1 - alpha[inner]) * canvas[window]
    pasted_box = (to_small(box.reshape(2, 2)) + offset).reshape(4)
    return pasted_box, to_small(source.landmarks_xy) + offset


def make_crowd(
    sources: list[FaceSource],
    face_sizes: list[float],
    *,
    size_hw: tuple[int, int] = (3000, 4000),
    grid_rc: tuple[int, int] = (5, 6),
    seed: int = 0,
    centres_xy: list[tuple[float, float]] | None = None,
) -> Crowd:
    """Faces of `face_sizes` (cycled) on a `grid_rc` grid of cells with random jitter inside each cell, sources
    alternating, every other face mirrored; or at `centres_xy` when given."""
    rng = np.random.default_rng(seed)
    image = background(size_hw, seed)
    if centres_xy is None:
        rows, cols = grid_rc
        cell_h, cell_w = size_hw[0] / rows, size_hw[1] / cols
        margin = max(face_sizes)  # keeps each face inside its cell, clear of its neighbours
        centres_xy = [
            ((c + 0.5) * cell_w + rng.uniform(-1, 1) * max(0.0, cell_w / 2 - margin),
             (r + 0.5) * cell_h + rng.uniform(-1, 1) * max(0.0, cell_h / 2 - margin))
            for r in range(rows) for c in range(cols)
        ]
    boxes, landmarks = [], []
    mirrored = [mirror(source) for source in sources]
    for i, centre in enumerate(centres_xy):
        source = (sources if i % 4 < 2 else mirrored)[i % len(sources)]
        box, points = paste_face(image, source, face_sizes[i % len(face_sizes)], centre)
        boxes.append(box)
        landmarks.append(points)
    return Crowd(image, np.array(boxes), np.array(landmarks))


def mirror(source: FaceSource) -> FaceSource:
    """The photo mirrored left-right, its face with it (landmarks swapped so left stays image-left)."""
    width = source.rgb.shape[1]
    flip_x = lambda x: width - 1 - x  # noqa: E731  (pixel centres at integers)
    box = source.box_xyxy
    points = source.landmarks_xy[[1, 0, 2, 4, 3]].copy()
    points[:, 0] = flip_x(points[:, 0])
    return FaceSource(np.ascontiguousarray(source.rgb[:, ::-1]), np.array([flip_x(box[2]), box[1], flip_x(box[0]),
                      box[3]]), points)


def iou_matrix(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    """IoU of every box in a [N, 4] with every box in b [M, 4] -> [N, M]."""
    a, b = a_xyxy[:, None], b_xyxy[None]
    inter_wh = np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None)
    inter = inter_wh[..., 0] * inter_wh[..., 1]
    area = lambda box: (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def match(faces, truth_xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each known face, the index of the detection matching it (IoU > MATCH_IOU) or -1; and per detection,
    how many known faces it matches (0 = a false positive). Greedy by IoU, one detection per face."""
    found = np.array([f.box_xyxy for f in faces]).reshape(-1, 4)
    ious = iou_matrix(truth_xyxy, found) if len(found) else np.zeros((len(truth_xyxy), 0))
    assigned = np.full(len(truth_xyxy), -1)
    used = np.zeros(len(found), int)
    for t, d in zip(*np.unravel_index(np.argsort(-ious, axis=None), ious.shape)):
        if ious[t, d] <= MATCH_IOU:
            break
        if assigned[t] < 0 and not used[d]:
            assigned[t], used[d] = d, 1
    return assigned, used
