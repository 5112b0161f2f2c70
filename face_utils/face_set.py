"""What the face pipeline's steps hand each other: the detection settings (`DetectSettings`, the one owner of their
rules), the faces found (`FaceSet`, what flows through the `GPEN_FACES` socket), and the error for inputs that do
not fit together (`FaceInputError`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .choices import DEFAULT_MAX_GAP, ORDERS, TEMPLATES
from .records import FaceRecord
from .selection import parse_index_spec


class FaceInputError(ValueError):
    """Inputs that do not fit together (crop and face counts, another picture, too many crops); the message
    names the fix."""


@dataclass(frozen=True)
class DetectSettings:
    """How faces are found and cut out; checked on construction (the one owner of these rules).

    `score_threshold` in (0, 1]; `crop_size` is the aligned crop side in pixels (the GPEN model's size); `template`
    one of `face_utils.TEMPLATES`. Faces are tracked through each shot of a batch (see `face_utils.tracking`):
    `order` numbers the tracks, `index` picks them by track id and `max_faces` keeps the first of them, once per
    shot, so a person is restored in every frame or in none; `min_face_size` (frame pixels, 0 keeps every face)
    applies to a track's median size. `smoothing` scales the temporal smoothing of landmarks (1 = the window each
    track's own detections choose, 0 = off; see `tracking.smooth_tracks`) and
    `max_gap` is the number of missed frames a track survives, filled by interpolation. `detection_size` is the
    long side of the copy the detector sees (0 = full resolution, tiled when large; see `FaceDetector.detect`).
    """

    crop_size: int = 512
    template: str = "gpen"
    score_threshold: float = 0.9
    order: str = "largest"
    index: str = "all"
    max_faces: int = 0
    min_face_size: float = 0.0
    smoothing: float = 1.0
    max_gap: int = DEFAULT_MAX_GAP
    detection_size: int = 0

    def __post_init__(self) -> None:
        parse_index_spec(self.index)
        if not 0.0 < self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in (0, 1], got {self.score_threshold}")
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        if self.max_faces < 0:
            raise ValueError(f"max_faces must be 0 (no limit) or more, got {self.max_faces}")
        if self.min_face_size < 0:
            raise ValueError(f"min_face_size must be 0 (keep every face) or more pixels, got {self.min_face_size}")
        if self.crop_size < 8:
            raise ValueError(f"crop_size must be at least 8 pixels, got {self.crop_size}")
        if self.template not in TEMPLATES:
            raise ValueError(f"template must be one of {TEMPLATES}, got {self.template!r}")
        if not 0.0 <= self.smoothing <= 4.0:
            raise ValueError(f"smoothing must be between 0 (off) and 4, got {self.smoothing}")
        if self.max_gap < 0:
            raise ValueError(f"max_gap must be 0 (no gap filling) or more frames, got {self.max_gap}")
        if self.detection_size < 0:
            raise ValueError(f"detection_size must be 0 (full resolution) or a long side in pixels, got "
                             f"{self.detection_size}")


@dataclass(frozen=True)
class FaceSet:
    """What flows through a `GPEN_FACES` socket: the chosen, aligned faces of a batch (possibly none).

    `faces` are in frame order, each frame's faces in the selection order; `found` counts every face the
    detector reported before `face_index`/`max_faces` chose among them; `shots` are the half-open frame ranges
    the batch was split into (tracks and smoothing stay inside one); `smoothing` is the temporal smoothing the
    faces were found with (paste-back smooths colour correction the same way, 0 = not at all).
    """

    faces: tuple[FaceRecord, ...]
    frame_count: int
    crop_size: int
    detector: str
    found: int
    shots: tuple[tuple[int, int], ...] = ()
    smoothing: float = 0.0

    def __len__(self) -> int:
        return len(self.faces)

    def __iter__(self) -> Iterator[FaceRecord]:
        return iter(self.faces)

    def positions_by_frame(self) -> dict[int, list[int]]:
        """frame index -> positions in `faces` (and so in the crop batch) of that frame's faces."""
        positions: dict[int, list[int]] = {}
        for position, face in enumerate(self.faces):
            positions.setdefault(face.frame_index, []).append(position)
        return positions

    def summary(self) -> str:
        """One sentence for the log: what was found, what was kept."""
        found = f"{self.detector} found {self.found} face(s) in {self.frame_count} frame(s)"
        if self.found == len(self.faces):
            return found
        return f"{found}; face_index/max_faces kept {len(self.faces)}"
