"""Which faces are restored: orders, `face_index` positions, `max_faces` and the size limit, on photos' faces and
on tracks (`face_utils.selection`, the one implementation of these rules)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from comfyui_gpen_restore.face_utils import FaceRecord
from comfyui_gpen_restore.face_utils.selection import order_faces, parse_index_spec, pick, select_tracks
from comfyui_gpen_restore.face_utils.tracking import assign_tracks, faces_by_frame
from support import NOISE, place


def _record(x: float, y: float, size: float, score: float) -> FaceRecord:
    layout = ((0.3, 0.4), (0.7, 0.4), (0.5, 0.6), (0.35, 0.8), (0.65, 0.8))
    landmarks = [(x + size * u, y + size * v) for u, v in layout]
    return FaceRecord(0, (1000, 1000), (x, y, x + size, y + size), score, landmarks)


def test_orders_and_ties():
    a, b, c = _record(500, 10, 50, 0.91), _record(10, 600, 200, 0.99), _record(300, 300, 100, 0.95)
    faces = [a, b, c]
    assert order_faces(faces, "largest") == [b, c, a]
    assert order_faces(faces, "left_to_right") == [b, c, a]
    assert order_faces(faces, "top_to_bottom") == [a, c, b]
    assert order_faces(faces, "best_score") == [b, c, a]
    twin = _record(500, 10, 50, 0.5)
    assert order_faces([a, twin], "largest") == [a, twin]  # ties keep input order
    assert pick([], "0") == []


def test_positions_in_the_order_written_each_once():
    items = ["a", "b", "c"]
    assert pick(items, "0") == ["a"]
    assert pick(items, "0,2") == ["a", "c"]
    assert pick(items, " 2 , 0 ") == ["c", "a"]
    assert pick(items, "-1") == ["c"]
    assert pick(items, "1, -2, 1") == ["b"]
    assert pick(items, "all") == items


def test_out_of_range_indices_are_ignored_with_a_warning(caplog):
    faces = [_record(10, 10, 50, 0.9), _record(100, 10, 60, 0.9)]
    with caplog.at_level(logging.WARNING, logger="comfyui_gpen_restore.face_utils.selection"):
        chosen = pick(order_faces(faces, "left_to_right"), "1,5,-3")
    assert chosen == [faces[1]]
    assert "[5, -3]" in caplog.text and "2 face(s)" in caplog.text


@pytest.mark.parametrize("spec, expected", [
    ("all", None), ("ALL", None), ("", None), ("  ", None), ("0", [0]), ("0,2", [0, 2]), (" 0 , 2 ", [0, 2]),
    ("-1", [-1]), ("3,3", [3, 3]),
])
def test_parse_index_spec(spec, expected):
    assert parse_index_spec(spec) == expected


@pytest.mark.parametrize("spec", ["0;2", "a", "1-3", "0,,2", "0,", "1.5", "first"])
def test_malformed_index_spec_shows_syntax(spec):
    with pytest.raises(ValueError, match="'0,2'"):
        pick([], spec)


def test_select_tracks_by_id_count_and_median_size(grace_face, caplog):
    rng = np.random.default_rng(8)
    frames = []
    for t in range(20):
        flicker = 0.30 if t % 3 else 0.36  # a face whose size hovers around the limit
        frames.append([place(grace_face, t, (500, 500), scale=0.8), place(grace_face, t, (1000, 500), scale=flicker),
                       place(grace_face, t, (1500, 500), scale=0.5, noise=NOISE, rng=rng)])
    tracks = assign_tracks(frames)  # ids by size: 0 = 0.8, 1 = 0.5, 2 = the flickering one
    limit = 0.33 * grace_face.box_size
    assert [t.track_id for t in select_tracks(tracks, min_face_size=limit)] == [0, 1]
    assert [t.track_id for t in select_tracks(tracks, index="2, 0")] == [2, 0]
    assert [t.track_id for t in select_tracks(tracks, index="-1")] == [2]
    assert [t.track_id for t in select_tracks(tracks, max_faces=2)] == [0, 1]
    with caplog.at_level(logging.WARNING):
        assert [t.track_id for t in select_tracks(tracks, index="1, 7")] == [1]
    assert "[7]" in caplog.text
    with pytest.raises(ValueError, match="not understood"):
        select_tracks(tracks, index="first")
    per_frame = faces_by_frame(select_tracks(tracks, index="1"), 20)
    assert all([tid for tid, _ in faces] == [1] for faces in per_frame)
