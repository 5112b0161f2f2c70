"""Node contracts with ComfyUI replaced by the doubles in comfy_doubles.py: definitions, folder registration,
loading, model management, progress, interruption, and the errors users see."""

from __future__ import annotations

import logging
import shutil
import urllib.error

import numpy as np
import pytest
import torch
from comfy_doubles import InterruptProcessingException
from nodes_support import DETECTOR, astronaut, comfy, grace, image_batch, models_dir, pack  # noqa: F401

SOCKET_TYPES = {"IMAGE", "MASK", "GPEN_MODEL", "FACE_DETECTOR", "GPEN_FACES"}


def load_model(pack, name="GPEN-BFR-64.pth", precision="auto", compile=False):
    return pack.nodes.GPENModelLoader().load(name, precision, compile)[0]


def load_detector(pack, name=DETECTOR):
    return pack.nodes.GPENFaceDetectorLoader().load(name)[0]


def detect(pack, image, detector, *, face_size=128, gpen_model=None, **overrides):
    settings = {"template": "gpen", "score_threshold": 0.9, "order": "largest", "face_index": "all",
                "max_faces": 0, **overrides}
    return pack.nodes.GPENDetectFaces().detect(image, detector, face_size, gpen_model=gpen_model, **settings)


def paste(pack, image, crops, faces, **overrides):
    settings = {"mask_shape": "ellipse", "erosion": 0.04, "feather": 0.1, "color_correction": True,
                "opacity": 1.0, **overrides}
    return pack.nodes.GPENPasteFaces().paste(image, crops, faces, **settings)


def one_node(pack, image, model, detector, **overrides):
    settings = {"strength": 0.8, "score_threshold": 0.9, "order": "largest", "face_index": "all", "max_faces": 0,
                "template": "gpen", "mask_shape": "ellipse", "erosion": 0.04, "feather": 0.1,
                "color_correction": True, **overrides}
    return pack.nodes.GPENRestoreFacesOneNode().restore(image, model, detector, **settings)


# --- definitions -----------------------------------------------------------------------------------------------


def test_node_ids_are_prefixed_and_named(pack):
    mappings, names = pack.NODE_CLASS_MAPPINGS, pack.NODE_DISPLAY_NAME_MAPPINGS
    assert len(mappings) == 6
    assert all(node_id.startswith("GPEN") for node_id in mappings)
    assert set(names) == set(mappings)


@pytest.mark.parametrize("node_id", ["GPENModelLoader", "GPENFaceDetectorLoader", "GPENDetectFaces",
                                     "GPENRestoreFaces", "GPENPasteFaces", "GPENRestoreFacesOneNode"])
def test_every_node_describes_itself_and_every_input(pack, node_id):
    cls = pack.NODE_CLASS_MAPPINGS[node_id]
    assert len(cls.DESCRIPTION) > 40
    assert callable(getattr(cls, cls.FUNCTION))
    assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS)
    inputs = cls.INPUT_TYPES()
    assert set(inputs) <= {"required", "optional"}
    for section in inputs.values():
        for name, (kind, options) in section.items():
            assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
            assert isinstance(kind, list) or kind in SOCKET_TYPES | {"INT", "FLOAT", "STRING", "BOOLEAN"}
            if isinstance(kind, list):
                assert options["default"] in kind


def test_listing_inputs_loads_and_downloads_nothing(pack, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("INPUT_TYPES must not load or download anything")

    monkeypatch.setattr(pack.nodes, "load_gpen", forbidden)
    monkeypatch.setattr(pack.nodes, "load_detector", forbidden)
    monkeypatch.setattr(pack.nodes, "load_face_parser", forbidden)
    monkeypatch.setattr(torch.hub, "download_url_to_file", forbidden)
    for cls in pack.NODE_CLASS_MAPPINGS.values():
        cls.INPUT_TYPES()
    models = pack.nodes.GPENModelLoader.INPUT_TYPES()["required"]["model_name"]
    assert models[0] == ["GPEN-BFR-64.pth"]


# --- model folders ---------------------------------------------------------------------------------------------


def test_model_folders_are_registered_under_models_dir(pack, comfy):
    fp = comfy.modules["folder_paths"]
    paths, extensions = fp.folder_names_and_paths["facerestore_models"]
    assert paths == [str(comfy.models_dir / "facerestore_models")]
    assert {".pth", ".pt", ".safetensors", ".onnx"} <= set(extensions)
    assert fp.folder_names_and_paths["facedetection"][0] == [str(comfy.models_dir / "facedetection")]


def test_registration_keeps_folders_others_registered_and_lists_onnx(monkeypatch, comfy, tmp_path, fixtures_dir):
    from comfy_doubles import import_pack_with_comfy

    # ReActor registers facerestore_models with torch extensions only; extra_model_paths.yaml adds a folder.
    extra = tmp_path / "shared_models" / "facerestore_models"
    extra.mkdir(parents=True)
    shutil.copy(fixtures_dir / "gpen" / "case_64.onnx", extra / "GPEN-BFR-64.onnx")
    comfy.registered_before = {"facerestore_models": ([str(extra)], {".pth", ".pt", ".safetensors"})}
    pack = import_pack_with_comfy(monkeypatch, comfy)
    paths, extensions = comfy.modules["folder_paths"].folder_names_and_paths["facerestore_models"]
    assert paths == [str(extra), str(comfy.models_dir / "facerestore_models")]
    assert ".onnx" in extensions and ".pth" in extensions
    options = pack.nodes.GPENModelLoader.INPUT_TYPES()["required"]["model_name"][0]
    assert options == ["GPEN-BFR-64.onnx", "GPEN-BFR-64.pth"]


def test_model_list_offers_the_largest_gpen_first(pack, comfy):
    for name in ("GFPGANv1.4.pth", "GPEN-BFR-512.pth", "GPEN-BFR-2048.pth", "codeformer.pth"):
        (comfy.models_dir / "facerestore_models" / name).write_bytes(b"")
    model_name = pack.nodes.GPENModelLoader.INPUT_TYPES()["required"]["model_name"]
    assert model_name[1]["default"] == "GPEN-BFR-2048.pth"


def test_empty_model_folder_says_where_to_put_and_get_models(pack, comfy):
    shutil.rmtree(comfy.models_dir / "facerestore_models")
    options, _ = pack.nodes.GPENModelLoader.INPUT_TYPES()["required"]["model_name"]
    assert options == [pack.nodes.NO_MODELS]
    with pytest.raises(FileNotFoundError) as error:
        load_model(pack, options[0])
    message = str(error.value)
    assert "Load GPEN model" in message
    assert str(comfy.models_dir / "facerestore_models") in message
    assert "GPEN-BFR-512.pth" in message and "modelscope" in message


def test_a_file_that_is_not_gpen_is_refused_clearly(pack, comfy):
    torch.save({"conv.weight": torch.zeros(3)}, comfy.models_dir / "facerestore_models" / "GFPGANv1.4.pth")
    with pytest.raises(ValueError, match="Not a GPEN checkpoint"):
        load_model(pack, "GFPGANv1.4.pth")


# --- model loading and management ------------------------------------------------------------------------------


@pytest.mark.parametrize(("precision", "fp16", "bf16", "expected"), [
    ("auto", False, False, torch.float32),
    ("auto", True, False, torch.float16),
    ("auto", False, True, torch.bfloat16),
    ("fp32", True, True, torch.float32),
    ("bf16", False, False, torch.bfloat16),
])
def test_precision_follows_comfy_model_management(pack, comfy, precision, fp16, bf16, expected):
    comfy.use_fp16, comfy.use_bf16 = fp16, bf16
    model = load_model(pack, precision=precision)
    assert model.dtype == expected
    assert next(model.module.parameters()).dtype == expected
    assert model.size == 64


def test_model_is_placed_by_a_model_patcher(pack, comfy):
    model = load_model(pack)
    assert model.patcher is comfy.patchers[-1]
    assert model.patcher.model is model.module
    assert model.patcher.load_device == comfy.device
    assert not comfy.load_calls  # loading the file does not occupy the GPU; running does


def test_restore_asks_model_management_to_load_the_model(pack, comfy, grace):
    model = load_model(pack)
    crops = torch.rand(3, 64, 64, 3)
    restored = pack.nodes.GPENRestoreFaces().restore(model, crops, 1.0)[0]
    assert restored.shape == (3, 64, 64, 3)
    (call,) = comfy.load_calls
    assert call["models"] == [model.patcher]
    assert call["force_full_load"] is True  # GPEN's layers cannot run partially offloaded
    assert call["memory_required"] > 0


def test_onnx_model_runs_without_a_patcher(pack, comfy, fixtures_dir):
    shutil.copy(fixtures_dir / "gpen" / "case_64.onnx", comfy.models_dir / "facerestore_models" / "case_64.onnx")
    model = load_model(pack, "case_64.onnx", precision="fp16")
    assert model.patcher is None and model.dtype == torch.float32 and model.size == 64
    restored = pack.nodes.GPENRestoreFaces().restore(model, torch.rand(2, 64, 64, 3), 1.0)[0]
    assert restored.shape == (2, 64, 64, 3)
    assert not comfy.load_calls


def test_onnx_model_gets_the_torch_device(pack):
    """onnxruntime picks CUDA from where the input is, so the pipeline must not pin ONNX models to the CPU."""
    seen = []

    class OnnxLike(torch.nn.Module):
        size = 64

        def forward(self, x):
            seen.append((x.device, x.dtype))
            return torch.zeros(x.shape)

    pack.pipeline.restore_crops(OnnxLike(), torch.rand(1, 64, 64, 3), device=torch.device("meta"),
                                dtype=torch.float16)
    assert seen == [(torch.device("meta"), torch.float32)]  # the device kept, the dtype onnxruntime's


# --- restore node ----------------------------------------------------------------------------------------------


def test_restore_output_is_the_model_output_in_image_layout(pack):
    model = load_model(pack)
    crops = torch.rand(2, 64, 64, 3)
    restored = pack.nodes.GPENRestoreFaces().restore(model, crops, 1.0)[0]
    with torch.no_grad():
        expected = model.module(crops.permute(0, 3, 1, 2) * 2 - 1)
    expected = ((expected + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    torch.testing.assert_close(restored, expected, atol=1e-5, rtol=0)


def test_restore_resizes_any_crop_size_and_strength_zero_keeps_the_input(pack):
    model = load_model(pack)
    crops = torch.rand(1, 100, 100, 3)
    unchanged = pack.nodes.GPENRestoreFaces().restore(model, crops, 0.0)[0]
    resized = torch.nn.functional.interpolate(crops.permute(0, 3, 1, 2), size=(64, 64), mode="bicubic",
                                              antialias=True).clamp(0, 1).permute(0, 2, 3, 1)
    assert unchanged.shape == (1, 64, 64, 3)
    torch.testing.assert_close(unchanged, resized, atol=1e-6, rtol=0)


def test_restore_blends_with_strength(pack):
    model = load_model(pack)
    crops = torch.rand(1, 64, 64, 3)
    node = pack.nodes.GPENRestoreFaces()
    full, half = node.restore(model, crops, 1.0)[0], node.restore(model, crops, 0.5)[0]
    torch.testing.assert_close(half, 0.5 * full + 0.5 * crops, atol=1e-5, rtol=0)


def test_restore_reports_progress_per_face(pack, comfy):
    model = load_model(pack)
    comfy.free_memory = 1  # forces one face per batch
    pack.nodes.GPENRestoreFaces().restore(model, torch.rand(3, 64, 64, 3), 0.8)
    (bar,) = comfy.progress
    assert bar.total == 3 and bar.values == [1, 2, 3]


def test_restore_stops_between_faces_when_interrupted(pack, comfy):
    model = load_model(pack)
    comfy.free_memory = 1
    comfy.interrupt_after_checks = 1  # the user cancels while the first face is restored
    with pytest.raises(InterruptProcessingException):
        pack.nodes.GPENRestoreFaces().restore(model, torch.rand(3, 64, 64, 3), 0.8)
    assert comfy.progress[0].values == [1]


def test_restore_batches_as_many_faces_as_memory_allows(pack, comfy, monkeypatch):
    cuda = torch.device("cuda")  # only the decision is tested: no GPU needed
    per_face = pack.pipeline.face_memory_bytes(64, torch.float32)
    assert pack.pipeline.batch_size_for(64, torch.float32, 8 << 30, 5, device=cuda) == 5
    assert pack.pipeline.batch_size_for(64, torch.float32, 2 * per_face, 5, device=cuda) == 1
    assert pack.pipeline.batch_size_for(64, torch.float32, 8 << 30, 50, device=cuda) == pack.pipeline.MAX_BATCH_SIZE
    model = load_model(pack)
    batches = []
    forward = model.module.forward
    monkeypatch.setattr(model.module, "forward", lambda x: batches.append(x.shape[0]) or forward(x))
    pack.nodes.GPENRestoreFaces().restore(model, torch.rand(5, 64, 64, 3), 0.8)
    assert batches == [1, 1, 1, 1, 1]  # on the CPU: one face at a time, whatever memory is free


def test_restore_runs_where_model_management_left_the_weights(pack, comfy):
    comfy.device = torch.device("meta")  # the nominal load device, where nothing could run
    model = load_model(pack)
    assert model.patcher.load_device == torch.device("meta")
    comfy.novram = True  # --novram: ComfyUI keeps the weights on the offload device (the CPU here)
    restored = pack.nodes.GPENRestoreFaces().restore(model, torch.rand(2, 64, 64, 3), 1.0)[0]
    assert restored.shape == (2, 64, 64, 3) and torch.isfinite(restored).all()


def test_model_overflow_raises_instead_of_pasting_garbage(pack, monkeypatch):
    model = load_model(pack)
    monkeypatch.setattr(model.module, "forward", lambda x: torch.full_like(x, float("nan")))
    with pytest.raises(FloatingPointError, match="precision fp32"):
        pack.nodes.GPENRestoreFaces().restore(model, torch.rand(1, 64, 64, 3), 0.8)


def test_inference_failure_raises_instead_of_returning_unrestored_faces(pack, monkeypatch):
    model = load_model(pack)

    def broken(x):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(model.module, "forward", broken)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        pack.nodes.GPENRestoreFaces().restore(model, torch.rand(1, 64, 64, 3), 0.8)


def test_restore_refuses_non_square_crops(pack):
    with pytest.raises(ValueError, match="Restore faces .*square"):
        pack.nodes.GPENRestoreFaces().restore(load_model(pack), torch.rand(1, 64, 48, 3), 0.8)


# --- detector loader and detect node ---------------------------------------------------------------------------


def test_detector_choice_really_changes_the_detector(pack, comfy, monkeypatch):
    first = load_detector(pack)
    assert first.name == DETECTOR
    assert load_detector(pack) is not first  # no cached global helper
    # YuNet's weights are not in the folder: it is downloaded on first use, never while listing inputs.

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    # All downloads go through torch.hub; failing it there keeps this test off the network.
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RuntimeError, match="face_detection_yunet_2023mar.onnx.*facedetection"):
        load_detector(pack, "yunet")


def test_detector_waits_on_the_offload_device_and_works_on_the_torch_device(pack, comfy, grace, monkeypatch):
    detector = load_detector(pack)
    moves = []
    monkeypatch.setattr(detector, "to", lambda device: moves.append(str(device)) or detector)
    comfy.device = torch.device("meta")  # a device name that cannot be confused with the offload device
    monkeypatch.setattr(detector, "detect", lambda *args, **kwargs: [])
    detect(pack, image_batch(grace), detector)
    assert moves == ["meta", "cpu"]
    assert comfy.free_memory_calls == [(pack.nodes.DETECTOR_MEMORY_BYTES, torch.device("meta"))]  # room first
    moves.clear()
    monkeypatch.setattr(detector, "detect", lambda *args, **kwargs: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        detect(pack, image_batch(grace), detector)
    assert moves == ["meta", "cpu"]  # given back on errors too


def test_detect_finds_aligns_and_previews_a_face(pack, grace):
    image = image_batch(grace)
    crops, faces, preview = detect(pack, image, load_detector(pack), face_size=128)
    assert crops.shape == (1, 128, 128, 3)
    (face,) = faces
    assert face.frame_index == 0 and face.crop_size == 128 and face.image_size_hw == (600, 512)
    assert preview.shape == image.shape
    changed = (preview - image).abs().amax(dim=-1)[0] > 0.1
    x0, y0, x1, y1 = (round(v) for v in face.box_xyxy)
    assert changed[y0 - 2 : y0 + 3, x0:x1].any()  # the box's top edge is drawn
    assert not changed[:, : max(x0 - 20, 1)].any()  # nothing drawn far from the face


def test_detect_crops_at_the_connected_models_size(pack, grace):
    crops, faces, _ = detect(pack, image_batch(grace), load_detector(pack), face_size=512,
                             gpen_model=load_model(pack))
    assert crops.shape == (1, 64, 64, 3)
    assert faces[0].crop_size == 64


def test_detect_records_the_frame_of_every_face(pack, grace):
    blank = np.full_like(grace, 0.5)
    image = image_batch(grace, blank, grace[:, ::-1].copy())
    crops, faces, preview = detect(pack, image, load_detector(pack))
    assert [f.frame_index for f in faces] == [0, 2]
    assert crops.shape[0] == 2 and preview.shape == image.shape


def test_detect_without_faces_gives_an_empty_batch_and_says_so(pack, caplog):
    image = torch.full((1, 256, 256, 3), 0.5)
    with caplog.at_level(logging.WARNING):
        crops, faces, preview = detect(pack, image, load_detector(pack), face_size=128)
    assert crops.shape == (1, 128, 128, 3) and not crops.any() and faces == ()  # one black placeholder
    torch.testing.assert_close(preview, image, atol=0.5 / 255 + 1e-6, rtol=0)  # the preview is 8-bit
    assert "no face found in 1 frame(s)" in caplog.text


def test_detect_rejects_a_malformed_face_index(pack, grace):
    with pytest.raises(ValueError, match="Detect and align faces.*'0,2'"):
        detect(pack, image_batch(grace), load_detector(pack), face_index="first")


def test_detect_selects_faces_by_index(pack, grace):
    wide = np.concatenate([grace, grace[:, ::-1]], axis=1)  # two faces side by side
    _, faces, _ = detect(pack, image_batch(wide), load_detector(pack), order="left_to_right", face_index="1")
    (face,) = faces
    assert face.box_xyxy[0] > grace.shape[1]


# --- paste node ------------------------------------------------------------------------------------------------


def test_paste_of_unchanged_crops_gives_back_the_image_and_a_face_mask(pack, grace):
    image = image_batch(grace)
    crops, faces, _ = detect(pack, image, load_detector(pack), face_size=256)
    out, mask = paste(pack, image, crops, faces, color_correction=False)
    assert out.shape == image.shape and mask.shape == (1, 600, 512)
    inside = mask[0] > 0.5
    assert inside.sum() > 5000
    assert (out - image).abs()[0][inside].mean() < 0.02
    x0, y0, x1, y1 = faces[0].box_xyxy
    assert mask[0, int((y0 + y1) / 2), int((x0 + x1) / 2)] == 1.0
    assert mask[0, :20].max() == 0 and torch.equal(out[0, :20], image[0, :20])


def test_paste_onto_an_upscaled_copy(pack, grace):
    image = image_batch(grace)
    crops, faces, _ = detect(pack, image, load_detector(pack))
    big = torch.nn.functional.interpolate(image.permute(0, 3, 1, 2), scale_factor=2).permute(0, 2, 3, 1)
    out, mask = paste(pack, big, crops, faces)
    assert out.shape == (1, 1200, 1024, 3) and mask.shape == (1, 1200, 1024)
    assert mask.sum() > 4 * 5000


def test_paste_refuses_crops_and_faces_of_different_counts(pack, grace):
    image = image_batch(grace)
    crops, faces, _ = detect(pack, image, load_detector(pack))
    with pytest.raises(ValueError, match="Paste faces back: Got 2 face crop.*1 face record.*Detect and align faces"):
        paste(pack, image, torch.cat([crops, crops]), faces)


def test_paste_refuses_faces_from_an_image_of_another_size(pack, grace, astronaut):
    crops, faces, _ = detect(pack, image_batch(grace), load_detector(pack))
    with pytest.raises(ValueError, match=r"Paste faces back: .*512x600 \(w x h\) image but the canvas is 512x512"):
        paste(pack, image_batch(astronaut), crops, faces)


def test_paste_refuses_faces_from_frames_the_batch_does_not_have(pack, grace):
    crops, faces, _ = detect(pack, image_batch(grace, grace), load_detector(pack))
    with pytest.raises(ValueError, match="frame 1 but the image has 1 frame"):
        paste(pack, image_batch(grace), crops, faces)


def test_paste_without_faces_passes_the_image_through(pack, grace, caplog):
    image = image_batch(grace)
    with caplog.at_level(logging.WARNING):
        out, mask = paste(pack, image, torch.zeros(1, 64, 64, 3), ())  # Detect's placeholder crop
    assert torch.equal(out, image) and not mask.any()
    assert "no faces to paste" in caplog.text


# --- one node --------------------------------------------------------------------------------------------------


def test_one_node_equals_the_separate_nodes(pack, grace):
    image = image_batch(grace)
    model, detector = load_model(pack), load_detector(pack)
    crops, faces, _ = detect(pack, image, detector, gpen_model=model)
    restored = pack.nodes.GPENRestoreFaces().restore(model, crops, 0.8)[0]
    expected, expected_mask = paste(pack, image, restored, faces)
    out, mask = one_node(pack, image, model, detector)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(mask, expected_mask)
    assert (out - image).abs().amax() > 0.1  # the face really changed


def test_one_node_streams_frame_by_frame(pack, comfy, grace, monkeypatch):
    model, detector = load_model(pack), load_detector(pack)
    blank = np.full_like(grace, 0.5)
    image = image_batch(grace, blank, grace)
    batches = []
    forward = model.module.forward
    monkeypatch.setattr(model.module, "forward", lambda x: batches.append(x.shape[0]) or forward(x))
    out, mask = one_node(pack, image, model, detector)
    assert batches == [1, 1]  # one frame's faces at a time
    assert torch.equal(out[1], image[1]) and not mask[1].any()
    assert mask[0].any() and mask[2].any()
    (bar,) = comfy.progress
    assert bar.values[-1] == bar.total == 3
    assert len(comfy.load_calls) == 1


def test_one_node_without_faces_passes_through_and_says_so(pack, caplog):
    image = torch.full((2, 128, 160, 3), 0.25)
    with caplog.at_level(logging.WARNING):
        out, mask = one_node(pack, image, load_model(pack), load_detector(pack))
    assert torch.equal(out, image) and mask.shape == (2, 128, 160) and not mask.any()
    assert "no face found in 2 frame(s)" in caplog.text


def test_one_node_stops_when_interrupted(pack, comfy, grace):
    comfy.interrupt_after_checks = 2
    with pytest.raises(InterruptProcessingException):
        one_node(pack, image_batch(grace, grace, grace), load_model(pack), load_detector(pack))
    assert comfy.progress[0].values[-1] < 3


def test_grey_and_rgba_images_keep_their_channels(pack, grace):
    model, detector = load_model(pack), load_detector(pack)
    rgba = np.concatenate([grace, np.full(grace.shape[:2] + (1,), 0.7, np.float32)], axis=-1)
    out, _ = one_node(pack, image_batch(rgba), model, detector)
    assert out.shape == (1, 600, 512, 4)
    torch.testing.assert_close(out[..., 3], torch.full((1, 600, 512), 0.7))
    grey = grace.mean(axis=-1, keepdims=True)
    out, mask = one_node(pack, image_batch(grey), model, detector)
    assert out.shape == (1, 600, 512, 1) and mask.any()


def test_compile_switch_compiles_the_network_in_place(pack, comfy, monkeypatch):
    compiled = []
    monkeypatch.setattr(pack.gpen_arch.GPEN, "compile", lambda self, *a, **k: compiled.append(self), raising=False)
    model = load_model(pack, compile=True)
    assert compiled == [model.module]  # the same module the patcher places, so its weights still move with it
    assert load_model(pack, compile=False) and len(compiled) == 1
