"""The two pixel backends (face_utils.pixels) held together: the torch one (face_utils.torch_pixels, what runs on a
GPU) against the OpenCV one, run here on the CPU.

Stated tolerances (max abs difference, values in 0..1; reasons at the constants, measurements in
tests/NUMERICS.md): crop warps and paste-back, colour correction included, TOLERANCE; masks MASK_TOLERANCE;
pixels outside the mask bit-identical on both paths. The parsing mask of a crop larger than the parser's input
differs more (0.05): OpenCV's area filter shrinks it on one path, torch's antialiased bilinear on the other.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from comfyui_gpen_restore.face_utils import (
    PasteSettings,
    align_face,
    load_detector,
    paste,
    pipeline,
    torch_pixels,
    warp_face,
)
from comfyui_gpen_restore.face_utils.parsing import (
    FACE_CLASSES,
    PARSE_CLASSES,
    FaceParser,
)
from comfyui_gpen_restore.face_utils.paste_stream import PasteStream
from comfyui_gpen_restore.face_utils.pixels import OPENCV_PIXELS, TorchPixels, choose_pixels
from comfyui_gpen_restore.gpen_arch.runner import ieee_fp32
from support import DETECTOR, TEST_DEVICE, read_rgb

# The same cubic samples and filters, but each path rounds its sample positions to float32 on its own (an ulp is
# 3e-5-6e-5 px at these 300-600 px frames; a few roundings each), and the photos' edges rise by up to 0.55 per
# pixel: about 1.5e-4 at worst. Measured 4.9e-5 to 6.3e-5, moving with the detection's last bits
# (tests/NUMERICS.md). A crop half a pixel off differs by 0.46-0.52 on these photos.
TOLERANCE = 3e-4
# Masks are smooth in the sample positions (a feather of many pixels): measured up to 6e-7.
MASK_TOLERANCE = 1e-5
DEVICE = TEST_DEVICE
ON_DEVICE = TorchPixels(DEVICE)


@pytest.fixture(scope="module")
def photos(fixtures_dir):
    """name -> (image, its best face), for the two fixture photos."""
    detector = load_detector(DETECTOR, fixtures_dir / "facedetection")
    found = {}
    for name in ("grace_hopper.jpg", "astronaut.png"):
        image = read_rgb(fixtures_dir / "images" / name)
        found[name] = image, detector.detect(image)[0]
    return found


def torch_warp(image: np.ndarray, face, **options) -> np.ndarray:
    with ieee_fp32():  # as TorchPixels runs it
        return torch_pixels.warp_face(torch.from_numpy(image).to(DEVICE), face, **options).cpu().numpy()


def torch_paste(image: np.ndarray, crops, faces, settings, parser=None):
    tensor = torch.from_numpy(image).to(DEVICE)
    with ieee_fp32():
        prepared = torch_pixels.prepare_faces(tensor, [torch.from_numpy(c) for c in crops], faces, settings,
                                              parser=parser)
        result, mask = torch_pixels.blend_faces(tensor, prepared, settings)
    return result.cpu().numpy(), mask.cpu().numpy()


def assert_paste_agrees(image, crops, faces, settings, tolerance, parser=None, mask_tolerance=MASK_TOLERANCE):
    expected, expected_mask = paste.paste_faces(image, crops, faces, settings, parser=parser)
    result, mask = torch_paste(image, crops, faces, settings, parser=parser)
    assert np.abs(mask - expected_mask).max() <= mask_tolerance
    assert np.abs(result - expected).max() <= tolerance
    outside = expected_mask == 0
    assert np.array_equal(result[outside], image[outside])
    return result, mask


@pytest.mark.parametrize("crop_size", [128, 512, 2048])
@pytest.mark.parametrize("name", ["grace_hopper.jpg", "astronaut.png"])
def test_crop_warp_agrees(photos, name, crop_size):
    image, face = photos[name]
    aligned = align_face(face, crop_size=crop_size)
    expected = warp_face(image, aligned)
    result = torch_warp(image, aligned)
    assert result.shape == expected.shape
    assert np.abs(result - expected).max() <= TOLERANCE


def test_crop_warp_of_a_large_face_is_antialiased_alike(photos):
    # A 64 crop of a ~200-px face: the shrinking path (halvings and the FIR) on both sides.
    image, face = photos["astronaut.png"]
    aligned = align_face(face, crop_size=64)
    assert np.abs(torch_warp(image, aligned) - warp_face(image, aligned)).max() <= TOLERANCE


@pytest.mark.parametrize("border", ["reflect", "replicate", "constant"])
def test_crop_warp_at_the_frame_edge_follows_the_border_rule(photos, border):
    image, face = photos["grace_hopper.jpg"]
    x0, _, x1, _ = (round(v) for v in face.box_xyxy)
    # Cut the frame through the middle of the face, so a third of the crop lies outside it.
    cut = np.ascontiguousarray(image[:, (x0 + x1) // 2 :])
    shifted = dataclasses.replace(
        face, image_size_hw=cut.shape[:2],
        box_xyxy=(face.box_xyxy[0] - (x0 + x1) // 2, *face.box_xyxy[1:2], face.box_xyxy[2] - (x0 + x1) // 2,
                  face.box_xyxy[3]),
        landmarks_xy=tuple((x - (x0 + x1) // 2, y) for x, y in face.landmarks_xy),
    )
    for crop_size in (64, 512):
        aligned = align_face(shifted, crop_size=crop_size)
        expected = warp_face(cut, aligned, border=border)
        result = torch_warp(cut, aligned, border=border)
        assert np.abs(result - expected).max() <= TOLERANCE


@pytest.mark.parametrize("crop_size", [128, 2048])
@pytest.mark.parametrize("name", ["grace_hopper.jpg", "astronaut.png"])
def test_paste_agrees(photos, name, crop_size):
    image, face = photos[name]
    aligned = align_face(face, crop_size=crop_size)
    crop = warp_face(image, aligned)
    noisy = np.clip(crop + np.random.default_rng(0).normal(0, 0.05, crop.shape), 0, 1).astype(np.float32)
    for shape in ("ellipse", "box"):
        plain = PasteSettings(mask_shape=shape, color_correction=False, opacity=0.8)
        assert_paste_agrees(image, [noisy], [aligned], plain, TOLERANCE)
        assert_paste_agrees(image, [noisy], [aligned], dataclasses.replace(plain, color_correction=True),
                            TOLERANCE)


def test_paste_agrees_with_a_colour_cast_and_overlapping_faces(photos):
    image, face = photos["astronaut.png"]
    aligned = align_face(face, crop_size=512)
    cast = np.clip(warp_face(image, aligned) * np.float32([1.2, 0.9, 0.7]) + 0.05, 0, 1).astype(np.float32)
    nudged = dataclasses.replace(face, landmarks_xy=tuple((x + 15.0, y + 5.0) for x, y in face.landmarks_xy))
    second = align_face(nudged, crop_size=256)
    result, _ = assert_paste_agrees(image, [cast, warp_face(image, second)], [aligned, second], PasteSettings(),
                                    TOLERANCE)
    assert np.abs(result - image).max() > 0.01  # something was pasted


def test_paste_agrees_onto_an_upscaled_canvas_and_at_the_edge(photos):
    image, face = photos["grace_hopper.jpg"]
    aligned = align_face(face, crop_size=512)
    crop = warp_face(image, aligned)
    canvas = np.ascontiguousarray(np.repeat(np.repeat(image, 2, axis=0), 2, axis=1))
    assert_paste_agrees(canvas, [crop], [aligned], PasteSettings(color_correction=False), TOLERANCE)
    moved = dataclasses.replace(face, landmarks_xy=tuple((x - 150.0, y) for x, y in face.landmarks_xy))
    edge = align_face(moved, crop_size=512)  # partly left of the frame: the region is clipped alike
    assert_paste_agrees(image, [crop], [edge], PasteSettings(), TOLERANCE)


def test_paste_agrees_keeping_the_luminance(photos):
    rgb, face = photos["grace_hopper.jpg"]
    image = np.ascontiguousarray(np.repeat(rgb @ np.float32([[0.299], [0.587], [0.114]]), 3, axis=2))
    aligned = align_face(face, crop_size=256)
    colourful = np.clip(warp_face(rgb, aligned) * np.float32([1.4, 0.8, 0.5]), 0, 1).astype(np.float32)
    assert_paste_agrees(image, [colourful], [aligned], PasteSettings(keep_luminance=True, opacity=0.9), TOLERANCE)


@pytest.mark.parametrize("image_channels, crop_channels", [(1, 3), (4, 3), (3, 1)])
def test_paste_agrees_for_grey_and_rgba(photos, image_channels, crop_channels):
    rgb, face = photos["astronaut.png"]
    grey = (rgb @ np.float32([0.299, 0.587, 0.114]))[:, :, None]
    image = {1: grey, 3: rgb, 4: np.concatenate([rgb, np.full_like(grey, 0.5)], axis=2)}[image_channels]
    aligned = align_face(face, crop_size=256)
    crop = warp_face(rgb if crop_channels == 3 else np.ascontiguousarray(grey), aligned)
    result, _ = assert_paste_agrees(np.ascontiguousarray(image), [crop], [aligned], PasteSettings(), TOLERANCE)
    if image_channels == 4:
        assert np.array_equal(result[:, :, 3], image[:, :, 3])


class _RedIsFace(torch.nn.Module):
    """A content-dependent stand-in for ParseNet: face where the crop is redder than green."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("anchor", torch.zeros(()))  # tells FaceParser the device it is on

    def forward(self, x):
        logits = torch.zeros(x.shape[0], PARSE_CLASSES, *x.shape[2:], device=x.device)
        logits[:, FACE_CLASSES[0]] = 20.0 * (x[:, 0] - x[:, 1])
        return logits, x


@pytest.mark.parametrize("crop_size", [512, 1024])
def test_parsing_mask_agrees(photos, crop_size):
    image, face = photos["astronaut.png"]
    aligned = align_face(face, crop_size=crop_size)
    crop = warp_face(image, aligned)
    settings = PasteSettings(mask_shape="parsing", color_correction=False)
    # At the parser's own size both paths parse the same crop and differ only in sampling the parsed mask, whose
    # edges (the stand-in's gain of 20) are steeper than the shape masks': 10x MASK_TOLERANCE, measured 6e-7. A
    # larger crop is shrunk for the parser by OpenCV's area filter on one path and torch's antialiased bilinear on
    # the other (measured 4.4e-4); the paste moves no more than its mask does.
    mask_tolerance = MASK_TOLERANCE * 10 if crop_size == 512 else 0.05
    assert_paste_agrees(image, [crop], [aligned], settings, TOLERANCE if crop_size == 512 else 0.05,
                        parser=FaceParser(_RedIsFace()).to(DEVICE), mask_tolerance=mask_tolerance)


def test_the_one_node_path_on_a_device_agrees_and_hands_over_numpy(photos):
    """restore_frames with a device (here the CPU standing in for a GPU): crops reach the restorer on the device,
    its results are pasted there, the frames come back as numpy, and the output matches the OpenCV path."""
    image, face = photos["grace_hopper.jpg"]
    frames = torch.from_numpy(np.stack([image, image[:, ::-1].copy(), np.zeros_like(image)]))

    class OneFace:
        name = "stand-in"

        def detect(self, frame, **_):
            return [face] if frame.max() > 0 and frame[0, 0, 0] == image[0, 0, 0] else []

    seen = []

    def brighten(crops, on_face):
        seen.append((type(crops), crops.device))
        for _ in range(crops.shape[0]):
            on_face()
        return (crops[..., :3] * 1.1).clamp(0, 1)

    settings = pipeline.DetectSettings(crop_size=256)
    expected, expected_mask, _ = pipeline.restore_image(frames, OneFace(), brighten, settings, PasteSettings())
    result, mask, faces = pipeline.restore_image(frames, OneFace(), brighten, settings, PasteSettings(),
                                                 pixels=ON_DEVICE)
    assert len(faces) == 1 and seen == [(torch.Tensor, DEVICE)] * 2
    assert np.abs((result - expected).numpy()).max() <= TOLERANCE
    assert np.abs((mask - expected_mask).numpy()).max() <= MASK_TOLERANCE
    assert torch.equal(result[1:], frames[1:])  # frames without faces pass through untouched


def test_separate_paths_on_a_device_agree(photos):
    image, face = photos["astronaut.png"]
    frames = torch.from_numpy(image[None].copy())
    faces = pipeline.FaceSet((dataclasses.replace(align_face(face, crop_size=512),
                                                  frame_fingerprint=None),), 1, 512, "stand-in", 1)
    crops = pipeline.warp_crops(frames, faces)
    on_device = pipeline.warp_crops(frames, faces, pixels=ON_DEVICE)
    assert on_device.device.type == "cpu" and (on_device - crops).abs().max() <= TOLERANCE
    expected, _ = pipeline.paste_back(frames, crops, faces, PasteSettings())
    result, _ = pipeline.paste_back(frames, crops, faces, PasteSettings(), pixels=ON_DEVICE)
    assert (result - expected).abs().max() <= TOLERANCE


def test_only_cuda_without_lanczos_takes_the_torch_backend():
    assert choose_pixels("cuda", "lanczos") is OPENCV_PIXELS
    assert choose_pixels("cpu") is OPENCV_PIXELS and choose_pixels(None) is OPENCV_PIXELS
    assert choose_pixels("mps") is OPENCV_PIXELS
    chosen = choose_pixels("cuda:1")
    assert isinstance(chosen, TorchPixels) and chosen.device == torch.device("cuda:1")
    with pytest.raises(ValueError, match="lanczos"):
        torch_pixels.warp_face(torch.zeros(8, 8, 3), align_face(_tiny_face(), crop_size=8), interpolation="lanczos")


def test_stream_smooths_colour_statistics_held_as_tensors(photos):
    image, face = photos["grace_hopper.jpg"]
    aligned = dataclasses.replace(align_face(face, crop_size=256), track_id=0)
    crop = torch.from_numpy(warp_face(image, aligned)).to(DEVICE)
    out = {}
    stream = PasteStream(PasteSettings(), lambda i, frame, mask: out.__setitem__(i, (frame, mask)), shots=[(0, 3)],
                         pixels=ON_DEVICE)
    for index in range(3):
        frame = torch.from_numpy(np.clip(image + 0.02 * index, 0, 1).astype(np.float32)).to(DEVICE)
        stream.push(index, frame, [crop], [aligned.with_frame(index)])
    stream.finish()
    assert sorted(out) == [0, 1, 2]
    assert all(isinstance(frame, np.ndarray) and isinstance(mask, np.ndarray) for frame, mask in out.values())


def _tiny_face():
    from comfyui_gpen_restore.face_utils.records import FaceRecord

    return FaceRecord(frame_index=0, image_size_hw=(8, 8), box_xyxy=(1.0, 1.0, 7.0, 7.0), score=1.0,
                      landmarks_xy=((2.5, 3.0), (5.5, 3.0), (4.0, 4.5), (3.0, 6.0), (5.0, 6.0)))
