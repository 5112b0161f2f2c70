"""Which faces are restored: the order they are numbered in, `face_index` and `max_faces`.

The one implementation of these rules. Tracking numbers each shot's people with `order_faces` (in the frame each
first appears), and `select_tracks` picks among them once per shot, so a person is restored in every frame or in
none; a single photo is a shot of one frame, so there `face_index` counts faces in `order`. The settings are
checked by `face_set.DetectSettings`, their one owner; the functions here take them as checked.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Protocol, TypeVar

from .records import FaceRecord

logger = logging.getLogger(__name__)

Item = TypeVar("Item")


class Person(Protocol):
    """What selection reads of a person followed through a shot (`tracking.Track`)."""

    track_id: int

    @property
    def median_box_size(self) -> float: ...


P = TypeVar("P", bound=Person)

# Sort keys of `choices.ORDERS`: largest box area first, box centre left to right or top to bottom, best score first.
_ORDER_KEYS = {
    "largest": lambda face: -_box_area(face),
    "left_to_right": lambda face: (face.box_xyxy[0] + face.box_xyxy[2]) / 2,
    "top_to_bottom": lambda face: (face.box_xyxy[1] + face.box_xyxy[3]) / 2,
    "best_score": lambda face: -face.score,
}
_INDEX_SPEC = re.compile(r"^\s*-?\d+\s*(,\s*-?\d+\s*)*$")


def order_faces(faces: Sequence[FaceRecord], order: str) -> list[FaceRecord]:
    """`faces` sorted by `order` (one of `choices.ORDERS`); ties keep the input order."""
    return sorted(faces, key=_ORDER_KEYS[order])


def parse_index_spec(index: str) -> list[int] | None:
    """The positions a `face_index` spec names ("0", "0, 2", "-1" = the last), or None for "all" (or empty).
    Raises ValueError showing the syntax for anything else."""
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


def pick(items: Sequence[Item], index: str) -> list[Item]:
    """The items at the positions `index` names (see `parse_index_spec`), in the order written, each at most once;
    all of them for "all". Negative positions count from the end. Positions beyond the items are logged and
    ignored: how many faces a picture holds is not known in advance."""
    positions = parse_index_spec(index)
    if positions is None:
        return list(items)
    count = len(items)
    missing = [p for p in positions if not -count <= p < count]
    if missing:
        logger.warning("Face index %s not found: only %d face(s) (positions 0..%d); ignoring them",
                       missing, count, count - 1)
    wanted = dict.fromkeys(p % count for p in positions if -count <= p < count)
    return [items[p] for p in wanted]


def select_tracks(tracks: Sequence[P], *, index: str = "all", max_faces: int = 0,
                  min_face_size: float = 0.0) -> list[P]:
    """The tracks to restore: those `index` names by track id (tracks are numbered 0, 1, ... in `order` by
    `tracking.assign_tracks`), less those whose `median_box_size` is under `min_face_size` pixels (per track, so a
    face near the limit is not restored in some frames only), then the first `max_faces` of them (0 = all)."""
    chosen = pick(sorted(tracks, key=lambda track: track.track_id), index)
    large = [track for track in chosen if track.median_box_size >= min_face_size]
    if len(large) < len(chosen):
        logger.info("%d track(s) smaller than %g px dropped", len(chosen) - len(large), min_face_size)
    return large[:max_faces] if max_faces else large


def _box_area(face: FaceRecord) -> float:
    x0, y0, x1, y1 = face.box_xyxy
    return max(x1 - x0, 0.0) * max(y1 - y0, 0.0)
