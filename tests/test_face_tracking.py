"""Face tracking over video batches: stable ids, gap filling, zero-lag smoothing, track selection.

Sequences are made from the real landmarks RetinaFace finds on grace_hopper.jpg (detected once per module),
moved along known paths with Gaussian landmark noise, so every expectation is checked against a known truth.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from comfyui_gpen_restore.face_utils import ORDERS, FaceRecord
from comfyui_gpen_restore.face_utils.selection import order_faces
from comfyui_gpen_restore.face_utils.assignment import min_cost_assignment
from comfyui_gpen_restore.face_utils.tracking import (
    SMOOTHING_SIGMA_FRAMES,
    Track,
    TrackingError,
    assign_tracks,
    choose_sigma,
    from_motion_coordinates,
    motion_coordinates,
    smooth_series,
    smooth_tracks,
)
from support import DETECTOR, NOISE, place

def landmarks(face: FaceRecord) -> np.ndarray:
    return np.array(face.landmarks_xy)


def path_error(track: Track, truth: dict[int, FaceRecord]) -> np.ndarray:
    """Per frame of `truth`, the mean landmark distance (pixels) of the track's record from the true one."""
    return np.array([np.linalg.norm(landmarks(track.faces[f]) - landmarks(truth[f]), axis=1).mean() for f in truth])


def jitter(faces: list[FaceRecord]) -> float:
    """RMS frame-to-frame landmark change (pixels)."""
    steps = np.diff(np.stack([landmarks(face) for face in faces]), axis=0)
    return float(np.sqrt(np.mean(np.sum(steps**2, axis=-1))))


def person_of(face: FaceRecord, people: dict[str, dict[int, FaceRecord]]) -> str:
    (name,) = [name for name, faces in people.items() if faces.get(face.frame_index) is face]
    return name


# --- ids ---------------------------------------------------------------------------------------------------------


def test_ids_stable_under_noise_and_shuffled_detector_order(grace_face):
    rng = np.random.default_rng(0)
    people = {"a": {}, "b": {}, "c": {}}
    frames = []
    for t in range(30):
        faces = [
            people["a"].setdefault(t, place(grace_face, t, (500 + 3 * t, 500), scale=0.8, noise=NOISE, rng=rng)),
            people["b"].setdefault(t, place(grace_face, t, (900, 520 - 2 * t), scale=0.6, noise=NOISE, rng=rng)),
            people["c"].setdefault(t, place(grace_face, t, (1300, 500), scale=0.4, noise=NOISE, rng=rng)),
        ]
        frames.append([faces[i] for i in rng.permutation(3)])
    tracks = assign_tracks(frames)
    assert [t.track_id for t in tracks] == [0, 1, 2]
    for track, name in zip(tracks, "abc"):  # "largest" numbers a, b, c
        assert track.detected_frames == frozenset(range(30)) and track.filled_frames == frozenset()
        assert all(track.faces[f] is people[name][f] for f in range(30))


def test_crossing_faces_keep_their_ids(grace_face):
    # Same size, opposite constant velocities, 0.15 face sizes apart vertically: at the crossing each face's
    # last position is nearer the *other* face's next one, so only the motion tells them apart.
    rng = np.random.default_rng(1)
    size = grace_face.box_size * 0.5
    people = {"right": {}, "left": {}}
    frames = []
    for t in range(40):
        x = 0.2 * size * (t - 19.5)
        a = people["right"].setdefault(t, place(grace_face, t, (960 + x, 500), scale=0.5, noise=0.005, rng=rng))
        b = people["left"].setdefault(t, place(grace_face, t, (960 - x, 500 + 0.15 * size), scale=0.5, noise=0.005,
                                               rng=rng))
        frames.append([a, b] if t % 2 else [b, a])
    tracks = assign_tracks(frames, order="left_to_right")
    assert len(tracks) == 2
    for track in tracks:
        names = {person_of(track.faces[f], people) for f in range(40)}
        assert len(names) == 1, f"track {track.track_id} switched person: {names}"
    assert person_of(tracks[0].faces[0], people) == "right"  # starts on the left, moving right


def test_face_missing_three_frames_keeps_its_id_twenty_frames_gets_a_new_one(grace_face):
    rng = np.random.default_rng(2)
    absent_short, absent_long = set(range(10, 13)), set(range(30, 50))
    frames = []
    for t in range(60):
        faces = [place(grace_face, t, (600 + t, 500), scale=0.7, noise=NOISE, rng=rng)]  # always there
        if t not in absent_short | absent_long:
            faces.append(place(grace_face, t, (1300, 500 + t), scale=0.5, noise=NOISE, rng=rng))
        frames.append(faces[::-1])
    tracks = assign_tracks(frames, max_gap=5)
    assert [len(t.detected_frames) for t in tracks] == [60, 27, 10]
    assert tracks[1].frames == tuple(range(30)) and tracks[1].filled_frames == frozenset(absent_short)
    assert tracks[2].frames == tuple(range(50, 60)), "a face gone for 20 frames is a new track"
    # With max_gap 2 the 3-frame absence also splits the track.
    assert len(assign_tracks(frames, max_gap=2)) == 4


def test_new_people_get_the_next_ids_in_order_of_first_frame_then_order(grace_face):
    frames = []
    for t in range(20):
        faces = [place(grace_face, t, (400, 500), scale=0.5)]
        if t >= 5:
            faces.append(place(grace_face, t, (1500, 500), scale=0.3))  # small, right
        if t >= 12:
            faces += [place(grace_face, t, (1000, 300), scale=0.4), place(grace_face, t, (700, 800), scale=0.6)]
        frames.append(faces)
    tracks = assign_tracks(frames, order="largest")
    firsts = [(t.first_frame, round(t.faces[t.first_frame].box_size)) for t in tracks]
    size = grace_face.box_size
    assert firsts == [(0, round(0.5 * size)), (5, round(0.3 * size)), (12, round(0.6 * size)),
                      (12, round(0.4 * size))]
    by_position = assign_tracks(frames, order="left_to_right")
    centres_x = [round(np.mean(t.faces[t.first_frame].box_xyxy[::2])) for t in by_position]
    assert centres_x == [400, 1500, 700, 1000]


@pytest.mark.parametrize("order", ORDERS)
def test_ids_follow_the_order_in_the_first_frame(grace_face, order):
    # Each order ranks these three differently: largest b a c, left-to-right a b c, top-to-bottom b c a, score c b a.
    first = [place(grace_face, 0, (500, 800), scale=0.5, score=0.93), place(grace_face, 0, (900, 200), scale=0.7, score=0.95),
             place(grace_face, 0, (1400, 500), scale=0.3, score=0.99)]
    assert len({tuple(map(id, order_faces(first, o))) for o in ORDERS}) == len(ORDERS)
    frames = [first] + [[face.with_frame(t) for face in first] for t in range(1, 4)]
    tracks = assign_tracks(frames, order=order)
    assert [t.faces[0] for t in tracks] == order_faces(first, order)


def test_a_face_of_another_size_in_the_same_place_is_another_person(grace_face):
    frames = [[place(grace_face, t, (960, 540), scale=1.0 if t < 10 else 0.4)] for t in range(20)]
    tracks = assign_tracks(frames)
    assert [(t.first_frame, t.last_frame) for t in tracks] == [(0, 9), (10, 19)]


# --- gap filling -------------------------------------------------------------------------------------------------


def test_gaps_filled_within_two_pixels_on_a_smooth_path_and_never_extrapolated(grace_face):
    # A circle of radius 80 px in 40 frames: 1.97 px/frame^2 of acceleration, so a straight line across the
    # 5-frame gap misses by ~8 px and only a curved fill passes.
    def truth(t: int) -> FaceRecord:
        angle = 2 * np.pi * t / 40
        return place(grace_face, t, (960 + 80 * np.cos(angle), 540 + 80 * np.sin(angle)), scale=0.6)

    missing = set(range(3, 5)) | set(range(10, 15)) | set(range(22, 25))
    frames = [[] for _ in range(3)] + [[truth(t)] if t not in missing else [] for t in range(3, 30)] + [[]] * 4
    (track,) = assign_tracks(frames, max_gap=5)
    seen = set(range(5, 30)) - missing
    assert track.detected_frames == frozenset(seen)
    assert track.frames == tuple(range(5, 30)), "nothing before the first or after the last sighting"
    filled = {t: truth(t) for t in sorted(missing - {3, 4})}
    assert track.filled_frames == frozenset(filled)
    assert path_error(track, filled).max() < 2.0
    # The test's path is curved enough to tell: a straight fill would be off by more.
    a, b = landmarks(truth(9)), landmarks(truth(15))
    straight = max(np.linalg.norm(a + (b - a) * (t - 9) / 6 - landmarks(truth(t)), axis=1).mean() for t in filled
                   if 9 < t < 15)
    assert straight > 4.0
    assert all(not face.is_aligned and face.frame_index == t for t, face in track.faces.items())


def test_filled_frames_on_a_noisy_path_stay_within_the_detectors_own_noise(grace_face):
    # Tangents fitted on several sightings: a three-point derivative would put filled frames at ~1.6x the noise.
    size = grace_face.box_size
    gaps = set(range(20, 23)) | set(range(40, 45))
    filled_error, detected_error = [], []
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)

        def centre(t: int) -> tuple[float, float]:
            return 960 + 0.3 * size * np.sin(2 * np.pi * t / 50), 540.0

        frames = [[place(grace_face, t, centre(t), noise=NOISE, rng=rng)] if t not in gaps else [] for t in range(60)]
        (track,) = assign_tracks(frames)
        truth = {t: place(grace_face, t, centre(t)) for t in range(60)}
        filled_error.append(path_error(track, {t: truth[t] for t in gaps}).mean())
        detected_error.append(path_error(track, {t: truth[t] for t in track.detected_frames}).mean())
    assert np.mean(filled_error) < 1.1 * np.mean(detected_error), (filled_error, detected_error)


# --- smoothing ---------------------------------------------------------------------------------------------------


def test_smoothing_cuts_jitter_on_a_still_face_at_least_threefold(grace_face):
    rng = np.random.default_rng(3)
    frames = [[place(grace_face, t, (960, 540), noise=NOISE, rng=rng)] for t in range(60)]
    tracks = assign_tracks(frames)
    (smoothed,) = smooth_tracks(tracks)
    before, after = jitter(list(tracks[0].faces.values())), jitter(list(smoothed.faces.values()))
    assert after < before / 3, (before, after)
    assert smoothed.detected_frames == tracks[0].detected_frames and smoothed.track_id == tracks[0].track_id


def test_smoothing_on_constant_velocity_lowers_error_without_lag(grace_face):
    rng = np.random.default_rng(4)
    velocity = np.array([6.0, -2.0])  # px/frame, 0.03 face sizes
    truth = {t: place(grace_face, t, np.array([400.0, 600.0]) + velocity * t) for t in range(60)}
    frames = [[place(grace_face, t, np.array([400.0, 600.0]) + velocity * t, noise=NOISE, rng=rng)] for t in range(60)]
    (raw,) = assign_tracks(frames)
    (smoothed,) = smooth_tracks([raw])
    assert path_error(smoothed, truth).mean() < 0.6 * path_error(raw, truth).mean()
    # Lag: the mean signed error along the motion, in frames (a causal filter trails by sigma-ish frames).
    along = velocity / np.linalg.norm(velocity)
    signed = [((landmarks(smoothed.faces[t]) - landmarks(truth[t])) @ along).mean() for t in truth]
    lag_frames = -np.mean(signed) / np.linalg.norm(velocity)
    assert abs(lag_frames) < 0.5, lag_frames


def test_smoothing_follows_a_swaying_head(grace_face):
    # A sway of 0.3 face sizes with a 50-frame period (1.7 s at 30 fps): a window wide enough to quiet the noise
    # must not flatten the motion: a local linear fit as quiet (sigma 3 frames) gets only to ~0.8x the raw error.
    rng = np.random.default_rng(10)
    size = grace_face.box_size

    def centre(t: int) -> tuple[float, float]:
        return 960 + 0.3 * size * np.sin(2 * np.pi * t / 50), 540.0

    truth = {t: place(grace_face, t, centre(t)) for t in range(100)}
    (raw,) = assign_tracks([[place(grace_face, t, centre(t), noise=NOISE, rng=rng)] for t in range(100)])
    (smoothed,) = smooth_tracks([raw])
    assert path_error(smoothed, truth).mean() < 0.6 * path_error(raw, truth).mean()


def swaying(grace_face, period: int, amplitude: float, noise: float, frames: int = 144, seed: int = 11,
            zoom: float = 0.0):
    """A face swaying sideways (`amplitude` in face sizes, `period` frames), zooming in and out by `zoom` with it,
    and its noisy detections' track."""
    rng = np.random.default_rng(seed)
    size = grace_face.box_size

    def centre(t: int) -> tuple[float, float]:
        return 960 + amplitude * size * np.sin(2 * np.pi * t / period), 540.0

    def scale(t: int) -> float:
        return 1.0 + zoom * np.sin(2 * np.pi * t / period)

    truth = {t: place(grace_face, t, centre(t), scale=scale(t)) for t in range(frames)}
    (raw,) = assign_tracks([[place(grace_face, t, centre(t), scale=scale(t), noise=noise, rng=rng)]
                            for t in range(frames)])
    return truth, raw


@pytest.mark.parametrize(("period", "zoom"), [(24, 0.0), (48, 0.0), (96, 0.0), (24, 0.15)])
def test_smoothing_adapts_to_fast_motion_and_never_does_worse_than_the_detections(grace_face, period, zoom):
    """A head swaying by its own width every 24 to 96 frames (the fastest: a face width per 4 frames) with the
    detector's 1.5 % landmark noise: the windows are chosen from the track itself, narrow for where the fast face
    is, wide for its shape, and the smoothed path is within 0.4x the raw detections' error of the truth (measured
    0.26x at 24 frames; one window for all coordinates gave 0.56x there, and the fixed 5-frame window before it
    several times the detections' error). Zooming +-15 % with it changes the face's size, not its shape."""
    truth, raw = swaying(grace_face, period, 1.0, NOISE, zoom=zoom)
    (smoothed,) = smooth_tracks([raw])
    assert path_error(smoothed, truth).mean() < 0.4 * path_error(raw, truth).mean()
    sigmas = choose_sigma(motion_coordinates(raw.series()))
    assert sigmas[0] < 0.6 * period / 4  # where the face is (x): a fraction of the time it takes to cross itself
    assert np.median(sigmas[4:]) >= 20  # where each point sits on the face: its shape does not change


def test_on_rendered_frames_smoothing_beats_the_detector_on_a_fast_sway(fixtures_dir, grace, grace_face):
    """The sway that made the former fixed window worse than the detections (1.89 vs 1.58 px): the photo drawn into
    960x540 frames, its face 150 px, swaying +-140 px every 48 frames and zooming +-15 %, with pixel noise, and
    found there by the real fixture detector. Smoothed landmarks are closer to the true path than the detections,
    as they are and beyond the detector's own offset (the same on every frame, in face units: most of its error,
    and no smoothing removes it): measured 0.89x there, where the former fixed window gave 1.16x."""
    import cv2
    from comfyui_gpen_restore.face_utils import load_detector

    detector = load_detector(DETECTOR, fixtures_dir / "facedetection")
    rng = np.random.default_rng(0)
    centre = np.array(grace_face.box_xyxy).reshape(2, 2).mean(axis=0)
    detections, truth, scales = [], [], []
    for t in range(96):
        phase = np.sin(2 * np.pi * t / 48)
        scale = 150.0 / grace_face.box_size * (1 + 0.15 * phase)
        target = np.array([480 + 140 * phase, 270.0])
        affine = np.array([[scale, 0, target[0] - scale * centre[0]], [0, scale, target[1] - scale * centre[1]]])
        frame = cv2.warpAffine(grace, affine, (960, 540), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        frame = np.clip(frame + rng.normal(0, 2 / 255, frame.shape), 0, 1).astype(np.float32)
        detections.append([dataclasses.replace(face, frame_index=t) for face in detector.detect(frame)])
        truth.append(scale * (np.array(grace_face.landmarks_xy) - centre) + target)
        scales.append(scale)
    raw = max(assign_tracks(detections), key=lambda track: len(track.detected_frames))  # not a stray detection
    assert raw.frames == tuple(range(96))
    (smoothed,) = smooth_tracks([raw])
    raw_xy, smooth_xy = (np.stack([landmarks(face) for face in track.faces.values()]) for track in (raw, smoothed))
    truth, scales = np.stack(truth), np.array(scales)[:, None, None]
    shifted = truth + scales * ((raw_xy - truth) / scales).mean(axis=0)

    def error(xy: np.ndarray, reference: np.ndarray) -> float:
        return float(np.linalg.norm(xy - reference, axis=-1).mean())

    assert error(smooth_xy, truth) < error(raw_xy, truth)
    assert error(smooth_xy, shifted) < 0.95 * error(raw_xy, shifted)


def test_motion_coordinates_are_undone_exactly():
    series = np.random.default_rng(3).normal(500.0, 80.0, (9, 14))
    motion = motion_coordinates(series)
    np.testing.assert_allclose(motion[:, :2], series.reshape(9, 7, 2).mean(axis=1))
    np.testing.assert_allclose(from_motion_coordinates(motion), series, rtol=0, atol=1e-9)
    # A face moved, scaled 1.5x and turned 30 degrees keeps its shape coordinates; scale and angle say the rest.
    points = series[0].reshape(7, 2) - series[0].reshape(7, 2).mean(axis=0)
    turn = np.array([[np.cos(np.pi / 6), -np.sin(np.pi / 6)], [np.sin(np.pi / 6), np.cos(np.pi / 6)]])
    moved = np.stack([points, 1.5 * points @ turn.T + (40.0, -7.0)]).reshape(2, 14)
    x, y, log_scale, angle, *shape = motion_coordinates(moved).T
    np.testing.assert_allclose([log_scale[1] - log_scale[0], angle[1] - angle[0]], [np.log(1.5), np.pi / 6])
    np.testing.assert_allclose(np.array(shape)[:, 1], np.array(shape)[:, 0], atol=1e-9)


def test_smoothing_quiets_a_still_face_tenfold(grace_face):
    truth, raw = swaying(grace_face, 48, 0.0, NOISE)
    (smoothed,) = smooth_tracks([raw])
    assert jitter(list(smoothed.faces.values())) < 0.1 * jitter(list(raw.faces.values()))
    sigmas = choose_sigma(motion_coordinates(raw.series()))
    assert np.median(sigmas) >= 20 and sigmas.min() >= 5  # every coordinate: wide windows


def test_smoothing_never_crosses_a_scene_cut(grace_face):
    rng = np.random.default_rng(5)
    size = grace_face.box_size
    centre = {t: (700.0, 500.0) if t < 20 else (700.0 + 1.3 * size, 520.0) for t in range(40)}  # jump > size
    truth = {t: place(grace_face, t, centre[t]) for t in range(40)}
    faces = {t: place(grace_face, t, centre[t], noise=NOISE, rng=rng) for t in range(40)}
    track = Track(0, faces, frozenset(faces))
    assert track.segments() == [(0, 20), (20, 40)]
    (smoothed,) = smooth_tracks([track])
    error = path_error(smoothed, truth)
    assert error.max() < 4 * NOISE * size, error  # a blend across the cut would be off by ~half a face
    # The tracker itself splits such a jump into two people.
    assert len(assign_tracks([[face] for face in faces.values()])) == 2


def test_strength_zero_and_single_frames_are_left_alone(grace_face):
    rng = np.random.default_rng(6)
    frames = [[place(grace_face, t, (960, 540), noise=NOISE, rng=rng)] for t in range(10)]
    tracks = assign_tracks(frames)
    assert smooth_tracks(tracks, smoothing=0.0) == tracks
    assert all(a is b for a, b in zip(smooth_tracks(tracks, smoothing=0.0)[0].faces.values(), tracks[0].faces.values()))
    slight = smooth_tracks(tracks, smoothing=0.005)[0]  # at most sigma 0.3 frames: a 3-frame window, nearly no change
    assert path_error(slight, tracks[0].faces).max() < 0.05 * NOISE * grace_face.box_size
    (single,) = assign_tracks([[place(grace_face, 0, (960, 540))]])
    assert smooth_tracks([single])[0].faces[0] == single.faces[0]


def test_smooth_series_keeps_shape_and_segments():
    rng = np.random.default_rng(7)
    steps = np.where(np.arange(30) < 12, 0.2, 0.8)[:, None, None] * np.ones((30, 2, 3))
    noisy = (steps + rng.normal(0, 0.02, steps.shape)).astype(np.float32)
    out = smooth_series(noisy, [(0, 12), (12, 30)])
    assert out.shape == noisy.shape and out.dtype == np.float32
    assert np.abs(out - steps).max() < 0.05  # no blend across the step at row 12
    assert np.abs(out - steps).std() < np.abs(noisy - steps).std() / 2
    blended = smooth_series(noisy)  # one segment: the step is smoothed over
    assert np.abs(blended - steps).max() > 0.1
    assert np.array_equal(smooth_series(noisy, smoothing=0.0), noisy)
    lone = smooth_series(noisy, [(0, 12)])
    assert np.array_equal(lone[12:], noisy[12:])
    with pytest.raises(TrackingError, match="segment"):
        smooth_series(noisy, [(0, 12), (10, 30)])
    assert SMOOTHING_SIGMA_FRAMES > 0


# --- selection and helpers ---------------------------------------------------------------------------------------


def test_assignment_is_optimal_against_brute_force():
    rng = np.random.default_rng(9)
    for _ in range(200):
        n, m = rng.integers(1, 6, size=2)
        cost = rng.uniform(0, 2, (n, m))
        cost[rng.uniform(size=(n, m)) < 0.3] = np.inf
        pairs = min_cost_assignment(cost)
        assert len({i for i, _ in pairs}) == len(pairs) == len({j for _, j in pairs})
        best = (0, 0.0)
        for cols in itertools.permutations(range(max(n, m)), int(n)):
            chosen = [(i, j) for i, j in enumerate(cols) if j < m and np.isfinite(cost[i, j])]
            score = (len(chosen), -sum(cost[i, j] for i, j in chosen))
            best = max(best, score)
        # The same costs summed in another order differ by float64 rounding (1e-16); approx's rel 1e-6 allows it.
        assert (len(pairs), -sum(cost[i, j] for i, j in pairs)) == pytest.approx(best)


def test_bad_inputs_are_refused(grace_face):
    face = place(grace_face, 0, (960, 540))
    with pytest.raises(TrackingError, match="frame_index"):
        assign_tracks([[face], [face]])
    with pytest.raises(TrackingError, match="no detected frame"):
        Track(0, {0: face}, frozenset())
    assert assign_tracks([]) == [] and assign_tracks([[], []]) == []
    moved = dataclasses.replace(face, frame_index=3)
    with pytest.raises(TrackingError, match="another frame_index"):
        Track(0, {2: moved}, frozenset({2}))
