"""Detection at full resolution in tiles: small faces in large images, merging across tiles and passes, and the
coordinates mapped back, on synthetic crowds of the fixture photos' real faces (see crowd_support.py)."""

from __future__ import annotations

import numpy as np
import pytest
from comfyui_gpen_restore.face_utils import detection, load_detector
from comfyui_gpen_restore.face_utils.detection import (
    TILE_ALIGN,
    TILE_EDGE_MARGIN,
    TILE_OVERLAP,
    TILE_SIZE,
    _merge_passes,
    tile_spans,
)
from crowd_support import face_sources, make_crowd, match
from support import DETECTOR, read_rgb


@pytest.fixture(scope="module")
def detector(fixtures_dir):
    return load_detector(DETECTOR, fixtures_dir / "facedetection")


@pytest.fixture(scope="module")
def sources(detector, fixtures_dir):
    return face_sources(detector, fixtures_dir / "images")


def recall_and_false_positives(faces, crowd) -> tuple[float, int]:
    assigned, used = match(faces, crowd.boxes_xyxy)
    return float((assigned >= 0).mean()), int((used == 0).sum())


# -- the tile layout and the merge, without a network ------------------------------------------------------------

@pytest.mark.parametrize("length", [1, 500, TILE_SIZE, TILE_SIZE + 1, 1500, 1920, 2048, 3000, 4000, 4321, 12000])
def test_tiles_cover_overlap_and_align(length):
    spans = tile_spans(length)
    assert spans[0][0] == 0 and spans[-1][1] == length
    assert all(start % TILE_ALIGN == 0 for start, _ in spans)
    assert all(end - start <= TILE_SIZE + TILE_ALIGN - 1 for start, end in spans)
    assert all(a_end - b_start >= TILE_OVERLAP for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    # Every box up to TILE_OVERLAP - 2 * margin long lies in some tile, clear of its inner edges by the margin
    # (so it is detected whole there, never only as cut).
    extent = TILE_OVERLAP - 2 * TILE_EDGE_MARGIN
    for lo in range(0, max(1, length - extent), 7):
        hi = lo + extent
        assert any((start == 0 or lo >= start + TILE_EDGE_MARGIN) and (end == length or hi <= end - TILE_EDGE_MARGIN)
                   for start, end in spans), (lo, hi)


def test_merge_prefers_whole_then_finer_then_score_and_drops_pieces():
    boxes = np.array([
        [100, 100, 150, 150],  # 0: cut by a tile edge, best score
        [102, 101, 152, 151],  # 1: the same face whole in the neighbouring tile
        [99, 98, 151, 149],  # 2: the same face in the coarse pass
        [500, 500, 900, 900],  # 3: a large face, coarse pass
        [500, 500, 700, 900],  # 4: its left half, cut by a tile (IoU 0.5 > 0.4)
        [510, 600, 620, 720],  # 5: a piece of it, cut (IoU 0.08: only the coverage rule drops it)
        [2000, 100, 2040, 140],  # 6: a face only a tile found, and cut there: kept
        [700, 550, 850, 680],  # 7: a piece of 3 whole in a tile (an eye at full resolution)
    ], float)
    scores = np.array([0.99, 0.95, 0.97, 0.96, 0.98, 0.93, 0.92, 0.94])
    cut = np.array([1, 0, 0, 0, 1, 1, 1, 0], bool)
    level = np.array([0, 0, 1, 1, 0, 0, 0, 0])
    assert sorted(_merge_passes(boxes, scores, cut, level)) == [1, 3, 6]
    # Only a coarser pass's face makes a piece: inside a face of the same pass, a whole box is a face of its own
    # (a face on a poster behind a person).
    level[7] = 1
    assert sorted(_merge_passes(boxes, scores, cut, level)) == [1, 3, 6, 7]


def test_merge_of_many_candidates_stays_small_in_memory():
    # A low score threshold leaves thousands of candidates; an [N, N] overlap matrix of 3,000 of them would take
    # 144 MB (and of the 60,000 a random-weights network gives on a 4000x3000 frame, 55 GB).
    import tracemalloc

    count = 3000
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 4000, (count, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(20, 60, (count, 1))], axis=1)
    tracemalloc.start()
    keep = _merge_passes(boxes, rng.uniform(0, 1, count), rng.uniform(size=count) < 0.3, rng.integers(0, 2, count))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5e6 and 0 < len(keep) < count


# -- real faces --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["grace_hopper.jpg", "astronaut.png"])
def test_photos_up_to_1024_px_give_the_same_faces_as_before(detector, fixtures_dir, name):
    image = read_rgb(fixtures_dir / "images" / name)
    assert detector.detect(image) == detector.detect(image, detection_size=1024)


# Faces of 32-40 px in a 2048x1536 frame: the former 1024-px copy halves them to 16-20 px, at RetinaFace's
# smallest anchor (16 px), where it loses nearly all; at full resolution they are found (the fixture MobileNet
# scores some 32-px faces just under 0.9, so the faces on tile edges, the point of those, are 40 px).
CROWD_HW = (1536, 2048)
CROWD_FACE_SIZES = [40] * 6 + [32, 36, 40] * 6


def crowd_edge_centres() -> list[tuple[float, float]]:
    """Centres on the inner tile edges of a CROWD_HW frame (cut in one tile, whole in the next) and on a corner
    where four tiles meet, plus a grid away from the edges."""
    (_, x_end0), (x_start1, _) = tile_spans(CROWD_HW[1])[:2]
    (_, y_end0), (y_start1, _) = tile_spans(CROWD_HW[0])[:2]
    on_edges = [(x_end0, 250), (x_start1, 1300), (300, y_end0), (1750, y_start1), (x_end0, y_end0),
                ((x_start1 + x_end0) / 2, (y_start1 + y_end0) / 2 + 120)]
    grid = [(x, y) for y in (150, 480, 1050, 1400) for x in (150, 520, 1500, 1880)]
    return on_edges + grid


@pytest.fixture(scope="module")
def crowd(sources):
    return make_crowd(sources, CROWD_FACE_SIZES, size_hw=CROWD_HW, centres_xy=crowd_edge_centres())


@pytest.fixture(scope="module")
def crowd_faces(detector, crowd):
    return detector.detect(crowd.image)


def test_small_faces_in_a_large_frame_are_found_by_default(detector, crowd, crowd_faces):
    recall, false_positives = recall_and_false_positives(crowd_faces, crowd)
    assert recall >= 0.95 and false_positives == 0
    former_recall, _ = recall_and_false_positives(detector.detect(crowd.image, detection_size=1024), crowd)
    assert former_recall <= 0.3  # what the former default found: the reason for the change


def test_faces_on_tile_edges_are_found_once(crowd, crowd_faces):
    assigned, used = match(crowd_faces, crowd.boxes_xyxy)
    edge_faces = slice(0, 6)
    assert (assigned[edge_faces] >= 0).all()
    # No second detection of any face: every detection matches a face, one each (match() gives one per face).
    assert len(crowd_faces) == (assigned >= 0).sum() and (used == 1).all()
    for face in crowd_faces:
        assert face.image_size_hw == CROWD_HW


def test_tiled_detection_maps_back_as_one_pass(detector, sources, monkeypatch):
    # Small tiles on a small frame, so the single-pass reference at full resolution is cheap: faces inside a tile
    # must come out where one pass over the whole frame finds them (tile origins on the 32-px feature grid).
    # The 197-px face is larger than a tile pass finds whole (176 px) and sits across tile edges: the coarse pass
    # must find it, once.
    size_hw = (768, 1024)
    big, small = sources
    centres = [(300, 288), (700, 300), (150, 620), (560, 600), (870, 640)]
    crowd = make_crowd([big, small], [197, 107, 50, 60, 56], size_hw=size_hw, centres_xy=centres)
    reference = detector.detect(crowd.image)
    assert len(reference) == 5
    monkeypatch.setattr(detection, "TILE_SIZE", 512)
    monkeypatch.setattr(detection, "MAX_SINGLE_PASS_PIXELS", 512 * 512)
    assert len(detection.tile_spans(1024)) == 3 and len(detection.tile_spans(768)) == 2
    tiled = detector.detect(crowd.image)
    assigned, used = match(tiled, crowd.boxes_xyxy)
    assert (assigned >= 0).all() and len(tiled) == 5
    reference_assigned, _ = match(reference, crowd.boxes_xyxy)
    for i, (t, r) in enumerate(zip(assigned, reference_assigned)):
        ours, theirs = tiled[t], reference[r]
        size = theirs.box_size
        error = np.abs(np.array(ours.landmarks_xy) - np.array(theirs.landmarks_xy)).max()
        if i == 0:
            assert error < 0.1 * size  # found at a quarter of the resolution: within detector noise
        else:
            assert error < 1.0, (i, error)
            assert np.abs(np.array(ours.box_xyxy) - np.array(theirs.box_xyxy)).max() < 1.5
            assert abs(ours.score - theirs.score) < 0.01


def test_detection_size_still_limits_what_the_network_sees(detector, crowd, monkeypatch):
    seen = []

    def no_faces(self, rgb, threshold):  # records what the network would see; finds nothing
        seen.append(rgb.shape[:2])
        return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))

    monkeypatch.setattr(type(detector), "_detect_rgb", no_faces)
    assert detector.detect(crowd.image, detection_size=1024) == []
    assert seen == [(768, 1024)]
    seen.clear()
    detector.detect(crowd.image)
    # Full resolution in 2x2 tiles, then the frame at a quarter of its size in one pass.
    assert len(seen) == 5 and seen[-1] == (384, 512)
    assert sum(h * w for h, w in seen[:-1]) < 1.5 * CROWD_HW[0] * CROWD_HW[1]
    assert max(h * w for h, w in seen) <= detection.MAX_SINGLE_PASS_PIXELS
    seen.clear()
    detector.detect(np.zeros((1088, 1920, 3), np.float32))
    assert seen == [(1088, 1920)]  # a 1080p video frame: one pass at full resolution


@pytest.mark.slow
def test_group_photo_4000x3000_with_60px_faces_and_one_large_face(detector, sources):
    # The case: 60-px faces in a 4000-px group photo, and one face covering a good part of the frame,
    # across the tile grid (only the coarse pass sees it whole).
    size_hw = (3000, 4000)
    grid = [(x, y) for y in (200, 1000, 2000, 2800) for x in (200, 700, 3300, 3800)]
    crowd = make_crowd(sources, [60, 1300] + [60] * (len(grid) - 1), size_hw=size_hw,
                       centres_xy=[grid[0], (2000, 1500)] + grid[1:])
    faces = detector.detect(crowd.image)
    assigned, used = match(faces, crowd.boxes_xyxy)
    assert (assigned >= 0).all() and (used == 1).all()
    big = faces[assigned[1]]
    assert big.box_size > 1000
    former, _ = recall_and_false_positives(detector.detect(crowd.image, detection_size=1024), crowd)
    assert former <= 2 / len(grid)  # the large face, perhaps one other
