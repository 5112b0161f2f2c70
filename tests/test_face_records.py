"""FaceRecord: immutability, normalisation, JSON round trip, alignment state."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from comfyui_gpen_restore.face_utils import FaceRecord, FaceRecordError, align_face

LANDMARKS = ((100.0, 120.0), (140.0, 121.0), (120.0, 145.0), (104.0, 165.0), (137.0, 166.0))


def make_face(**overrides) -> FaceRecord:
    fields = dict(
        frame_index=0, image_size_hw=(300, 400), box_xyxy=(80.0, 90.0, 160.0, 190.0), score=0.99,
        landmarks_xy=LANDMARKS,
    )
    fields.update(overrides)
    return FaceRecord(**fields)


def test_numpy_inputs_are_normalised_to_python_numbers():
    face = make_face(
        frame_index=np.int64(3), image_size_hw=np.array([300, 400]), box_xyxy=np.array([80, 90, 160, 190.5]),
        score=np.float32(0.5), landmarks_xy=np.array(LANDMARKS, dtype=np.float32),
    )
    assert type(face.frame_index) is int and face.frame_index == 3
    assert face.image_size_hw == (300, 400) and all(type(v) is int for v in face.image_size_hw)
    assert face.box_xyxy == (80.0, 90.0, 160.0, 190.5) and all(type(v) is float for v in face.box_xyxy)
    assert type(face.score) is float
    assert face.landmarks_xy == LANDMARKS
    assert face == make_face(frame_index=3, box_xyxy=(80, 90, 160, 190.5), score=float(np.float32(0.5)))


def test_records_are_frozen_and_hashable():
    face = make_face()
    with pytest.raises(dataclasses.FrozenInstanceError):
        face.score = 0.1  # type: ignore[misc]
    assert len({face, make_face()}) == 1


def test_json_round_trip_unaligned_and_aligned():
    for face in (make_face(), align_face(make_face(), crop_size=512)):
        text = face.to_json()
        assert json.loads(text) == face.to_dict()
        assert FaceRecord.from_json(text) == face
        assert FaceRecord.from_dict(face.to_dict()) == face


def test_affine_requires_alignment():
    face = make_face()
    assert not face.is_aligned
    with pytest.raises(FaceRecordError, match="align_face"):
        _ = face.affine
    aligned = align_face(face, crop_size=256)
    assert aligned.is_aligned and aligned.affine.shape == (2, 3) and aligned.affine.dtype == np.float64
    assert (aligned.crop_size, aligned.template) == (256, "gpen")


def test_with_frame_copies_everything_else():
    aligned = align_face(make_face(), crop_size=512)
    moved = aligned.with_frame(7)
    assert moved.frame_index == 7
    assert dataclasses.replace(moved, frame_index=0) == aligned


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"landmarks_xy": LANDMARKS[:4]}, "5"),
        ({"box_xyxy": (1.0, 2.0, 3.0)}, "box_xyxy"),
        ({"image_size_hw": (0, 10)}, "image_size_hw"),
        ({"score": float("nan")}, "finite"),
        ({"frame_index": 1.5}, "frame_index"),
        ({"crop_size": 512}, "together"),
    ],
)
def test_malformed_records_raise(overrides, message):
    with pytest.raises(FaceRecordError, match=message):
        make_face(**overrides)


def test_from_json_rejects_bad_documents():
    with pytest.raises(FaceRecordError, match="not valid JSON"):
        FaceRecord.from_json("{")
    with pytest.raises(FaceRecordError, match="missing"):
        FaceRecord.from_json('{"frame_index": 0}')
    d = make_face().to_dict()
    d["colour"] = "red"
    with pytest.raises(FaceRecordError, match="unknown keys"):
        FaceRecord.from_dict(d)


def test_box_size_is_geometric_mean():
    assert make_face(box_xyxy=(0, 0, 40, 90)).box_size == pytest.approx(60.0)  # sqrt(3600), to float rounding
