"""Core ComfyUI's face landmarks (FACE_LANDMARKS, MediaPipe Face Mesh) as a face source: the five points are
picked and put in image order whatever the face's tilt or mirroring, and a face given as a mesh is found, tracked
and aligned exactly as the same face from our detector."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from comfyui_gpen_restore.face_utils.face_set import DetectSettings
from comfyui_gpen_restore.face_utils.landmark_faces import LandmarkFaces, five_points
from comfyui_gpen_restore.face_utils.pipeline import detect_faces
from support import face_landmarks, face_mesh, image_batch

# An upright face's five points in image order (left eye, right eye, nose, left and right mouth corner).
UPRIGHT = np.array([[100.0, 100.0], [160.0, 100.0], [130.0, 135.0], [108.0, 165.0], [152.0, 165.0]])


def rotated(points: np.ndarray, degrees: float) -> np.ndarray:
    turn = np.deg2rad(degrees)
    matrix = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    centre = points.mean(axis=0)
    return (points - centre) @ matrix.T + centre


@pytest.mark.parametrize("degrees", [0, 35, 90, -120, 180])
@pytest.mark.parametrize("swap_sides", [False, True])
def test_five_points_come_in_image_order_at_any_tilt_and_naming(degrees, swap_sides):
    expected = rotated(UPRIGHT, degrees)
    np.testing.assert_array_equal(five_points(face_mesh(expected, swap_sides=swap_sides)), expected)


def test_a_face_given_as_landmarks_is_aligned_as_the_detected_one(grace, grace_face):
    """The whole detection pipeline (tracking, selection, smoothing, alignment) over two frames, from the mesh and
    from our detector's own record: the same aligned faces."""
    settings = DetectSettings(crop_size=512, score_threshold=0.99)  # core's faces are taken as core chose them
    image = image_batch(grace, grace)
    source = LandmarkFaces(face_landmarks([[grace_face], [grace_face]], grace.shape[:2]))
    given = detect_faces(image, source, settings)

    class Detected:
        name = "the fixture detector"

        def detect(self, frame, *, frame_index, **_):
            return [dataclasses.replace(grace_face, frame_index=frame_index)]

    found = detect_faces(image, Detected(), settings)
    assert len(given) == 2 and given.detector == source.name
    for a, b in zip(given, found):
        assert a.frame_index == b.frame_index and a.track_id == b.track_id == 0
        np.testing.assert_allclose(a.landmarks_xy, b.landmarks_xy, rtol=0, atol=1e-9)
        np.testing.assert_allclose(a.affine, b.affine, rtol=0, atol=1e-9)


def test_frames_without_faces_give_none(grace):
    source = LandmarkFaces(face_landmarks([[]], grace.shape[:2]))
    assert source.detect(grace, frame_index=0) == []


@pytest.mark.parametrize("payload, message", [
    ("not landmarks", "FACE_LANDMARKS"),
    ({"frames": [[]], "image_size": (300, 256)}, "found on 256x300 pictures, this image is 512x600"),
    ({"frames": [], "image_size": (600, 512)}, "hold 0 frame"),
    ({"frames": [[{"landmarks_xy": np.zeros((68, 2)), "bbox_xyxy": np.zeros(4), "score": 1.0}]],
      "image_size": (600, 512)}, "478 face-mesh landmarks"),
])
def test_landmarks_of_other_pictures_are_refused_clearly(grace, payload, message):
    with pytest.raises(ValueError, match=message):
        LandmarkFaces(payload).detect(grace, frame_index=0)
