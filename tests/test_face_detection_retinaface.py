"""RetinaFace's steps around the network (`RetinaFaceDetector`): the same detections as facexlib's own
`RetinaFace.detect_faces`, the anchors as facexlib's `PriorBox` builds them, cached per input size."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from comfyui_gpen_restore.face_utils import KNOWN_WEIGHTS, FaceRecord, detection, detectors, load_detector
from comfyui_gpen_restore.face_utils.detection import NMS_IOU_THRESHOLD
from comfyui_gpen_restore.face_utils.detectors import PRIOR_CACHE_SIZE
from support import read_rgb
from facexlib.detection.retinaface_utils import PriorBox
from support import DETECTOR

# Agreement asked of our path with facexlib's. On the CPU both run the same network on the same input, so they
# agree to the bit on every kernel setting tried (tests/NUMERICS.md); the margins leave room for another BLAS or a
# GPU: regression outputs a relative 1e-6 apart move coordinates by 1e-4 px (priors of up to 100s of px) and
# softmax scores by 1e-6. A decoding error moves boxes by pixels.
COORDINATE_TOLERANCE_PX = 1e-3
SCORE_TOLERANCE = 1e-5
# The folded network against facexlib's unfolded one: see FOLDED_RTOL in test_face_detection (measured 1e-6 here).
FOLDED_RTOL = 1e-3
# 0.9 is the default threshold; 0.05 leaves many overlapping candidates for the NMS to sort out.
THRESHOLDS = (0.9, 0.05)


@pytest.fixture(scope="module")
def detector(fixtures_dir):
    return load_detector(DETECTOR, fixtures_dir / "facedetection")


@pytest.fixture(scope="module")
def photos(fixtures_dir) -> dict[str, np.ndarray]:
    return {name: read_rgb(fixtures_dir / "images" / name) for name in ("grace_hopper.jpg", "astronaut.png")}


def facexlib_rows(net: torch.nn.Module, rgb: np.ndarray, threshold: float) -> np.ndarray:
    """facexlib's `detect_faces` on an RGB 0..1 image, as the detector called it before: [N, 15] rows (box,
    score, 5 landmarks), best score first."""
    bgr_255 = np.ascontiguousarray(rgb[:, :, ::-1]) * np.float32(255.0)
    with torch.inference_mode():
        rows = net.detect_faces(bgr_255, conf_threshold=threshold, nms_threshold=NMS_IOU_THRESHOLD,
                                use_origin_size=True)
    return np.asarray(rows, dtype=np.float64).reshape(-1, 15)


def our_rows(detector, rgb: np.ndarray, threshold: float) -> np.ndarray:
    boxes, scores, landmarks = detector._detect_rgb(rgb, threshold)
    return np.concatenate([boxes, scores[:, None], landmarks.reshape(-1, 10)], axis=1)


def assert_same_rows(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape
    # Both come best score first (rows of equal score do not occur in these photos).
    np.testing.assert_allclose(ours[:, :4], theirs[:, :4], rtol=0, atol=COORDINATE_TOLERANCE_PX)
    np.testing.assert_allclose(ours[:, 4], theirs[:, 4], rtol=0, atol=SCORE_TOLERANCE)
    np.testing.assert_allclose(ours[:, 5:], theirs[:, 5:], rtol=0, atol=COORDINATE_TOLERANCE_PX)


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("name", ["grace_hopper.jpg", "astronaut.png"])
def test_photos_give_facexlibs_detections(detector, photos, name, threshold):
    rgb = photos[name]
    ours, theirs = our_rows(detector, rgb, threshold), facexlib_rows(detector.net, rgb, threshold)
    assert len(theirs) >= 1
    assert_same_rows(ours, theirs)


# Tiles of 640 px: the 2x upscaled astronaut (1024 px) is cut into 2 x 2 tiles of 608 px (tile_spans).
SMALL_TILE_SIZE = 640


@pytest.fixture(scope="module")
def big_astronaut(photos) -> np.ndarray:
    return cv2.resize(photos["astronaut.png"], None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)


def test_tiles_of_a_large_image_give_facexlibs_detections(detector, big_astronaut, monkeypatch):
    # The tiles the detector would cut the image into, as views into it (strided), as `_detect_tiled` passes
    # them; at a low threshold, so that several candidates per tile pass.
    monkeypatch.setattr(detection, "TILE_SIZE", SMALL_TILE_SIZE)
    spans = detection.tile_spans(big_astronaut.shape[0])
    assert len(spans) == 2
    found = 0
    for y0, y1 in spans:
        for x0, x1 in spans:
            tile = big_astronaut[y0:y1, x0:x1]
            theirs = facexlib_rows(detector.net, tile, THRESHOLDS[-1])
            assert_same_rows(our_rows(detector, tile, THRESHOLDS[-1]), theirs)
            found += len(theirs)
    assert found >= 2  # the face lies in several tiles


def test_unusual_array_layouts_give_the_same_detections(detector, photos):
    rgb = photos["grace_hopper.jpg"]
    reference = facexlib_rows(detector.net, rgb, 0.05)
    rgba = np.concatenate([rgb, np.ones_like(rgb[:, :, :1])], axis=2)
    mirrored = np.ascontiguousarray(rgb[:, ::-1])
    assert_same_rows(our_rows(detector, rgba[:, :, :3], 0.05), reference)  # 16-byte pixel stride
    # A negative-stride view (which torch cannot wrap) is the mirror image of its contiguous copy.
    assert_same_rows(our_rows(detector, mirrored[:, ::-1], 0.05), reference)


def test_whole_pipeline_on_a_tiled_image_matches_facexlib(detector, big_astronaut, monkeypatch):
    # detect() with our network steps against detect() with facexlib's, on a frame cut into tiles plus the
    # shrunk pass: the same records.
    big = big_astronaut
    monkeypatch.setattr(detection, "TILE_SIZE", SMALL_TILE_SIZE)
    monkeypatch.setattr(detection, "MAX_SINGLE_PASS_PIXELS", SMALL_TILE_SIZE ** 2)
    ours = detector.detect(big, score_threshold=0.5)

    def through_facexlib(self, rgb, threshold):
        rows = facexlib_rows(self.net, rgb, threshold)
        return rows[:, :4], rows[:, 4], rows[:, 5:].reshape(-1, 5, 2)

    monkeypatch.setattr(type(detector), "_detect_rgb", through_facexlib)
    theirs = detector.detect(big, score_threshold=0.5)
    assert len(ours) == len(theirs) >= 1
    for a, b in zip(ours, theirs):
        assert np.abs(np.subtract(a.box_xyxy, b.box_xyxy)).max() < COORDINATE_TOLERANCE_PX
        assert np.abs(np.subtract(a.landmarks_xy, b.landmarks_xy)).max() < COORDINATE_TOLERANCE_PX
        assert abs(a.score - b.score) < SCORE_TOLERANCE


# Multiples of 32, odd sizes (feature maps of ceil(side / stride) cells), tiny and portrait/landscape.
PRIOR_SIZES_HW = [(600, 512), (1137, 910), (37, 53), (1, 1), (100, 33), (1088, 1920)]


@pytest.mark.parametrize("size_hw", PRIOR_SIZES_HW)
def test_cached_priors_are_facexlibs_anchors(detector, size_hw):
    height, width = size_hw
    # The size, its transpose and one of the same height: each its own anchors, once built then cached.
    for size in ((height, width), (width, height), (height, width + 40)):
        expected = PriorBox(detector.net.cfg, image_size=size).forward()
        priors = detector._priors_for(*size)
        assert priors.dtype == torch.float32 and torch.equal(priors, expected), size
        assert detector._priors_for(*size) is priors


def test_prior_cache_is_bounded_and_follows_the_device(fixtures_dir):
    detector = load_detector(DETECTOR, fixtures_dir / "facedetection")
    sizes = [(64 + 8 * i, 64) for i in range(PRIOR_CACHE_SIZE + 3)]
    for size_hw in sizes:
        detector._priors_for(*size_hw)
    assert len(detector._priors) == PRIOR_CACHE_SIZE
    assert sizes[0] not in detector._priors and sizes[-1] in detector._priors  # the oldest went first
    assert torch.equal(detector._priors_for(*sizes[0]), PriorBox(detector.net.cfg, image_size=sizes[0]).forward())
    detector.to("meta")  # as model offloading moves it
    assert detector._priors_for(64, 64).device == torch.device("meta")


def test_records_are_built_only_for_the_faces_kept(detector, monkeypatch):
    # Many candidates, all above the score threshold but one too small: records for the kept rows only.
    count = 500
    corners = np.stack([np.arange(count) * 2.0, np.zeros(count)], axis=1)
    sizes = np.full((count, 1), 10.0)
    sizes[7] = 80.0
    boxes = np.concatenate([corners, corners + sizes], axis=1)
    landmarks = corners[:, None, :] + sizes[:, None, :] * np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6],
                                                                    [0.35, 0.8], [0.65, 0.8]])
    monkeypatch.setattr(type(detector), "_detect_rgb",
                        lambda self, rgb, threshold: (boxes, np.full(count, 0.95), landmarks))
    built = []

    def counting_record(*args, **kwargs):
        built.append(1)
        return FaceRecord(*args, **kwargs)

    monkeypatch.setattr(detection, "FaceRecord", counting_record)
    faces = detector.detect(np.zeros((200, 1100, 3), np.float32), min_face_size=20)
    assert len(faces) == 1 and faces[0].box_xyxy == (14.0, 0.0, 94.0, 80.0)
    assert len(built) == 1


@pytest.mark.parametrize("name", ["retinaface_mobile0.25", "retinaface_resnet50"])
def test_folded_channels_last_network_computes_what_facexlibs_does(fixtures_dir, photos, tmp_path, name):
    """The loaded network has its batch norms folded into the convolutions and runs channels-last; its outputs
    stay those of facexlib's network with the same weights (random ones for ResNet-50, whose file is not in the
    fixtures)."""
    import shutil
    import warnings

    from facexlib.detection.retinaface import RetinaFace

    filename = KNOWN_WEIGHTS[name].filename
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = RetinaFace(network_name=detectors.RETINAFACE_NETWORKS[name], half=False, device="cpu")
    if name == "retinaface_mobile0.25":
        shutil.copy(fixtures_dir / "facedetection" / filename, tmp_path)
        reference.load_state_dict(torch.load(tmp_path / filename, weights_only=True))
    else:
        torch.manual_seed(0)
        with torch.no_grad():  # running statistics away from (0, 1), so folding them is tested
            for module in reference.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.1, 0.1)
                    module.running_var.uniform_(0.5, 2.0)
                    module.weight.uniform_(0.1, 0.5)
        torch.save(reference.state_dict(), tmp_path / filename)
    reference.eval()
    net = load_detector(name, tmp_path).net
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in net.parameters() if p.ndim == 4)
    x = torch.from_numpy(cv2.resize(photos["grace_hopper.jpg"], (256, 320))).permute(2, 0, 1)[None] * 255 - 100
    with torch.inference_mode():
        ours = net(x.contiguous(memory_format=torch.channels_last))
        theirs = reference(x)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, rtol=FOLDED_RTOL, atol=FOLDED_RTOL * float(b.abs().max()))
