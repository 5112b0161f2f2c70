"""One immutable record per detected face, passed between the detect, align, restore and paste steps."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
"""Order of `FaceRecord.landmarks_xy`; left/right as seen in the image (the subject's right eye is `left_eye`)."""


class FaceRecordError(ValueError):
    """A face record (or its JSON) is malformed or not aligned where an aligned one is needed."""


Affine2x3 = tuple[tuple[float, float, float], tuple[float, float, float]]


@dataclass(frozen=True)
class FaceRecord:
    """A face found in one frame, and (once aligned) how to cut it out.

    Coordinates are pixels of the frame it was detected on, x to the right and y down, with pixel centres at
    integer coordinates (OpenCV's `warpAffine` convention).

    Attributes:
        frame_index: index of the source frame in its batch.
        image_size_hw: (height, width) of that frame; paste-back derives the canvas scale from it.
        box_xyxy: (x0, y0, x1, y1) face box as the detector gave it; may reach outside the frame for a face cut
            by the border.
        score: detector confidence in 0..1.
        landmarks_xy: five (x, y) points in `LANDMARK_NAMES` order.
        crop_size: side of the square aligned crop in pixels (None until aligned).
        template: name of the alignment template (see `face_utils.alignment.TEMPLATES`; None until aligned).
        affine_crop_from_image: 2x3 similarity mapping frame coordinates to crop coordinates (None until
            aligned).
        frame_fingerprint: `face_utils.images.picture_fingerprint` of the frame, so paste-back can refuse a
            picture the face was not found in (None when unknown).
        track_id: the person this face belongs to across the frames of its shot (see `face_utils.tracking`);
            None when the face was not tracked.
    """

    frame_index: int
    image_size_hw: tuple[int, int]
    box_xyxy: tuple[float, float, float, float]
    score: float
    landmarks_xy: tuple[tuple[float, float], ...]
    crop_size: int | None = None
    template: str | None = None
    affine_crop_from_image: Affine2x3 | None = None
    frame_fingerprint: str | None = None
    track_id: int | None = None

    def __post_init__(self) -> None:
        # Normalise to plain Python numbers so records compare, hash and serialise the same however they were
        # built (numpy scalars, lists).
        set_field = object.__setattr__
        set_field(self, "frame_index", _as_int(self.frame_index, "frame_index"))
        size_hw = tuple(_as_int(v, "image_size_hw") for v in self.image_size_hw)
        if len(size_hw) != 2 or min(size_hw) <= 0:
            raise FaceRecordError(f"image_size_hw must be two positive ints (height, width), got {size_hw}")
        set_field(self, "image_size_hw", size_hw)
        box = tuple(_as_float(v, "box_xyxy") for v in self.box_xyxy)
        if len(box) != 4:
            raise FaceRecordError(f"box_xyxy must hold 4 numbers (x0, y0, x1, y1), got {len(box)}")
        set_field(self, "box_xyxy", box)
        set_field(self, "score", _as_float(self.score, "score"))
        points = tuple((_as_float(p[0], "landmarks_xy"), _as_float(p[1], "landmarks_xy")) for p in self.landmarks_xy)
        if len(points) != len(LANDMARK_NAMES):
            raise FaceRecordError(
                f"landmarks_xy must hold {len(LANDMARK_NAMES)} (x, y) points {LANDMARK_NAMES}, got {len(points)}"
            )
        set_field(self, "landmarks_xy", points)
        aligned_fields = (self.crop_size, self.template, self.affine_crop_from_image)
        if any(v is None for v in aligned_fields) and any(v is not None for v in aligned_fields):
            raise FaceRecordError(
                "crop_size, template and affine_crop_from_image are set together (by align_face) or not at all"
            )
        if self.crop_size is not None:
            set_field(self, "crop_size", _as_int(self.crop_size, "crop_size"))
            set_field(self, "template", str(self.template))
            rows = tuple(
                tuple(_as_float(v, "affine_crop_from_image") for v in row) for row in self.affine_crop_from_image
            )
            if len(rows) != 2 or any(len(row) != 3 for row in rows):
                raise FaceRecordError("affine_crop_from_image must be a 2x3 matrix")
            set_field(self, "affine_crop_from_image", rows)
        if self.track_id is not None:
            set_field(self, "track_id", _as_int(self.track_id, "track_id"))

    @property
    def is_aligned(self) -> bool:
        return self.affine_crop_from_image is not None

    @property
    def affine(self) -> np.ndarray:
        """The 2x3 float64 matrix mapping frame (x, y, 1) to crop (x, y); raises if the face is not aligned."""
        if self.affine_crop_from_image is None:
            raise FaceRecordError(
                "This face is not aligned yet (no affine_crop_from_image): call face_utils.align_face(face, "
                "crop_size=...) first"
            )
        return np.array(self.affine_crop_from_image, dtype=np.float64)

    @property
    def box_size(self) -> float:
        """Geometric mean of the box's width and height in frame pixels (a scale-free "face size")."""
        x0, y0, x1, y1 = self.box_xyxy
        return math.sqrt(max(x1 - x0, 0.0) * max(y1 - y0, 0.0))

    def with_frame(self, frame_index: int) -> FaceRecord:
        """A copy belonging to another frame (for example to reuse one detection across a video batch)."""
        return dataclasses.replace(self, frame_index=frame_index)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists, floats and ints only)."""
        return {
            "frame_index": self.frame_index,
            "image_size_hw": list(self.image_size_hw),
            "box_xyxy": list(self.box_xyxy),
            "score": self.score,
            "landmarks_xy": [list(p) for p in self.landmarks_xy],
            "crop_size": self.crop_size,
            "template": self.template,
            "affine_crop_from_image": (
                None if self.affine_crop_from_image is None else [list(r) for r in self.affine_crop_from_image]
            ),
            "frame_fingerprint": self.frame_fingerprint,
            "track_id": self.track_id,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FaceRecord:
        required = ("frame_index", "image_size_hw", "box_xyxy", "score", "landmarks_xy")
        missing = [k for k in required if k not in d]
        if missing:
            raise FaceRecordError(f"Face record is missing {missing}; expected the keys written by to_dict()")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise FaceRecordError(f"Face record has unknown keys {sorted(unknown)}; expected those of to_dict()")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, s: str) -> FaceRecord:
        try:
            d = json.loads(s)
        except json.JSONDecodeError as exc:
            raise FaceRecordError(f"Face record is not valid JSON: {exc}") from exc
        if not isinstance(d, dict):
            raise FaceRecordError(f"Face record JSON must be an object, got {type(d).__name__}")
        return cls.from_dict(d)


def _as_float(value: Any, field: str) -> float:
    try:
        result = float(value)
    except (TypeError, ValueError) as exc:
        raise FaceRecordError(f"{field} must hold numbers, got {value!r}") from exc
    if not math.isfinite(result):
        raise FaceRecordError(f"{field} must hold finite numbers, got {value!r}")
    return result


def _as_int(value: Any, field: str) -> int:
    try:
        result = int(value)
    except (TypeError, ValueError) as exc:
        raise FaceRecordError(f"{field} must be an integer, got {value!r}") from exc
    if isinstance(value, bool) or result != value:
        raise FaceRecordError(f"{field} must be an integer, got {value!r}")
    return result
