"""Pasting frame by frame with each person's colour correction smoothed over time (face_utils.paste_stream)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from support import DETECTOR, DETECTOR_FILE, read_rgb

from comfyui_gpen_restore.face_utils import PasteSettings, align_face, load_detector, warp_face
from comfyui_gpen_restore.face_utils.paste_stream import COLOUR_WINDOW_FRAMES, PasteStream

FRAMES = 12
# Frame-to-frame wobble of the original's exposure (sensor noise, compression): every other frame 4 % brighter.
WOBBLE = 0.04


@pytest.fixture(scope="module")
def scene(fixtures_dir):
    image = read_rgb(fixtures_dir / "images" / "grace_hopper.jpg")
    detector = load_detector(DETECTOR, fixtures_dir / "facedetection")
    assert (fixtures_dir / "facedetection" / DETECTOR_FILE).is_file()
    (found,) = detector.detect(image)
    face = dataclasses.replace(align_face(found, crop_size=256), track_id=0)
    # A deliberately different colour than the original, so colour correction has work to do.
    crop = np.clip(warp_face(image, face) * np.array([0.8, 1.0, 1.15], np.float32), 0, 1)
    return image, face, crop


def wobbling(image: np.ndarray, t: int) -> np.ndarray:
    return np.clip(image * (1 + WOBBLE * (t % 2)), 0, 1).astype(np.float32)


def run_stream(scene, *, smooth: bool, shots=((0, FRAMES),), frames: int = FRAMES):
    image, face, crop = scene
    out: list[tuple[int, np.ndarray, np.ndarray | None]] = []
    stream = PasteStream(PasteSettings(), lambda i, f, m: out.append((i, f, m)), shots=shots, smooth=smooth)
    waiting = []
    for t in range(frames):
        stream.push(t, wobbling(image, t), [crop], [dataclasses.replace(face, frame_index=t)])
        waiting.append(t + 1 - len(out))
    stream.finish()
    return out, waiting


def face_means(out, mask_threshold=0.99):
    means = []
    for _index, frame, mask in out:
        means.append(frame[mask > mask_threshold].mean(axis=0))
    return np.array(means)


def test_colour_correction_follows_each_persons_steady_colour_not_the_frames_wobble(scene):
    steady, waiting = run_stream(scene, smooth=True)
    raw, _ = run_stream(scene, smooth=False)
    assert [i for i, _f, _m in steady] == list(range(FRAMES)) == [i for i, _f, _m in raw]
    # Frame-to-frame change of the face's mean colour, in the middle of the sequence (full windows).
    middle = slice(COLOUR_WINDOW_FRAMES, FRAMES - COLOUR_WINDOW_FRAMES)
    flicker_raw = np.abs(np.diff(face_means(raw)[middle], axis=0)).mean()
    flicker_steady = np.abs(np.diff(face_means(steady)[middle], axis=0)).mean()
    assert flicker_raw > 0.001 and flicker_steady < flicker_raw / 3
    # Bounded memory: never more than the window's frames wait.
    assert max(waiting) <= COLOUR_WINDOW_FRAMES + 1


def test_colour_smoothing_never_crosses_a_shot_boundary(scene):
    cut = 6
    two_shots, _ = run_stream(scene, smooth=True, shots=((0, cut), (cut, FRAMES)))
    first_only, _ = run_stream(scene, smooth=True, shots=((0, cut),), frames=cut)
    for (_i, frame, _m), (_j, alone, _n) in zip(two_shots[:cut], first_only):
        np.testing.assert_array_equal(frame, alone)  # exact: the same operations on the same data, on any CPU


def test_without_smoothing_every_frame_is_pasted_as_a_photo_is(scene):
    from comfyui_gpen_restore.face_utils import paste_faces

    image, face, crop = scene
    out, waiting = run_stream(scene, smooth=False, frames=3)
    assert waiting == [0, 0, 0]  # nothing waits
    for t, frame, mask in out:
        expected, expected_mask = paste_faces(wobbling(image, t), [crop], [face], PasteSettings())
        np.testing.assert_array_equal(frame, expected)  # exact: the same calls as paste_faces makes
        np.testing.assert_array_equal(mask, expected_mask)
