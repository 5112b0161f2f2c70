"""Faces followed through a batch of video frames: stable ids, filled gaps and steady landmarks.

A video batch is known in full before anything is pasted, so faces are linked frame to frame (`assign_tracks`),
short detector misses are filled by interpolation, and each track's landmarks and box are smoothed with a
two-sided, zero-lag filter (`smooth_tracks`). Tracks are numbered in the chosen order (`selection.order_faces`), for
`selection.select_tracks` to choose people once for the whole batch. `smooth_series` applies the same
smoother to any per-frame statistic (the paste step's colour statistics) with the same segment boundaries.

Conventions: frames are positions in the batch (0-based) and equal each record's `frame_index`; coordinates are
frame pixels as in `FaceRecord`; "face size" is `FaceRecord.box_size` (geometric mean of box width and height).
Records coming out of tracking are unaligned (moved landmarks invalidate an affine): align them afterwards.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .assignment import min_cost_assignment
from .choices import DEFAULT_MAX_GAP
from .selection import order_faces
from .records import FaceRecord

logger = logging.getLogger(__name__)

LANDMARK_GATE = 0.5
"""Largest mean landmark distance, in face sizes, from a track's predicted or last position to a detection of it
(head motion at 30 fps is typically under 0.3 face sizes per frame; two faces side by side are >= 1 apart)."""
SIZE_RATIO_GATE = 1.5
"""Largest box-size ratio between a track and a detection of it (zooms and walks change a face's size by a few %
per frame; a child's face where an adult's was is someone else)."""
GAP_GATE_GROWTH = 0.1
"""Both gates widen by this fraction per missed frame: an unseen face may have moved further."""
IOU_COST_WEIGHT = 0.5
"""Weight of (1 - box IoU) next to the landmark distance in the matching cost (breaks ties between close faces)."""
VELOCITY_SIGHTINGS = 4
"""Most recent sightings a track's velocity is fitted on (enough to average landmark noise, short enough to turn)."""
CUT_JUMP_FACE_SIZES = 1.0
"""A jump of the landmark centroid larger than the face size between consecutive frames is a scene cut."""
CUT_SIZE_RATIO = 1.5
"""So is a box-size change beyond this ratio between consecutive frames (a cut from a wide shot to a close-up)."""
SIGMA_CHOICES_FRAMES = tuple(float(s) for s in np.geomspace(0.5, 60.0, 25))
"""Gaussian window sigmas (frames) of the local quadratic regression that smoothing 1 chooses among, per track
segment and coordinate, by leave-one-out cross-validation on the segment's own detections (`choose_sigma`). The
detector's noise and the motion vary by clip, face size and detector, so no one window fits: a fixed sigma 5 made
a face swaying +-140 px every 48 frames less accurate than the raw detections (1.89 vs 1.58 px) while a still face
could take far more. From 0.5 frames (almost no smoothing, for fast motion) to 60 (a still face over seconds)."""
SMOOTHING_SIGMA_FRAMES = 5.0
"""The window sigma (frames) of `smooth_series` when a caller fixes one (`sigma_frames`)."""
MIN_SEGMENT_FRAMES = 6
"""Segments shorter than this are left as detected: too few frames to tell noise from motion."""
MIN_SIGMA_FRAMES = 0.25
"""Below this sigma a neighbour's weight is under exp(-8): smoothing is skipped as a no-op."""
LOO_MIN_SHARE = 1e-6
"""Rows whose own weight in their fitted value leaves less than this to the others have no leave-one-out
prediction (`choose_sigma`)."""


class TrackingError(ValueError):
    """Tracking inputs that do not fit together (frame numbers, empty tracks, bad segments)."""


@dataclass(frozen=True)
class Track:
    """One person through a batch: `faces` maps frame -> record (detected, or filled in a short gap).

    `detected_frames` are the frames the detector found the face in; the other frames of `faces` were filled by
    interpolation. Frames run from the first to the last sighting, in increasing order; they are contiguous unless
    the track was built by hand with holes. Treat `faces` as read-only.
    """

    track_id: int
    faces: dict[int, FaceRecord]
    detected_frames: frozenset[int]

    def __post_init__(self) -> None:
        faces = dict(sorted(self.faces.items()))
        detected = frozenset(self.detected_frames)
        if not detected:
            raise TrackingError(f"Track {self.track_id} has no detected frame; every track starts from a detection")
        wrong = [frame for frame, face in faces.items() if face.frame_index != frame]
        if wrong:
            raise TrackingError(f"Track {self.track_id}: records at frames {wrong} carry another frame_index")
        if not detected <= faces.keys():
            raise TrackingError(f"Track {self.track_id}: detected frames {sorted(detected - faces.keys())} lack a record")
        object.__setattr__(self, "faces", faces)
        object.__setattr__(self, "detected_frames", detected)

    @property
    def frames(self) -> tuple[int, ...]:
        return tuple(self.faces)

    @property
    def first_frame(self) -> int:
        return next(iter(self.faces))

    @property
    def last_frame(self) -> int:
        return next(reversed(self.faces))

    @property
    def filled_frames(self) -> frozenset[int]:
        return frozenset(self.faces.keys() - self.detected_frames)

    @property
    def median_box_size(self) -> float:
        """Median `box_size` (pixels) over the detected frames: the track's size for size filters."""
        return float(np.median([self.faces[f].box_size for f in self.detected_frames]))

    def series(self) -> np.ndarray:
        """float64 [T, 14] in `frames` order: landmarks x0, y0, ..., x4, y4 then box x0, y0, x1, y1 (pixels)."""
        return np.stack([_as_vector(face) for face in self.faces.values()])

    def segments(self) -> list[tuple[int, int]]:
        """Half-open ranges (start, stop) of positions in `frames` that smoothing may span: broken at holes in
        the frames and at scene cuts (a centroid jump over `CUT_JUMP_FACE_SIZES` face sizes, or a size change
        over `CUT_SIZE_RATIO`, between consecutive frames)."""
        frames, faces = self.frames, list(self.faces.values())
        starts = [0] + [i for i in range(1, len(faces)) if frames[i] != frames[i - 1] + 1
                        or _is_cut(faces[i - 1], faces[i])]
        return list(zip(starts, starts[1:] + [len(faces)]))


def assign_tracks(
    frames: Sequence[Sequence[FaceRecord]], *, order: str = "largest", max_gap: int = DEFAULT_MAX_GAP
) -> list[Track]:
    """Link the faces of a batch into tracks, fill their short gaps, and number them.

    Args:
        frames: per frame, every unaligned record the detector found there (before any selection); the records
            of `frames[t]` must have `frame_index == t`.
        order: one of `choices.ORDERS` (see `selection.order_faces`): tracks first seen in frame 0 get ids 0..k-1 in
            this order, tracks first seen later the next ids, by first frame and then by this order within it.
        max_gap: missed frames after which a track is not found again (0 = consecutive frames only).

    Matching: each frame's detections are assigned to the live tracks by a minimum-cost assignment (most pairs
    first, then least cost). A pair's cost is the mean landmark distance in face sizes, from the track's
    constant-velocity prediction or its last sighting (whichever is closer), plus `IOU_COST_WEIGHT` * (1 - IoU);
    pairs beyond `LANDMARK_GATE` or `SIZE_RATIO_GATE` (widened by `GAP_GATE_GROWTH` per missed frame) never
    match. An unmatched detection starts a track. Gaps of up to `max_gap` frames between sightings are filled by
    cubic Hermite interpolation (tangents from the neighbouring sightings); nothing is added before a track's
    first or after its last sighting.

    Returns:
        Tracks sorted by `track_id` (0, 1, ...).
    """
    sightings: list[dict[int, FaceRecord]] = []  # per internal track: frame -> detected record
    first_seen: dict[int, list[int]] = {}  # frame -> internal tracks that start there
    for t, faces in enumerate(frames):
        faces = list(faces)
        wrong = sorted({face.frame_index for face in faces} - {t})
        if wrong:
            raise TrackingError(
                f"frames[{t}] holds records with frame_index {wrong}; pass one list per frame of the batch, in order"
            )
        live = [k for k, seen in enumerate(sightings) if t - next(reversed(seen)) - 1 <= max_gap]
        pairs = _match([sightings[k] for k in live], faces, t) if live and faces else []
        matched = set()
        for row, col in pairs:
            sightings[live[row]][t] = faces[col]
            matched.add(col)
        for col, face in enumerate(faces):
            if col not in matched:
                first_seen.setdefault(t, []).append(len(sightings))
                sightings.append({t: face})

    numbered: list[int] = []
    for t in sorted(first_seen):
        starters = {id(sightings[k][t]): k for k in first_seen[t]}
        numbered += [starters[id(face)] for face in order_faces([sightings[k][t] for k in first_seen[t]], order)]
    tracks = [_filled_track(track_id, sightings[k]) for track_id, k in enumerate(numbered)]
    logger.debug(
        "Tracked %d face(s) over %d frame(s); %d gap frame(s) filled",
        len(tracks), len(frames), sum(len(track.filled_frames) for track in tracks),
    )
    return tracks


def faces_by_frame(tracks: Sequence[Track], frame_count: int) -> list[list[tuple[int, FaceRecord]]]:
    """Per frame 0..frame_count-1, (track_id, record) of each track present there, in the order of `tracks`."""
    out: list[list[tuple[int, FaceRecord]]] = [[] for _ in range(frame_count)]
    for track in tracks:
        for frame, face in track.faces.items():
            if frame >= frame_count:
                raise TrackingError(f"Track {track.track_id} reaches frame {frame}, beyond the {frame_count} frame(s)")
            out[frame].append((track.track_id, face))
    return out


def smooth_tracks(tracks: Sequence[Track], *, smoothing: float = 1.0) -> list[Track]:
    """Each track with its landmarks and box smoothed over time (scores, frames and ids unchanged).

    Local quadratic regression in a Gaussian window over each of `Track.segments()` (never across a scene cut or
    a hole), in the face's own motion coordinates (`motion_coordinates`: where the face is, its size and turn,
    and where each point sits on it), each window chosen from the segment's own detections (`choose_sigma`) and
    multiplied by `smoothing`: 1 is that choice, 0 off, others scale it. A face that moves fast keeps a narrow
    window for its position, while its shape, which hardly changes, is averaged over many frames. Zero lag on
    steady and accelerating motion; a segment shorter than `MIN_SEGMENT_FRAMES` is left as detected. Smoothed
    records lose their alignment fields (align afterwards) and keep their frame fingerprint.
    """
    if smoothing == 0.0:
        return list(tracks)
    out = []
    for track in tracks:
        motion = motion_coordinates(track.series())
        smoothed = from_motion_coordinates(
            smooth_series(motion, track.segments(), smoothing=smoothing, sigma_frames=None))
        faces = {frame: _with_vector(face, row) for (frame, face), row in zip(track.faces.items(), smoothed)}
        out.append(Track(track.track_id, faces, track.detected_frames))
    return out


def smooth_series(
    values: np.ndarray,
    segments: Sequence[tuple[int, int]] | None = None,
    *,
    smoothing: float = 1.0,
    sigma_frames: float | None = SMOOTHING_SIGMA_FRAMES,
) -> np.ndarray:
    """Zero-lag smoothing of a per-frame series along its first axis, segment by segment.

    Args:
        values: [T, ...] floats, one row per consecutive frame (for example a track's colour statistics in
            `Track.frames` order).
        segments: half-open (start, stop) row ranges smoothed independently (`Track.segments()`); rows outside
            every segment are returned unchanged. None = one segment of all T rows.
        smoothing: multiplies the window's sigma (0 or more); 0 returns a copy of `values`.
        sigma_frames: Gaussian window sigma in frames at smoothing 1; None chooses it per segment and column from
            the segment's own rows (`choose_sigma`), which then leaves segments under `MIN_SEGMENT_FRAMES` rows
            alone.

    Returns:
        Array of the shape and float dtype of `values` (float64 for integer input).
    """
    values = np.asarray(values)
    if values.ndim < 1:
        raise TrackingError(f"values must be [T, ...] with one row per frame, got shape {values.shape}")
    dtype = values.dtype if np.issubdtype(values.dtype, np.floating) else np.float64
    out = values.astype(np.float64)
    flat = out.reshape(len(values), -1)
    segments = [(0, len(values))] if segments is None else list(segments)
    covered = np.zeros(len(values), dtype=bool)
    for start, stop in segments:
        if not 0 <= start < stop <= len(values) or covered[start:stop].any():
            raise TrackingError(f"segment {(start, stop)} is empty, overlaps another or leaves the {len(values)} rows")
        covered[start:stop] = True
        if sigma_frames is not None:
            sigmas = np.full(flat.shape[1], smoothing * sigma_frames)
        elif stop - start >= MIN_SEGMENT_FRAMES:
            sigmas = smoothing * choose_sigma(flat[start:stop])
        else:
            continue
        if stop - start < 2:
            continue
        for sigma in np.unique(sigmas[sigmas >= MIN_SIGMA_FRAMES]):  # columns that share a window, fitted together
            columns = np.flatnonzero(sigmas == sigma)
            flat[start:stop, columns] = _local_quadratic(flat[start:stop, columns], float(sigma))[0]
    return out.astype(dtype, copy=False)


def choose_sigma(y: np.ndarray) -> np.ndarray:
    """For each column of `y` [n, D], the window sigma (frames) among `SIGMA_CHOICES_FRAMES` whose local quadratic
    fit best predicts each row from the others (leave-one-out cross-validation, exact for this linear smoother: a
    row's own residual divided by 1 - its own weight), or 0 (no smoothing) where the narrowest window predicts
    best: there the rows hold no noise a window could average away (or move faster than any window follows). The
    data set the amount: wide windows where the column is still or the detector noisy, narrow ones where it moves
    fast. Returns [D] floats."""
    fits = [_local_quadratic(y, sigma) for sigma in SIGMA_CHOICES_FRAMES]
    # A row its own fit passes through (an edge row of a narrow window, which holds as many points as the quadratic
    # has coefficients) has no leave-one-out prediction: its own weight is 1 up to rounding, and the residual over
    # 1 - weight is 0/0 or noise. Such rows are left out of every window's score alike.
    scored = np.all([1.0 - own_weight > LOO_MIN_SHARE for _fitted, own_weight in fits], axis=0)
    errors = [(((y - fitted)[scored] / (1.0 - own_weight[scored, None])) ** 2).sum(axis=0)
              for fitted, own_weight in fits]
    best = np.argmin(np.stack(errors), axis=0)  # the first (narrowest) of equals
    return np.where(best == 0, 0.0, np.asarray(SIGMA_CHOICES_FRAMES)[best])


def motion_coordinates(series: np.ndarray) -> np.ndarray:
    """A track's series [T, 14] (`Track.series`) in the face's own motion coordinates [T, 18]: where it is (the
    centroid x, y of its seven points: five landmarks, two box corners), how large and how turned it is (log scale
    and angle, least squares against the track's mean shape), then where each point sits on it (x, y in the face's
    own frame). Position, size and turn carry the motion, each averaged over seven points' noise; the shape in the
    face's frame changes far more slowly (an expression, a turn of the head), so it can be averaged over many frames
    while a fast move keeps a narrow window. Exactly undone by `from_motion_coordinates`, whatever is done to each
    column in between."""
    points = series.reshape(len(series), 7, 2)
    centroid = points.mean(axis=1, keepdims=True)
    offsets = points - centroid
    reference = offsets.mean(axis=0)  # the track's mean shape: sizes and turns are measured against it
    # Least-squares similarity taking the reference to each frame's offsets: a + ib = sum(conj(r) o) / sum(|r|^2).
    ref_c, off_c = reference[:, 0] + 1j * reference[:, 1], offsets[..., 0] + 1j * offsets[..., 1]
    similarity = (np.conj(ref_c) * off_c).sum(axis=1) / max(float((np.abs(ref_c) ** 2).sum()), 1e-12)
    similarity = np.where(np.abs(similarity) > 1e-12, similarity, 1.0)  # a degenerate face: no turn, unit scale
    angle = np.unwrap(np.angle(similarity))
    shape = off_c / similarity[:, None]  # the offsets in the face's own frame
    return np.column_stack([centroid[:, 0], np.log(np.abs(similarity)), angle, shape.real, shape.imag])


def from_motion_coordinates(motion: np.ndarray) -> np.ndarray:
    """The series [T, 14] that `motion` [T, 18] (`motion_coordinates`) describes."""
    similarity = np.exp(motion[:, 2] + 1j * motion[:, 3])
    offsets = similarity[:, None] * (motion[:, 4:11] + 1j * motion[:, 11:18])
    points = np.stack([offsets.real, offsets.imag], axis=-1) + motion[:, None, 0:2]
    return points.reshape(len(motion), 14)


def _local_quadratic(y: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-weighted local polynomial fit (degree 2, or 1 for two rows) of y [n, D] evaluated at each row, and
    the weight each row has in its own fitted value [n]."""
    n = len(y)
    degree = min(2, n - 1)
    # +-3 sigma holds 99.7 % of the weight; at least `degree` neighbours on each side keep the fit determined.
    radius = min(n - 1, max(degree, math.ceil(3 * sigma)))
    # Weighted moments S_p = sum w k^p and sums T_p = sum w k^p y over the window offsets k, for every row.
    moments = np.zeros((n, 2 * degree + 1))
    sums = np.zeros((n, degree + 1, y.shape[1]))
    rows = np.arange(n)
    for k in range(-radius, radius + 1):
        inside = (rows + k >= 0) & (rows + k < n)
        w = math.exp(-0.5 * (k / sigma) ** 2)
        powers = w * float(k) ** np.arange(2 * degree + 1)
        moments[inside] += powers
        sums[inside] += powers[: degree + 1, None] * y[rows[inside] + k][:, None, :]
    normal = moments[:, np.arange(degree + 1)[:, None] + np.arange(degree + 1)[None, :]]  # [n, d+1, d+1] Hankel
    inverse = np.linalg.inv(normal)
    # A row's own weight: its window weight (1 at offset 0, where k^p is 0 but for p = 0) through the first row.
    return np.einsum("nij,njd->nid", inverse[:, :1], sums)[:, 0, :], inverse[:, 0, 0]


def _filled_track(track_id: int, seen: dict[int, FaceRecord]) -> Track:
    """A track from its detections, with each gap between sightings filled by cubic Hermite interpolation."""
    frames = sorted(seen)
    vectors = np.stack([_as_vector(seen[f]) for f in frames])
    faces = dict(seen)
    for i in range(len(frames) - 1):
        t1, t2 = frames[i], frames[i + 1]
        if t2 - t1 < 2:
            continue
        m1, m2 = _tangent(frames, vectors, i), _tangent(frames, vectors, i + 1)
        dt = t2 - t1
        for t in range(t1 + 1, t2):
            s = (t - t1) / dt
            h00, h10, h01, h11 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s, -2 * s**3 + 3 * s**2, s**3 - s**2
            vector = h00 * vectors[i] + h10 * dt * m1 + h01 * vectors[i + 1] + h11 * dt * m2
            score = (1 - s) * seen[t1].score + s * seen[t2].score
            faces[t] = dataclasses.replace(_with_vector(seen[t1], vector), frame_index=t, score=score,
                                           frame_fingerprint=None)
    return Track(track_id, faces, frozenset(frames))


def _tangent(frames: Sequence[int], vectors: np.ndarray, i: int) -> np.ndarray:
    """Velocity (per frame) at sighting i: the slope there of a least-squares parabola (a line if only two
    sightings) through the sightings within its larger spacing to a neighbour, on both sides. Exact on quadratic
    motion, and it averages the noise of several frames, unlike the three-point derivative (filled frames come
    out within the detector's own noise instead of 1.6x it; see benchmarks/bench_steadiness.py)."""
    times = np.asarray(frames, dtype=np.float64) - frames[i]
    reach = max(abs(times[max(i - 1, 0)]), abs(times[min(i + 1, len(frames) - 1)]))
    near = np.abs(times) <= reach
    return np.polyfit(times[near], vectors[near], min(2, int(near.sum()) - 1))[-2]


def _match(histories: Sequence[dict[int, FaceRecord]], faces: Sequence[FaceRecord], t: int) -> list[tuple[int, int]]:
    """(history position, face position) pairs of a minimum-cost assignment of `faces` (frame t) to tracks."""
    dets = np.stack([_as_vector(face) for face in faces])  # [m, 14]
    hypotheses, gaps = [], []
    for seen in histories:
        recent = list(itertools.islice(reversed(seen.items()), VELOCITY_SIGHTINGS))[::-1]  # O(1) on long tracks
        times = np.array([frame for frame, _ in recent], dtype=np.float64)
        points = np.stack([_as_vector(face) for _, face in recent])
        predicted = points[-1]
        if len(recent) >= 2:
            slope, intercept = np.polyfit(times - times[-1], points, 1)
            predicted = intercept + slope * (t - times[-1])
        hypotheses.append(np.stack([predicted, points[-1]]))
        gaps.append(t - times[-1] - 1)
    hyp = np.stack(hypotheses)[:, :, None, :]  # [n, 2, 1, 14]
    det = dets[None, None]  # [1, 1, m, 14]
    size_h, size_d = _box_sizes(hyp[..., 10:]), _box_sizes(det[..., 10:])
    scale = np.sqrt(size_h * size_d)
    offsets = (hyp[..., :10] - det[..., :10]).reshape(*np.broadcast_shapes(hyp.shape, det.shape)[:3], 5, 2)
    distance = np.linalg.norm(offsets, axis=-1).mean(axis=-1) / scale  # [n, 2, m]
    grow = 1 + GAP_GATE_GROWTH * np.array(gaps)[:, None, None]
    size_change = np.abs(np.log(size_h / size_d))
    admissible = (distance <= LANDMARK_GATE * grow) & (size_change <= math.log(SIZE_RATIO_GATE) * grow)
    cost = np.where(admissible, distance + IOU_COST_WEIGHT * (1 - _iou(hyp[..., 10:], det[..., 10:])), np.inf)
    return min_cost_assignment(cost.min(axis=1))  # [n, m]: the better of prediction and last sighting


def _is_cut(a: FaceRecord, b: FaceRecord) -> bool:
    size_a, size_b = max(a.box_size, 1.0), max(b.box_size, 1.0)
    jump = np.linalg.norm(np.mean(a.landmarks_xy, axis=0) - np.mean(b.landmarks_xy, axis=0))
    return bool(jump > CUT_JUMP_FACE_SIZES * math.sqrt(size_a * size_b)
                or max(size_a, size_b) > CUT_SIZE_RATIO * min(size_a, size_b))


def _as_vector(face: FaceRecord) -> np.ndarray:
    return np.array([*np.ravel(face.landmarks_xy), *face.box_xyxy], dtype=np.float64)


def _with_vector(face: FaceRecord, vector: np.ndarray) -> FaceRecord:
    """`face` moved to the landmarks and box in `vector` (see `Track.series`), without its (now stale) alignment."""
    return dataclasses.replace(
        face, landmarks_xy=tuple(map(tuple, vector[:10].reshape(5, 2))), box_xyxy=tuple(vector[10:]),
        crop_size=None, template=None, affine_crop_from_image=None,
    )


def _box_sizes(boxes: np.ndarray) -> np.ndarray:
    """Geometric mean of width and height of boxes [..., 4] (xyxy), at least a pixel (degenerate boxes)."""
    width, height = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    return np.sqrt(np.maximum(width, 1.0) * np.maximum(height, 1.0))


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of boxes a [..., 4] and b [..., 4] (xyxy, broadcast)."""
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = width * height
    area_a, area_b = ((np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)) for x in (a, b))
    return inter / np.maximum(area_a + area_b - inter, 1e-9)
