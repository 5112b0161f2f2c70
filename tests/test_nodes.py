"""Node contracts in-process with ComfyUI's real modules (`comfy.model_management`, `comfy.model_patcher`,
`comfy.utils`, `folder_paths`, `comfy_api.latest`): V3 schemas, the inputs saved workflows rely on, model
placement and freeing, progress, interruption, and the defects found when the nodes were tried as a user would."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from support import DETECTOR, DETECTOR_FILE, face_landmarks, image_batch, save_gpen

import comfyui_gpen_restore
from comfyui_gpen_restore.face_utils import FaceRecord

# What saved workflows depend on (ids, input names in order, defaults): the nodes as the pack first shipped them.
# Inputs added later may only be appended as optional sockets.
SAVED_INPUTS = {
    "GPENModelLoader": [("model_name", None), ("precision", "auto"), ("compile", False)],
    "GPENFaceDetectorLoader": [("detector", "retinaface_resnet50")],
    "GPENDetectFaces": [("image", None), ("face_detector", None), ("face_size", 512), ("template", "gpen"),
                        ("score_threshold", 0.9), ("order", "largest"), ("face_index", "all"), ("max_faces", 0),
                        ("gpen_model", None)],
    "GPENRestoreFaces": [("gpen_model", None), ("face_crops", None), ("strength", 0.8)],
    "GPENPasteFaces": [("image", None), ("face_crops", None), ("faces", None), ("mask_shape", "ellipse"),
                       ("erosion", 0.04), ("feather", 0.1), ("color_correction", True), ("opacity", 1.0)],
    "GPENRestoreFacesOneNode": [
        ("image", None), ("gpen_model", None), ("face_detector", None), ("strength", 0.8), ("score_threshold", 0.9),
        ("order", "largest"), ("face_index", "all"), ("max_faces", 0), ("template", "gpen"), ("mask_shape", "ellipse"),
        ("erosion", 0.04), ("feather", 0.1), ("color_correction", True)],
}
SAVED_OUTPUTS = {
    "GPENModelLoader": ["GPEN_MODEL"], "GPENFaceDetectorLoader": ["FACE_DETECTOR"],
    "GPENDetectFaces": ["IMAGE", "GPEN_FACES", "IMAGE"], "GPENRestoreFaces": ["IMAGE"],
    "GPENPasteFaces": ["IMAGE", "MASK"], "GPENRestoreFacesOneNode": ["IMAGE", "MASK"],
}
# Two routes through the same computations (the same GPEN batches, the same resize): equal to the bit on every
# kernel setting tried (tests/NUMERICS.md); 1e-6 is 8-16 float32 ulps of values in 0..1. Another strength or crop
# shows as 1e-2 and more. (Routes batching GPEN differently would need test_gpen_arch's REORDER_TOLERANCE.)
SAME_ROUTE_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def comfy(comfy_inprocess):
    return comfy_inprocess


@pytest.fixture(scope="module")
def nodes(comfy):
    """The pack's nodes module, after ComfyUI's entry point ran (folders registered, extension built)."""
    extension = asyncio.run(comfyui_gpen_restore.comfy_entrypoint())
    from comfyui_gpen_restore import nodes as module

    assert isinstance(extension, module.ComfyExtension)
    return module


@pytest.fixture
def models(nodes, comfy, tmp_path, fixtures_dir, monkeypatch) -> Path:
    """ComfyUI's model folders pointed at a temporary models folder: GPEN-BFR-64.pth and the fixture detector."""
    root = tmp_path / "models"
    save_gpen(root / "facerestore_models" / "GPEN-BFR-64.pth", 64)
    (root / "facedetection").mkdir(parents=True)
    shutil.copy(fixtures_dir / "facedetection" / DETECTOR_FILE, root / "facedetection" / DETECTOR_FILE)
    folders = comfy.folder_paths.folder_names_and_paths
    for name in ("facerestore_models", "facedetection"):
        monkeypatch.setitem(folders, name, ([str(root / name)], set(folders[name][1])))
    return root


@pytest.fixture
def model(nodes, models):
    # fp32 explicitly: "auto" depends on the CPU (bf16 where it is native), and these tests compare numbers.
    return run(nodes.GPENModelLoader, "GPEN-BFR-64.pth", "fp32", False).result[0]


@pytest.fixture
def detector(nodes, models):
    return run(nodes.GPENFaceDetectorLoader, DETECTOR).result[0]


@pytest.fixture
def progress_events(comfy):
    """Every update of ComfyUI's real ProgressBar, through its global hook."""
    events: list[tuple[int, int]] = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: events.append((value, total)))
    yield events
    comfy.utils.set_progress_bar_global_hook(None)


def run(node: type, *args, **kwargs):
    """`node.execute` the way ComfyUI's executor calls it: on the locked clone of the class it prepares."""
    return node.PREPARE_CLASS_CLONE(None).execute(*args, **kwargs)


def node_list(nodes) -> list[type]:
    return asyncio.run(nodes.GPENExtension().get_node_list())


def detect(nodes, image, detector, model=None, **overrides):
    settings = {"face_size": 512, "template": "gpen", "score_threshold": 0.9, "order": "largest",
                "face_index": "all", "max_faces": 0, **overrides}
    return run(nodes.GPENDetectFaces, image, detector, gpen_model=model, **settings).result


def paste(nodes, image, crops, faces, **overrides):
    settings = {"mask_shape": "ellipse", "erosion": 0.04, "feather": 0.1, "color_correction": True, "opacity": 1.0,
                **overrides}
    return run(nodes.GPENPasteFaces, image, crops, faces, **settings).result


def one_node(nodes, image, model, detector, **overrides):
    settings = {"strength": 0.8, "score_threshold": 0.9, "order": "largest", "face_index": "all", "max_faces": 0,
                "template": "gpen", "mask_shape": "ellipse", "erosion": 0.04, "feather": 0.1,
                "color_correction": True, **overrides}
    return run(nodes.GPENRestoreFacesOneNode, image, model, detector, **settings).result


# --- schemas and registration ----------------------------------------------------------------------------------


def test_the_pack_hands_comfyui_a_v3_extension_and_no_v1_mappings(nodes):
    assert not hasattr(comfyui_gpen_restore, "NODE_CLASS_MAPPINGS")  # ComfyUI would ignore comfy_entrypoint
    assert [cls.GET_SCHEMA().node_id for cls in node_list(nodes)] == list(SAVED_INPUTS)


def test_every_module_has_one_import_name(nodes, model):
    assert not {"gpen_arch", "face_utils", "pipeline", "conversion", "cli"} & set(sys.modules)
    from comfyui_gpen_restore.gpen_arch import GpenRunner

    assert isinstance(model.runner, GpenRunner)


@pytest.mark.parametrize("node_id", list(SAVED_INPUTS))
def test_schema_is_valid_and_keeps_what_saved_workflows_use(nodes, models, node_id):
    cls = next(c for c in node_list(nodes) if c.GET_SCHEMA().node_id == node_id)
    schema = cls.GET_SCHEMA()
    schema.validate()
    assert schema.display_name == nodes.TITLES[node_id] and schema.description
    info = cls.GET_NODE_INFO_V1()
    order = info["input_order"]["required"] + info["input_order"].get("optional", [])
    assert order[: len(SAVED_INPUTS[node_id])] == [name for name, _ in SAVED_INPUTS[node_id]]
    assert all(name in info["input"].get("optional", {}) for name in order[len(SAVED_INPUTS[node_id]):])
    specs = {**info["input"]["required"], **info["input"].get("optional", {})}
    for name, default in SAVED_INPUTS[node_id]:
        options = specs[name][1] if len(specs[name]) > 1 else {}
        assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
        if default is not None:
            assert options.get("default") == default, f"{node_id}.{name}"
    assert list(info["output"]) == SAVED_OUTPUTS[node_id]
    assert all(info["output_tooltips"])


def host_version() -> tuple[int, int]:
    return tuple(int(p) for p in importlib.import_module("comfyui_version").__version__.split(".")[:2])


# Expert settings of the one-node restore, folded away where the host can (0.33: "Show advanced inputs").
ADVANCED = {"max_faces", "template", "erosion", "feather", "temporal_smoothing", "max_gap", "detection_size",
            "luminance", "damage_grow", "damage_feather", "temporal_consistency"}


def test_the_nodes_use_what_the_host_offers(nodes, models):
    """On 0.33 and later: loaders beside core's, search aliases, expert inputs marked advanced; on 0.8.0 the same
    nodes load without them (its API takes neither keyword). Decided from the host's version here, independently
    of how the pack detects the features."""
    new_host = host_version() >= (0, 33)
    infos = {cls.GET_SCHEMA().node_id: cls.GET_NODE_INFO_V1() for cls in node_list(nodes)}
    core_loaders = importlib.import_module("nodes").CheckpointLoaderSimple.CATEGORY  # ComfyUI's own nodes.py
    assert core_loaders == ("model/loaders" if new_host else "loaders")
    assert infos["GPENModelLoader"]["category"] == infos["GPENFaceDetectorLoader"]["category"] == core_loaders
    one_node_inputs = {name: spec[1] for section in infos["GPENRestoreFacesOneNode"]["input"].values()
                       for name, spec in section.items() if len(spec) > 1}
    advanced = {name for name, options in one_node_inputs.items() if options.get("advanced")}
    assert advanced == (ADVANCED if new_host else set())
    for node_id, info in infos.items():
        aliases = info.get("search_aliases") or []
        assert bool(aliases) == new_host, node_id
    if new_host:
        assert {"face restore", "restoration"} <= set(infos["GPENRestoreFacesOneNode"]["search_aliases"])


def test_messages_and_tooltips_name_only_nodes_that_exist(nodes, models):
    texts = []
    for cls in node_list(nodes):
        info = cls.GET_NODE_INFO_V1()
        texts.append(info["description"])
        texts += [spec[1].get("tooltip", "") for section in info["input"].values() for spec in section.values()
                  if len(spec) > 1]
        texts += info["output_tooltips"]
    source = (Path(nodes.__file__).parents[1] / "face_utils" / "pipeline.py").read_text()
    named = {m for text in texts + [source] for m in re.findall(r"'([A-Z][^']+\([^']*\)|[A-Z][a-z]+ [^']+)'", text)}
    node_like = {n for n in named if any(w in n for w in ("faces", "GPEN", "model", "detector"))}
    assert node_like and node_like <= set(nodes.TITLES.values()), node_like - set(nodes.TITLES.values())


def test_model_folders_are_registered_keeping_what_others_registered(nodes, comfy, monkeypatch, tmp_path):
    folders = comfy.folder_paths.folder_names_and_paths
    reactor = str(tmp_path / "reactor_models")
    monkeypatch.setitem(folders, "facerestore_models", ([reactor], {".pth"}))
    monkeypatch.delitem(folders, "facedetection", raising=False)
    asyncio.run(comfyui_gpen_restore.comfy_entrypoint())
    paths, extensions = folders["facerestore_models"]
    assert paths[0] == reactor and os.path.join(comfy.folder_paths.models_dir, "facerestore_models") in paths
    assert {".pth", ".onnx", ".safetensors"} <= extensions
    assert folders["facedetection"][0] == [os.path.join(comfy.folder_paths.models_dir, "facedetection")]


# --- loading ---------------------------------------------------------------------------------------------------


def test_default_model_is_the_largest_gpen_by_content_not_by_name(nodes, models):
    folder = models / "facerestore_models"
    (folder / "GPEN-BFR-64.pth").unlink()
    save_gpen(folder / "GPEN-BFR-2048.pth", 64)  # named 2048, holds a 64
    save_gpen(folder / "portrait.pth", 128)
    (folder / "GPEN-BFR-4096.pth").write_bytes(b"not a checkpoint")
    options = nodes.GPENModelLoader.GET_NODE_INFO_V1()["input"]["required"]["model_name"][1]
    assert options["default"] == "portrait.pth"


def test_empty_model_folder_says_where_to_put_and_get_models(nodes, models):
    (models / "facerestore_models" / "GPEN-BFR-64.pth").unlink()
    options = nodes.GPENModelLoader.GET_NODE_INFO_V1()["input"]["required"]["model_name"][1]
    assert options["default"] == nodes.NO_MODELS
    with pytest.raises(FileNotFoundError, match=r"Load GPEN model: no model files.*facerestore_models.*GPEN-BFR-512"):
        run(nodes.GPENModelLoader, nodes.NO_MODELS, "auto", False)


def test_a_replaced_model_file_is_loaded_again(nodes, models):
    path = models / "facerestore_models" / "GPEN-BFR-64.pth"
    before = nodes.GPENModelLoader.fingerprint_inputs("GPEN-BFR-64.pth", "auto", False)
    save_gpen(path, 128)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert nodes.GPENModelLoader.fingerprint_inputs("GPEN-BFR-64.pth", "auto", False) != before
    assert run(nodes.GPENModelLoader, "GPEN-BFR-64.pth", "auto", False).result[0].size == 128


def test_model_is_placed_by_model_management_and_freed_by_unloading(nodes, comfy, model, grace, detector):
    mm = comfy.model_management
    assert isinstance(model.patcher, comfy.model_patcher.ModelPatcher)
    crops, _faces, _ = detect(nodes, image_batch(grace), detector, model)
    run(nodes.GPENRestoreFaces, model, crops, 0.8)
    assert any(loaded.model is model.patcher for loaded in mm.current_loaded_models)
    mm.unload_all_models()
    assert not any(loaded.model is model.patcher for loaded in mm.current_loaded_models)
    assert model.runner.weights_device == mm.unet_offload_device()


def test_auto_precision_on_this_cpu(nodes, models):
    from comfyui_gpen_restore.gpen_arch.runner import cpu_has_native_bf16

    model = run(nodes.GPENModelLoader, "GPEN-BFR-64.pth", "auto", False).result[0]
    assert model.runner.dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)


def test_explicit_precision_sets_the_weights_dtype(nodes, models):
    model = run(nodes.GPENModelLoader, "GPEN-BFR-64.pth", "bf16", False).result[0]
    assert model.runner.dtype == torch.bfloat16
    assert next(model.runner.module.parameters()).dtype == torch.bfloat16


def test_onnx_model_runs_without_a_patcher_in_fp32(nodes, models, fixtures_dir):
    shutil.copy(fixtures_dir / "gpen" / "case_64.onnx", models / "facerestore_models" / "case.onnx")
    model = run(nodes.GPENModelLoader, "case.onnx", "fp16", False).result[0]
    assert model.patcher is None and model.runner.is_onnx and model.runner.dtype == torch.float32
    out = run(nodes.GPENRestoreFaces, model, torch.rand(2, 64, 64, 3), 1.0).result[0]
    assert out.shape == (2, 64, 64, 3) and torch.isfinite(out).all()


def test_a_file_that_is_not_gpen_is_refused_clearly(nodes, models):
    (models / "facerestore_models" / "notes.pth").write_bytes(b"hello")
    with pytest.raises(ValueError, match="notes.pth"):
        run(nodes.GPENModelLoader, "notes.pth", "auto", False)


def test_compile_switch_compiles_the_network_in_place(nodes, models, monkeypatch):
    from comfyui_gpen_restore.gpen_arch import GPEN

    compiled = []
    monkeypatch.setattr(GPEN, "compile", lambda self, *a, **k: compiled.append(self))
    model = run(nodes.GPENModelLoader, "GPEN-BFR-64.pth", "auto", True).result[0]
    assert compiled == [model.runner.module]


# --- detect, restore, paste ------------------------------------------------------------------------------------


def test_detect_restore_paste_changes_only_the_face(nodes, model, detector, grace, progress_events):
    image = image_batch(grace)
    crops, faces, preview = detect(nodes, image, detector, model)
    assert crops.shape == (1, 64, 64, 3) and len(faces) == 1 and preview.shape == image.shape
    restored = run(nodes.GPENRestoreFaces, model, crops, 1.0, faces).result[0]
    assert progress_events and progress_events[-1] == (1, 1)
    out, mask = paste(nodes, image, restored, faces)
    assert mask.shape == image.shape[:3] and mask.max() == 1.0
    outside = mask[0] == 0
    assert torch.equal(out[0][outside], image[0][outside])
    assert (out[0] - image[0]).abs()[mask[0] > 0.99].mean() > 0.02


def test_one_node_equals_the_separate_nodes(nodes, model, detector, grace):
    image = image_batch(grace, grace[:, ::-1].copy())
    crops, faces, _ = detect(nodes, image, detector, model)
    restored = run(nodes.GPENRestoreFaces, model, crops, 0.8).result[0]
    separate, separate_mask = paste(nodes, image, restored, faces)
    together, together_mask = one_node(nodes, image, model, detector)
    torch.testing.assert_close(together, separate, atol=SAME_ROUTE_TOLERANCE, rtol=0)
    torch.testing.assert_close(together_mask, separate_mask, atol=SAME_ROUTE_TOLERANCE, rtol=0)


def test_a_model_that_restores_to_a_larger_size_works_through_every_node(nodes, models, detector, grace):
    """Upstream's FullGenerator_SR (64 in, 128 out): Detect cuts 64-px crops, Restore gives 128-px ones, Paste
    puts them back where they came from, and the one-node restore does the same."""
    save_gpen(models / "facerestore_models" / "GPEN-SR.pth", 64, out_size=128)
    model = run(nodes.GPENModelLoader, "GPEN-SR.pth", "fp32", False).result[0]
    image = image_batch(grace)
    crops, faces, _ = detect(nodes, image, detector, model)
    restored = run(nodes.GPENRestoreFaces, model, crops, 0.8).result[0]
    assert crops.shape[1:] == (64, 64, 3) and restored.shape[1:] == (128, 128, 3)
    separate, mask = paste(nodes, image, restored, faces)
    together, _ = one_node(nodes, image, model, detector)
    torch.testing.assert_close(together, separate, atol=SAME_ROUTE_TOLERANCE, rtol=0)
    assert (separate - image).abs().amax(dim=-1)[mask > 0.5].mean() > 0.02
    assert torch.equal(separate[mask == 0], image[mask == 0])


def test_on_video_the_separate_nodes_steady_restored_detail_as_the_one_node_does(nodes, model, detector, grace):
    """Temporal consistency (on by default) through Detect -> Restore (with `faces`) -> Paste gives what the
    one-node restore gives on a still 5-frame shot with fresh pixel noise in every frame; turned off on Restore,
    each frame is restored on its own, and the pasted faces change more from frame to frame."""
    rng = np.random.default_rng(0)
    image = image_batch(*[np.clip(grace + rng.normal(0, 0.02, grace.shape), 0, 1).astype(np.float32)
                          for _ in range(5)])
    crops, faces, _ = detect(nodes, image, detector, model)
    assert len(faces) == 5 and len({face.track_id for face in faces}) == 1
    steady = run(nodes.GPENRestoreFaces, model, crops, 0.8, faces).result[0]
    plain = run(nodes.GPENRestoreFaces, model, crops, 0.8, faces, temporal_consistency=False).result[0]
    separate, mask = paste(nodes, image, steady, faces)
    together, _ = one_node(nodes, image, model, detector)
    torch.testing.assert_close(together, separate, atol=SAME_ROUTE_TOLERANCE, rtol=0)
    unsteady, _ = paste(nodes, image, plain, faces)
    core = mask[0] > 0.99

    def flicker(frames: torch.Tensor) -> float:
        return float((frames[1:] - frames[:-1]).abs()[:, core].mean())

    assert flicker(separate) < 0.95 * flicker(unsteady)  # measured 0.87 (a small random GPEN invents little)
    with pytest.raises(ValueError, match=r"4 crop\(s\) but 5 face record\(s\): temporal consistency"):
        run(nodes.GPENRestoreFaces, model, crops[:4], 0.8, faces)


def test_core_face_landmarks_restore_as_the_detector_does(nodes, model, detector, grace):
    """Core ComfyUI's FACE_LANDMARKS in the detector's socket: the same faces give the same crops, records and
    restored picture, through the separate nodes and the one-node restore."""
    image = image_batch(grace, grace[:, ::-1].copy())
    crops, faces, _ = detect(nodes, image, detector, model)
    by_frame = [[f for f in faces if f.frame_index == i] for i in range(2)]
    landmarks = face_landmarks(by_frame, grace.shape[:2])
    given_crops, given_faces, _ = detect(nodes, image, landmarks, model)
    assert len(given_faces) == 2 and given_faces.detector != faces.detector
    torch.testing.assert_close(given_crops, crops, atol=SAME_ROUTE_TOLERANCE, rtol=0)
    together, _ = one_node(nodes, image, model, detector)
    given, _ = one_node(nodes, image, model, landmarks)
    torch.testing.assert_close(given, together, atol=SAME_ROUTE_TOLERANCE, rtol=0)


def test_the_face_socket_takes_core_comfyuis_landmark_type(nodes, models):
    """The type name is core's own where the host has its face nodes (0.33 and later), so their output links."""
    for cls in (nodes.GPENDetectFaces, nodes.GPENRestoreFacesOneNode):
        info = cls.GET_NODE_INFO_V1()
        assert info["input"]["required"]["face_detector"][0].split(",") == ["FACE_DETECTOR", "FACE_LANDMARKS"]
    if host_version() >= (0, 33):
        core = importlib.import_module("comfy_extras.nodes_mediapipe")
        assert core.MediaPipeFaceLandmarker.GET_SCHEMA().outputs[0].get_io_type() == "FACE_LANDMARKS"


# --- colourise ------------------------------------------------------------------------------------------------

# Luma of a pasted pixel against the original's (float32 rounding of a few products and sums in 0..1).
LUMA_TOLERANCE = 1e-6


def luma(image: torch.Tensor) -> torch.Tensor:
    return image[..., :3] @ torch.tensor([0.299, 0.587, 0.114])


@pytest.fixture
def colour_model(nodes, models, caplog):
    save_gpen(models / "facerestore_models" / "GPEN-Colorization-64.pth", 64, seed=3)
    with caplog.at_level(logging.INFO):
        model = run(nodes.GPENModelLoader, "GPEN-Colorization-64.pth", "fp32", False).result[0]
    assert "to colourise (guessed from the file name" in caplog.text
    return model


def test_the_task_is_guessed_from_the_file_name_or_chosen(nodes, models, colour_model):
    from comfyui_gpen_restore.gpen_arch.choices import guess_task

    assert colour_model.runner.task == "colourise"
    chosen = run(nodes.GPENModelLoader, "GPEN-Colorization-64.pth", "fp32", False, task="restore").result[0]
    assert chosen.runner.task == "restore"
    names = {"GPEN-BFR-2048.pth": "restore", "GPEN-Colorization-1024.pth": "colourise", "my_colour.onnx": "colourise",
             "GPEN-Inpainting-1024.pth": "repair", "face_repair.pth": "repair", "GPEN-512.pth": "restore"}
    assert {name: guess_task(name) for name in names} == names


def test_colourising_a_black_and_white_photo_adds_colour_inside_the_faces_only(nodes, colour_model, detector,
                                                                               grace, monkeypatch):
    seen = []
    real_forward = colour_model.runner.module.forward
    monkeypatch.setattr(colour_model.runner.module, "forward", lambda x: seen.append(x.clone()) or real_forward(x))
    photo = torch.from_numpy(grace) @ torch.tensor([0.299, 0.587, 0.114])
    image = photo[None, :, :, None].expand(1, *photo.shape, 3).contiguous()  # a black-and-white photo, as RGB
    out, mask = one_node(nodes, image, colour_model, detector, strength=1.0)
    assert seen and all(torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2]) for x in seen)  # grey in
    torch.testing.assert_close(luma(out), luma(image), atol=LUMA_TOLERANCE, rtol=0)
    assert torch.equal(out[mask == 0], image[mask == 0])
    chroma = (out - luma(out)[..., None]).abs().amax(dim=-1)
    assert chroma[mask > 0.99].mean() > 0.02 and chroma[mask == 0].max() <= LUMA_TOLERANCE  # colour, in faces only
    whole, _ = one_node(nodes, image, colour_model, detector, strength=1.0, luminance="model")
    assert (luma(whole) - luma(image)).abs().max() > 0.05  # the model's own luminance, when asked for


def test_colourised_crops_keep_their_own_luminance(nodes, colour_model):
    crops = torch.rand(2, 64, 64, 3)
    kept = run(nodes.GPENRestoreFaces, colour_model, crops, 1.0).result[0]
    torch.testing.assert_close(luma(kept), luma(crops), atol=LUMA_TOLERANCE, rtol=0)
    assert (kept - luma(kept)[..., None]).abs().mean() > 0.02
    whole = run(nodes.GPENRestoreFaces, colour_model, crops, 1.0, luminance="model").result[0]
    assert (luma(whole) - luma(crops)).abs().max() > 0.05


# --- repair ---------------------------------------------------------------------------------------------------


@pytest.fixture
def repair_model(nodes, models):
    save_gpen(models / "facerestore_models" / "GPEN-Inpainting-64.pth", 64, seed=4)
    model = run(nodes.GPENModelLoader, "GPEN-Inpainting-64.pth", "fp32", False).result[0]
    assert model.runner.task == "repair" and model.size == 64
    return model


def scratched(grace_face, shape) -> torch.Tensor:
    """A MASK [1, H, W]: a band across the face at eye height (1 = damaged)."""
    damage = torch.zeros(1, *shape)
    (x0, y0), (x1, _) = grace_face.landmarks_xy[:2]
    damage[0, round(y0) - 6 : round(y0) + 6, round(x0) - 20 : round(x1) + 20] = 1.0
    return damage


def test_repairing_through_the_separate_nodes_equals_the_one_node(nodes, repair_model, detector, grace,
                                                                   grace_face):
    image, damage = image_batch(grace), scratched(grace_face, grace.shape[:2])
    crops, faces, _ = detect(nodes, image, detector, repair_model, damage=damage)
    assert crops.shape == (1, 64, 64, 4) and (crops[..., :3][crops[..., 3] == 1] == 1).all()  # painted white
    restored = run(nodes.GPENRestoreFaces, repair_model, crops, 0.8).result[0]
    assert restored.shape == (1, 64, 64, 4)  # the paste weight as alpha
    separate, separate_mask = paste(nodes, image, restored, faces)
    together, together_mask = one_node(nodes, image, repair_model, detector, damage=damage)
    torch.testing.assert_close(together, separate, atol=SAME_ROUTE_TOLERANCE, rtol=0)
    torch.testing.assert_close(together_mask, separate_mask, atol=SAME_ROUTE_TOLERANCE, rtol=0)
    assert torch.equal(together[together_mask == 0], image[together_mask == 0])
    assert (together - image).abs()[damage > 0].mean() > 0.05  # the damage was replaced


def test_repair_inputs_that_do_not_fit_are_refused_clearly(nodes, repair_model, colour_model, detector, grace,
                                                           grace_face):
    image, damage = image_batch(grace), scratched(grace_face, grace.shape[:2])
    with pytest.raises(ValueError, match="is loaded to colourise: load a repairing model"):
        one_node(nodes, image, colour_model, detector, damage=damage)
    with pytest.raises(ValueError, match="repairs the damage it is shown: connect a mask to 'damage'"):
        one_node(nodes, image, repair_model, detector)
    with pytest.raises(ValueError, match="these crops carry none"):
        run(nodes.GPENRestoreFaces, repair_model, torch.rand(1, 64, 64, 3), 0.8)
    with pytest.raises(ValueError, match="the damage mask is 256x300, the picture 512x600"):
        one_node(nodes, image, repair_model, detector, damage=torch.zeros(1, 300, 256))


def test_no_face_never_runs_gpen_and_the_log_names_the_detector(nodes, model, detector, monkeypatch, caplog):
    calls = []
    monkeypatch.setattr(model.runner, "module", lambda x: calls.append(x) or x)
    blank = torch.full((1, 200, 240, 3), 0.5)
    with caplog.at_level(logging.INFO):
        crops, faces, _ = detect(nodes, blank, detector, model)
        assert crops.shape == (1, 64, 64, 3) and not crops.any() and len(faces) == 0
        restored = run(nodes.GPENRestoreFaces, model, crops, 0.8).result[0]
        restored_with_faces = run(nodes.GPENRestoreFaces, model, crops, 0.8, faces).result[0]
        out, mask = paste(nodes, blank, restored, faces)
    assert calls == [] and restored.shape == restored_with_faces.shape == (1, 64, 64, 3)
    assert torch.equal(out, blank) and not mask.any()
    assert f"{DETECTOR} found 0 face(s) in 1 frame(s)" in caplog.text
    assert "restored 0 crop(s)" in caplog.text and "1 black placeholder crop(s) passed through" in caplog.text


def test_a_face_index_that_selects_nothing_says_faces_were_found(nodes, model, detector, grace, caplog):
    with caplog.at_level(logging.INFO):
        _crops, faces, _ = detect(nodes, image_batch(grace), detector, model, face_index="3")
    assert len(faces) == 0
    assert f"{DETECTOR} found 1 face(s) in 1 frame(s); face_index/max_faces kept 0" in caplog.text


def test_malformed_face_index_names_the_node(nodes, detector, grace):
    with pytest.raises(ValueError, match=r"Detect and align faces \(GPEN\): .*'0,2'"):
        detect(nodes, image_batch(grace), detector, face_index="first")


def test_crops_that_would_not_fit_in_free_memory_are_refused(nodes, comfy, model, detector, grace, monkeypatch):
    monkeypatch.setattr(comfy.model_management, "get_free_memory",
                        lambda dev=None, torch_free_too=False: (1000, 1000) if torch_free_too else 1000)
    with pytest.raises(ValueError, match=r"Detect and align faces \(GPEN\): 1 face\(s\) at 512x512 .*max_faces.*one-node"):
        detect(nodes, image_batch(grace), detector)


def test_non_finite_detections_are_dropped_not_fatal(nodes, detector, grace, monkeypatch, caplog):
    real = type(detector)._detect_rgb

    def with_garbage(self, rgb, threshold):
        boxes, scores, points = real(self, rgb, threshold)
        return (np.concatenate([boxes, np.full((1, 4), np.nan)]), np.concatenate([scores, [0.99]]),
                np.concatenate([points, np.full((1, 5, 2), np.inf)]))

    monkeypatch.setattr(type(detector), "_detect_rgb", with_garbage)
    with caplog.at_level(logging.WARNING):
        _crops, faces, _ = detect(nodes, image_batch(grace, grace), detector)
    assert len(faces) == 2 and "non-finite" in caplog.text


def test_paste_refuses_another_picture_of_the_same_size_and_accepts_an_upscaled_copy(
    nodes, model, detector, grace, astronaut
):
    crops, faces, _ = detect(nodes, image_batch(grace), detector, model)
    other = image_batch(np.ascontiguousarray(np.resize(astronaut, grace.shape)))
    with pytest.raises(ValueError, match=r"Paste faces back \(GPEN\): frame 0 of the image is not the picture"):
        paste(nodes, other, crops, faces)
    upscaled = torch.nn.functional.interpolate(image_batch(grace).movedim(-1, 1), scale_factor=2, mode="bicubic")
    out, mask = paste(nodes, upscaled.movedim(1, -1).clamp(0, 1), crops, faces)
    assert out.shape[1:3] == (1200, 1024) and mask.max() == 1.0


def test_paste_refuses_crops_and_faces_of_different_counts(nodes, model, detector, grace):
    crops, faces, _ = detect(nodes, image_batch(grace), detector, model)
    with pytest.raises(ValueError, match=r"Paste faces back \(GPEN\): got 2 face crop\(s\) but 1 face record"):
        paste(nodes, image_batch(grace), torch.cat([crops, crops]), faces)


def test_restore_refuses_non_square_crops(nodes, model):
    with pytest.raises(ValueError, match=r"Restore faces \(GPEN\): face crops must be square"):
        run(nodes.GPENRestoreFaces, model, torch.rand(1, 64, 48, 3), 0.8)


def test_restore_stops_when_comfyui_is_interrupted(nodes, comfy, model):
    mm = comfy.model_management
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run(nodes.GPENRestoreFaces, model, torch.rand(3, 64, 64, 3), 0.8)
    finally:
        mm.interrupt_current_processing(False)


def test_one_node_stops_when_comfyui_is_interrupted(nodes, comfy, model, detector, grace):
    mm = comfy.model_management
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            one_node(nodes, image_batch(grace), model, detector)
    finally:
        mm.interrupt_current_processing(False)


def test_one_node_reports_progress_per_frame_and_passes_faceless_frames(nodes, model, detector, grace,
                                                                        progress_events):
    blank = np.full_like(grace, 0.5)
    image = image_batch(grace, blank)
    out, mask = one_node(nodes, image, model, detector)
    assert torch.equal(out[1], image[1]) and not mask[1].any() and mask[0].max() == 1.0
    assert progress_events[-1] == (4, 4)  # finding faces in 2 frames, restoring 1 face, 1 frame without


def test_detector_and_parser_wait_on_the_offload_device(nodes, comfy, models, model, detector, grace, monkeypatch):
    from comfyui_gpen_restore import face_utils

    loads = []
    real_load = face_utils.parsing.load_face_parser

    def counting_load(*args, **kwargs):
        loads.append(args)
        return real_load(*args, **kwargs)

    _write_parsenet(models / "facedetection")
    from comfyui_gpen_restore.face_utils import parsing

    monkeypatch.setattr(parsing, "load_face_parser", counting_load)
    monkeypatch.setattr(nodes.models, "PARSERS", parsing.FaceParserCache())
    seen_devices = []
    monkeypatch.setattr(face_utils.FaceParser, "face_mask",
                        lambda self, crop, size=None: seen_devices.append(self.device) or np.ones(crop.shape[:2],
                                                                                                  np.float32))
    crops, faces, _ = detect(nodes, image_batch(grace), detector, model)
    assert detector.device == comfy.model_management.unet_offload_device()
    for _ in range(2):
        paste(nodes, image_batch(grace), crops, faces, mask_shape="parsing")
    assert len(loads) == 1 and seen_devices == [comfy.model_management.get_torch_device()] * 2
    parser = nodes.models.PARSERS.get(models / "facedetection")
    assert parser.device == comfy.model_management.unet_offload_device()


def test_grey_and_rgba_images_keep_their_channels(nodes, model, detector, grace):
    grey = image_batch(grace.mean(axis=2, keepdims=True))
    rgba = image_batch(np.concatenate([grace, np.full_like(grace[..., :1], 0.25)], axis=2))
    for image in (grey, rgba):
        out, _mask = one_node(nodes, image, model, detector)
        assert out.shape == image.shape
    assert torch.equal(one_node(nodes, rgba, model, detector)[0][..., 3], rgba[..., 3])


def test_face_records_carry_the_picture_fingerprint(nodes, model, detector, grace):
    _crops, faces, _ = detect(nodes, image_batch(grace), detector, model)
    record = faces.faces[0]
    assert record.frame_fingerprint and FaceRecord.from_json(record.to_json()) == record
    assert dataclasses.replace(record, frame_fingerprint=None).frame_fingerprint is None


def _write_parsenet(folder: Path) -> None:
    """facexlib's ParseNet with random weights, saved where the parsing mask looks for it."""
    from facexlib.parsing.parsenet import ParseNet

    torch.manual_seed(0)
    net = ParseNet(in_size=512, out_size=512, parsing_ch=19)
    torch.save(net.state_dict(), folder / "parsing_parsenet.pth")


def test_listing_the_nodes_loads_and_downloads_nothing(nodes, models, monkeypatch):
    from comfyui_gpen_restore.face_utils import detectors, parsing
    from comfyui_gpen_restore.gpen_arch import loader

    def refuse(what):
        def called(*args, **kwargs):
            raise AssertionError(f"{what} while listing inputs: {args}")

        return called

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse("download"))
    for module, name in ((loader, "load_gpen"), (detectors, "load_detector"), (parsing, "load_face_parser")):
        monkeypatch.setattr(module, name, refuse(name))
    # Reading a model's size from its file is allowed (it ranks the model list), loading its weights is not: the
    # size comes from the tensors' shapes in a memory-mapped file.
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: real_load(*args, **kwargs) if kwargs.get("mmap")
                        else refuse("torch.load without mmap")(*args))
    infos = [cls.GET_NODE_INFO_V1() for cls in node_list(nodes)]
    assert len(infos) == 6
    assert infos[0]["input"]["required"]["model_name"][1]["default"] == "GPEN-BFR-64.pth"  # the folder was read


def test_an_offline_detector_names_the_file_its_address_and_the_folder(nodes, models, monkeypatch):
    import urllib.error

    from comfyui_gpen_restore.face_utils import WeightsUnavailableError

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailableError) as error:
        run(nodes.GPENFaceDetectorLoader, "retinaface_resnet50")
    message = str(error.value)
    assert "detection_Resnet50_Final.pth" in message and "https://" in message
    assert str(models / "facedetection") in message


def test_a_wrong_input_type_names_the_node_and_what_to_connect(nodes, model):
    with pytest.raises(ValueError, match=r"Restore faces \(GPEN\): `face_crops` must be an IMAGE.*got .*\[3, 64, 64\]"):
        run(nodes.GPENRestoreFaces, model, torch.rand(3, 64, 64), 0.8)


def test_restored_crops_can_stay_at_their_input_size(nodes, model):
    crops = torch.rand(3, 32, 32, 3)
    small = run(nodes.GPENRestoreFaces, model, crops, 1.0, output_size="input").result[0]
    full = run(nodes.GPENRestoreFaces, model, crops, 1.0).result[0]
    assert small.shape == (3, 32, 32, 3) and full.shape == (3, 64, 64, 3)
    from comfyui_gpen_restore.gpen_arch.runner import resize_crops

    torch.testing.assert_close(small, resize_crops(full, 32), atol=SAME_ROUTE_TOLERANCE, rtol=0)


def test_restored_crops_that_would_not_fit_in_free_memory_are_refused(nodes, comfy, model, monkeypatch):
    monkeypatch.setattr(comfy.model_management, "get_free_memory",
                        lambda dev=None, torch_free_too=False: (1000, 1000) if torch_free_too else 1000)
    with pytest.raises(ValueError, match=r"Restore faces \(GPEN\): 2 restored crop\(s\) at 64x64 .*output_size"):
        run(nodes.GPENRestoreFaces, model, torch.rand(2, 32, 32, 3), 1.0)


@pytest.mark.parametrize("size", [0, 1024])
def test_detection_size_reaches_the_detector(nodes, model, detector, grace, monkeypatch, size):
    seen = []
    real = type(detector).detect
    monkeypatch.setattr(type(detector), "detect",
                        lambda self, image, **kw: seen.append(kw["detection_size"]) or real(self, image, **kw))
    _crops, faces, _ = detect(nodes, image_batch(grace), detector, model, detection_size=size)
    one_node(nodes, image_batch(grace), model, detector, detection_size=size)
    assert seen == [size, size] and len(faces) == 1


def test_gpen_stays_loaded_while_the_one_node_restore_runs_it(nodes, model, detector, grace, comfy, monkeypatch):
    # With --disable-smart-memory ComfyUI unloads every model it may whenever memory is freed, as it does under
    # memory pressure on a GPU. The detector's and parser's room is freed before GPEN is placed, so GPEN is still
    # loaded (on the device ComfyUI put it) each time it runs, and its batch size counts their memory.
    mm = comfy.model_management
    monkeypatch.setattr(mm, "DISABLE_SMART_MEMORY", True)
    runner, seen = model.runner, []
    real_restore = runner.restore

    def restore(*args, **kwargs):
        seen.append(any(loaded.model is model.patcher for loaded in mm.current_loaded_models))
        return real_restore(*args, **kwargs)

    monkeypatch.setattr(runner, "restore", restore)
    out, mask = one_node(nodes, image_batch(grace, grace), model, detector, mask_shape="ellipse")
    assert seen == [True, True] and mask.amax() > 0
    mm.unload_all_models()


@pytest.mark.parametrize(("vram_state", "dtype"), [("NORMAL_VRAM", torch.float16), ("NO_VRAM", "cpu")])
def test_auto_precision_is_chosen_for_where_gpen_runs(nodes, models, comfy, monkeypatch, vram_state, dtype):
    # ComfyUI on a GPU answers fp16 for the GPU and no for the CPU (stood in here: this machine has no GPU). With
    # --novram GPEN's weights stay on the offload device, a CPU: "auto" must not pick fp16 there, but what that
    # CPU runs best (bf16 where it computes it natively, else fp32).
    from comfyui_gpen_restore.gpen_arch.runner import cpu_has_native_bf16

    if dtype == "cpu":
        dtype = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    mm = comfy.model_management
    monkeypatch.setattr(mm, "vram_state", getattr(mm.VRAMState, vram_state))
    monkeypatch.setattr(mm, "get_torch_device", lambda: torch.device("cuda"))
    monkeypatch.setattr(mm, "should_use_fp16", lambda device=None, **kwargs: torch.device(device).type == "cuda")
    monkeypatch.setattr(mm, "should_use_bf16", lambda device=None, **kwargs: torch.device(device).type == "cuda")
    model = run(nodes.GPENModelLoader, "GPEN-BFR-64.pth", "auto", False).result[0]
    assert model.runner.dtype == dtype


def test_the_one_node_restore_pastes_onto_an_upscaled_canvas(nodes, model, detector, grace):
    """Upstream's selfie mode in one node: faces found and restored on the image, pasted onto its 2x copy; the
    same faces as pasting the separate nodes' crops onto that copy, and the copy untouched outside the mask."""
    image = image_batch(grace)
    canvas = torch.nn.functional.interpolate(image.movedim(-1, 1), scale_factor=2, mode="bicubic").clamp(0, 1)
    canvas = canvas.movedim(1, -1).contiguous()
    out, mask = one_node(nodes, image, model, detector, canvas=canvas)
    assert out.shape == canvas.shape and mask.shape == canvas.shape[:3]
    crops, faces, _ = detect(nodes, image, detector, model)
    restored = run(nodes.GPENRestoreFaces, model, crops, 0.8).result[0]
    separate, separate_mask = paste(nodes, canvas, restored, faces)
    torch.testing.assert_close(out, separate, atol=SAME_ROUTE_TOLERANCE, rtol=0)
    assert torch.equal(out[mask == 0], canvas[mask == 0]) and (out - canvas).abs().max() > 0.05
    with pytest.raises(ValueError, match="canvas frame 0"):
        one_node(nodes, image, model, detector, canvas=canvas[:, :, :-100])


def test_the_one_node_restore_steadies_restored_detail_by_default(nodes, model, detector, grace, monkeypatch):
    """temporal_consistency (on unless turned off) reaches the pipeline: on a still 5-frame shot with a GPEN that
    invents fresh detail every frame (random weights plus noise), the pasted faces change less from frame to
    frame than with it off."""
    generator = torch.Generator().manual_seed(0)
    real_forward = model.runner.module.forward
    monkeypatch.setattr(model.runner.module, "forward",
                        lambda x: real_forward(x) + 0.2 * torch.randn(x.shape, generator=generator))
    image = image_batch(*[grace] * 5)
    plain, mask = one_node(nodes, image, model, detector, temporal_consistency=False)
    steady, _ = one_node(nodes, image, model, detector)
    core = mask[0] > 0.99
    assert (steady[1:] - steady[:-1]).abs()[:, core].mean() < 0.6 * (plain[1:] - plain[:-1]).abs()[:, core].mean()
