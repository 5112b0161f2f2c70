"""Face detection on real photographs, YuNet through a synthetic network, and face selection."""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from comfyui_gpen_restore.face_utils import DETECTORS, FaceRecord, load_detector
from comfyui_gpen_restore.face_utils.selection import order_faces, pick
from comfyui_gpen_restore.face_utils.images import ImageFormatError

IMAGES = ("grace_hopper.jpg", "astronaut.png")
# Our network (batch norms folded into the convolutions) against facexlib's: the folded weights round once more
# and ResNet-50's 50 layers sum in other orders, a relative 1e-5 or so; measured 3e-5 of the output's largest value.
# A weight that did not arrive changes outputs by their own size.
FOLDED_RTOL = 1e-3
# The pixel bounds in the tests below (1-12 px) are the detector's noise between inputs of other sizes or content,
# not rounding: kernel settings move detections by orders of magnitude less (tests/NUMERICS.md).


def load_rgb(fixtures_dir: Path, name: str) -> np.ndarray:
    bgr = cv2.imread(str(fixtures_dir / "images" / name), cv2.IMREAD_COLOR)
    assert bgr is not None, name
    return bgr[:, :, ::-1].astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, fixtures_dir) -> Path:
    folder = tmp_path_factory.mktemp("facedetection")
    shutil.copy(fixtures_dir / "facedetection" / "detection_mobilenet0.25_Final.pth", folder)
    return folder


@pytest.fixture(scope="module")
def detector(model_dir):
    return load_detector("retinaface_mobile0.25", model_dir)


def assert_plausible_face(face: FaceRecord) -> None:
    """Landmarks inside the box and in anatomical order (image left/right, eyes above nose above mouth)."""
    x0, y0, x1, y1 = face.box_xyxy
    points = np.array(face.landmarks_xy)
    assert np.all((points[:, 0] > x0) & (points[:, 0] < x1) & (points[:, 1] > y0) & (points[:, 1] < y1))
    left_eye, right_eye, nose, left_mouth, right_mouth = points
    assert left_eye[0] < nose[0] < right_eye[0]
    assert left_mouth[0] < right_mouth[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])


@pytest.mark.parametrize("name", IMAGES)
def test_real_photo_has_exactly_one_plausible_face(detector, fixtures_dir, name):
    image = load_rgb(fixtures_dir, name)
    faces = detector.detect(image, frame_index=4)
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.95 and face.frame_index == 4 and face.image_size_hw == image.shape[:2]
    assert not face.is_aligned
    assert_plausible_face(face)


def test_face_sizes_match_the_fixture_notes(detector, fixtures_dir):
    # README: grace_hopper's face is about 170x210 px, astronaut's about 95x120 px.
    sizes = {name: detector.detect(load_rgb(fixtures_dir, name))[0].box_size for name in IMAGES}
    assert 150 < sizes["grace_hopper.jpg"] < 240
    assert 80 < sizes["astronaut.png"] < 135


def test_downscaled_detection_maps_coordinates_back(detector, fixtures_dir):
    image = load_rgb(fixtures_dir, "grace_hopper.jpg")
    full = detector.detect(image, detection_size=0)[0]
    small = detector.detect(image, detection_size=300)[0]  # detected at half size
    assert_plausible_face(small)
    assert np.abs(np.array(full.landmarks_xy) - np.array(small.landmarks_xy)).max() < 12
    assert np.abs(np.array(full.box_xyxy) - np.array(small.box_xyxy)).max() < 12
    # A 2x upscaled copy detected at the original's resolution gives twice the coordinates.
    big = cv2.resize(image, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC)
    mapped = detector.detect(big, detection_size=max(image.shape[:2]))[0]
    expected = (np.array(full.landmarks_xy) + 0.5) * 2 - 0.5
    assert np.abs(np.array(mapped.landmarks_xy) - expected).max() < 1.0


def test_grey_and_rgba_inputs(detector, fixtures_dir):
    image = load_rgb(fixtures_dir, "grace_hopper.jpg")
    reference = detector.detect(image)[0]
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, None]
    rgba = np.concatenate([image, np.linspace(0, 1, image.shape[1], dtype=np.float32)[None, :, None]
                           * np.ones_like(image[:, :, :1])], axis=2)
    for variant in (grey, rgba):
        faces = detector.detect(variant)
        assert len(faces) == 1
        assert_plausible_face(faces[0])
        assert np.abs(np.array(faces[0].landmarks_xy) - np.array(reference.landmarks_xy)).max() < 10
    # Alpha is ignored: the RGBA result equals the RGB one.
    assert detector.detect(rgba)[0] == reference


def test_face_cut_by_the_border(detector, fixtures_dir):
    image = load_rgb(fixtures_dir, "grace_hopper.jpg")
    reference = detector.detect(image)[0]
    cut = np.ascontiguousarray(image[:, 200:])  # cuts the left of the face off
    faces = detector.detect(cut)
    assert len(faces) == 1
    face = faces[0]
    assert face.box_xyxy[0] < 0 < face.box_xyxy[2]  # the box reaches outside the frame
    shifted = np.array(reference.landmarks_xy) - [200, 0]
    assert np.abs(np.array(face.landmarks_xy) - shifted).max() < 12


def test_no_face_returns_empty_and_logs(detector, fixtures_dir, caplog):
    image = load_rgb(fixtures_dir, "grace_hopper.jpg")
    with caplog.at_level(logging.INFO, logger="comfyui_gpen_restore.face_utils.detection"):
        assert detector.detect(np.ascontiguousarray(image[:150, :150])) == []
        assert detector.detect(np.full((200, 300, 1), 0.4, np.float32)) == []
    assert "found no face" in caplog.text


def test_thresholds_filter(detector, fixtures_dir):
    image = load_rgb(fixtures_dir, "astronaut.png")
    face = detector.detect(image)[0]
    assert detector.detect(image, min_face_size=face.box_size + 1) == []
    assert len(detector.detect(image, min_face_size=face.box_size - 1)) == 1
    assert detector.detect(image, score_threshold=min(1.0, face.score + 1e-3)) == []


def test_bad_images_raise(detector):
    with pytest.raises(ImageFormatError, match=r"\[H, W, C\]"):
        detector.detect(np.zeros((10, 10), np.float32))
    with pytest.raises(ImageFormatError, match="uint8"):
        detector.detect(np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ImageFormatError, match="numpy"):
        detector.detect(torch.zeros(10, 10, 3))


def test_unknown_detector_name(model_dir):
    with pytest.raises(ValueError) as error:
        load_detector("mtcnn", model_dir)
    assert all(name in str(error.value) for name in DETECTORS)


def test_wrong_checkpoint_layout_is_refused(tmp_path, fixtures_dir):
    # A MobileNet file under the ResNet-50 name: strict loading must refuse it with a clear message.
    shutil.copy(
        fixtures_dir / "facedetection" / "detection_mobilenet0.25_Final.pth", tmp_path / "detection_Resnet50_Final.pth"
    )
    with pytest.raises(ValueError, match="not a retinaface_resnet50 checkpoint"):
        load_detector("retinaface_resnet50", tmp_path)


def test_truncated_detector_file_is_refused(tmp_path, fixtures_dir):
    data = (fixtures_dir / "facedetection" / "detection_mobilenet0.25_Final.pth").read_bytes()
    (tmp_path / "detection_mobilenet0.25_Final.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt.*detection_mobilenet0.25_Final.pth from"):
        load_detector("retinaface_mobile0.25", tmp_path)


def test_resnet50_loads_checkpoints_saved_from_data_parallel(tmp_path):
    from facexlib.detection.retinaface import RetinaFace

    torch.manual_seed(0)
    with warnings.catch_warnings():  # torchvision's `pretrained` deprecation, raised by facexlib's constructor
        warnings.simplefilter("ignore", UserWarning)
        reference = RetinaFace(network_name="resnet50", device="cpu")
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save(state, tmp_path / "detection_Resnet50_Final.pth")
    detector = load_detector("retinaface_resnet50", tmp_path)
    # The weights arrived: the loaded network (batch norms folded in) computes what the reference does.
    x = torch.rand(1, 3, 64, 64) * 255
    with torch.inference_mode():
        for ours, theirs in zip(detector.net(x), reference.eval()(x)):
            assert torch.allclose(ours, theirs, rtol=FOLDED_RTOL, atol=FOLDED_RTOL * float(theirs.abs().max()))
    assert detector.device == torch.device("cpu")
    # Moving it (as model offloading does) moves facexlib's own device and channel means too.
    moved = detector.to("meta")
    assert moved is detector and detector.device == torch.device("meta")
    assert detector.net.device == torch.device("meta") and detector.net.mean_tensor.device == torch.device("meta")


def test_several_faces_each_order_and_index(detector, fixtures_dir):
    astronaut = load_rgb(fixtures_dir, "astronaut.png")
    grace = load_rgb(fixtures_dir, "grace_hopper.jpg")
    canvas = np.full((700, 1300, 3), 0.5, np.float32)
    canvas[150:662, 0:512] = astronaut  # medium face, left, middle height
    canvas[0:600, 520:1032] = grace  # large face, centre, top
    canvas[440:674, 1060:1260] = cv2.resize(grace, (200, 234), interpolation=cv2.INTER_AREA)  # small, right, low
    faces = detector.detect(canvas)
    assert len(faces) == 3
    for face in faces:
        assert_plausible_face(face)
    centre_x = {round((f.box_xyxy[0] + f.box_xyxy[2]) / 2): f for f in faces}
    left, middle, right = (centre_x[k] for k in sorted(centre_x))
    assert left.box_size < middle.box_size and right.box_size < left.box_size

    assert order_faces(faces, "largest") == [middle, left, right]
    assert order_faces(faces, "left_to_right") == [left, middle, right]
    assert order_faces(faces, "top_to_bottom") == [middle, left, right]
    by_score = order_faces(faces, "best_score")
    assert [f.score for f in by_score] == sorted((f.score for f in faces), reverse=True)
    assert pick(order_faces(faces, "left_to_right"), " 2 , 0 ") == [right, left]
    # The default sees the 1300 px canvas at full resolution (one pass); a 1024-px copy must map back to it.
    shrunk = detector.detect(canvas, detection_size=1024)
    assert len(shrunk) == 3
    for face in order_faces(shrunk, "left_to_right"):
        match = min(faces, key=lambda f: abs(f.box_xyxy[0] - face.box_xyxy[0]))
        # Same face within detector noise (the network sees different pixels at the two scales).
        assert np.abs(np.array(face.landmarks_xy) - np.array(match.landmarks_xy)).max() < 0.1 * match.box_size


def _write_fake_yunet(path: Path, size_hw: tuple[int, int], cells: list[dict]) -> None:
    """An ONNX network with YuNet's input and outputs that ignores its input and reports `cells` as detections.

    OpenCV decodes YuNet's outputs itself (cv2.FaceDetectorYN): per stride s and grid cell (row r, column c),
    score = sqrt(cls * obj), box centre = (c + dx, r + dy) * s, size = exp(dw, dh) * s, landmark k =
    (c + kx, r + ky) * s. The real 230 kB network cannot be downloaded in tests; this checks our side of it.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    height, width = size_hw
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["zero_from_input"]),
    ]
    initializers = [numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    outputs = []
    for kind, width_per_cell in (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10)):
        for stride in (8, 16, 32):
            cols = width // stride
            values = np.zeros((1, (height // stride) * cols, width_per_cell), np.float32)
            for cell in cells:
                if cell["stride"] == stride:
                    values[0, cell["row"] * cols + cell["col"]] = cell[kind]
            name = f"{kind}_{stride}"
            initializers.append(numpy_helper.from_array(values, f"{name}_value"))
            nodes.append(helper.make_node("Add", [f"{name}_value", "zero_from_input"], [name]))
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(values.shape)))
    graph = helper.make_graph(
        nodes, "fake_yunet", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, height, width])],
        outputs, initializers,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def test_yunet_detections_are_decoded_and_mapped_back(tmp_path):
    # One face in cell (row 4, col 5) of stride 32 on a 320x320 input: score sqrt(1 * 0.81) = 0.9, centre
    # (176, 144), size 96x128, eyes at (160, 128) and (192, 128), nose (176, 144), mouth (163.2, 166.4) and
    # (188.8, 166.4); a second, weak candidate (score 0.5) must fall under the threshold.
    face_cell = dict(
        stride=32, row=4, col=5, cls=[1.0], obj=[0.81], bbox=[0.5, 0.5, np.log(3.0), np.log(4.0)],
        kps=[0.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.1, 1.2, 0.9, 1.2],
    )
    weak_cell = dict(stride=16, row=2, col=2, cls=[0.5], obj=[0.5], bbox=[0.5] * 4, kps=[0.5] * 10)
    _write_fake_yunet(tmp_path / "face_detection_yunet_2023mar.onnx", (320, 320), [face_cell, weak_cell])
    detector = load_detector("yunet", tmp_path)
    assert detector.name == "yunet"

    # A 640x640 frame detected at 320: every coordinate maps back as x_full = (x + 0.5) * 2 - 0.5.
    frame = np.zeros((640, 640, 3), np.float32)
    faces = detector.detect(frame, detection_size=320, score_threshold=0.8, frame_index=2)
    assert len(faces) == 1
    face = faces[0]
    assert face.score == pytest.approx(0.9, abs=1e-6)  # sqrt(0.81) from float32 outputs: an ulp, 6e-8
    assert face.frame_index == 2 and face.image_size_hw == (640, 640)
    to_full = lambda v: (v + 0.5) * 2 - 0.5  # noqa: E731
    # Float32 decoding of coordinates up to 450 px: ulps of 3e-5 (measured 0.0); a wrong stride is pixels off.
    assert face.box_xyxy == pytest.approx(tuple(map(to_full, (128, 80, 224, 208))), abs=1e-3)
    expected = [(160, 128), (192, 128), (176, 144), (163.2, 166.4), (188.8, 166.4)]
    assert np.allclose(face.landmarks_xy, [(to_full(x), to_full(y)) for x, y in expected], rtol=0, atol=1e-3)
    assert_plausible_face(face)
    assert len(detector.detect(frame, detection_size=320, score_threshold=0.4)) == 2
    assert detector.detect(frame, detection_size=320, score_threshold=0.95) == []


def test_yunet_file_that_is_not_a_network(tmp_path):
    (tmp_path / "face_detection_yunet_2023mar.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ValueError, match="could not load"):
        load_detector("yunet", tmp_path)
