"""Every shipped workflow: the UI file is valid against the node definitions, its API twin is exactly what the
frontend would export, and the API twin runs (our nodes for real, with real detection and a test-made GPEN;
other packs' nodes through small stand-ins)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from comfy_doubles import REPO_ROOT
from nodes_support import DETECTOR, comfy, models_dir, pack, read_rgb, save_gpen  # noqa: F401
from workflow_support import node_definitions, run_api_workflow, ui_to_api, validate_ui_workflow

WORKFLOWS = REPO_ROOT / "workflows"
NAMES = ["restore_photo", "quick_restore", "after_face_swap", "after_generation", "video_frames"]


def load(name: str, api: bool = False) -> dict:
    return json.loads((WORKFLOWS / f"{name}{'.api' if api else ''}.json").read_text(encoding="utf-8"))


@pytest.fixture
def workflow_pack(pack, comfy):
    """The pack with the model file the workflows name (a small random GPEN under GPEN-BFR-2048's name: the size
    is read from the weights, never from the name)."""
    save_gpen(comfy.models_dir / "facerestore_models" / "GPEN-BFR-2048.pth", 64)
    return pack


def test_the_workflow_folder_holds_each_workflow_and_its_api_twin():
    files = sorted(p.name for p in WORKFLOWS.glob("*.json"))
    assert files == sorted([f"{n}.json" for n in NAMES] + [f"{n}.api.json" for n in NAMES])


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_matches_the_node_definitions(workflow_pack, name):
    definitions = node_definitions(workflow_pack.NODE_CLASS_MAPPINGS)
    workflow = load(name)
    assert validate_ui_workflow(workflow, definitions, strict_types=set(workflow_pack.NODE_CLASS_MAPPINGS)) == []
    assert any(node["type"].startswith("GPEN") for node in workflow["nodes"])


@pytest.mark.parametrize("name", NAMES)
def test_api_twin_is_the_export_of_the_ui_workflow(workflow_pack, name):
    definitions = node_definitions(workflow_pack.NODE_CLASS_MAPPINGS)
    exported = ui_to_api(load(name), definitions)
    twin = load(name, api=True)
    strip = lambda api: {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}  # noqa: E731
    assert strip(twin) == strip(exported)


def test_validation_catches_broken_workflows(workflow_pack):
    """The validator itself: wrong widget count, wrong link type, unknown node type and a missing required link."""
    definitions = node_definitions(workflow_pack.NODE_CLASS_MAPPINGS)
    strict = set(workflow_pack.NODE_CLASS_MAPPINGS)
    original = load("restore_photo")

    broken = copy.deepcopy(original)
    next(n for n in broken["nodes"] if n["type"] == "GPENPasteFaces")["widgets_values"].pop()
    assert any("widget values, expected" in p for p in validate_ui_workflow(broken, definitions, strict))

    broken = copy.deepcopy(original)
    restore = next(n for n in broken["nodes"] if n["type"] == "GPENRestoreFaces")
    restore["widgets_values"] = [1.5]
    assert any("strength = 1.5 outside" in p for p in validate_ui_workflow(broken, definitions, strict))

    broken = copy.deepcopy(original)
    faces_link = next(link for link in broken["links"] if link[5] == "GPEN_FACES")
    faces_link[5] = "IMAGE"
    assert any("type IMAGE" in p for p in validate_ui_workflow(broken, definitions, strict))

    broken = copy.deepcopy(original)
    broken["nodes"][0]["type"] = "GPENNoSuchNode"
    assert any("unknown node type" in p for p in validate_ui_workflow(broken, definitions, strict))

    broken = copy.deepcopy(original)
    paste = next(n for n in broken["nodes"] if n["type"] == "GPENPasteFaces")
    paste["inputs"] = [s for s in paste["inputs"] if s["name"] != "faces"]
    assert any("'faces' is not connected" in p for p in validate_ui_workflow(broken, definitions, strict))


# --- running the API twins -------------------------------------------------------------------------------------


class StandIns:
    """Other packs' and core nodes, reduced to what the workflows need; outputs are recorded."""

    def __init__(self, fixtures_dir: Path) -> None:
        self.photo = read_rgb(fixtures_dir / "images" / "grace_hopper.jpg")
        self.other = read_rgb(fixtures_dir / "images" / "astronaut.png")
        self.saved: dict[str, torch.Tensor] = {}
        self.video: dict | None = None
        self.frames = torch.from_numpy(np.stack([self.photo, np.full_like(self.photo, 0.5), self.photo[:, ::-1]]))

    def functions(self) -> dict:
        return {
            "LoadImage": self.load_image,
            "SaveImage": self.save_image,
            "PreviewImage": self.preview,
            "CheckpointLoaderSimple": lambda ckpt_name: ("MODEL", "CLIP", "VAE"),
            "CLIPTextEncode": lambda text, clip: ([[text]],),
            "EmptyLatentImage": lambda width, height, batch_size: (
                {"samples": torch.zeros(batch_size, 4, height // 8, width // 8)},),
            "KSampler": lambda latent_image, **settings: (latent_image,),
            "VAEDecode": self.decode,
            "ReActorFaceSwap": lambda input_image, **settings: (input_image, None, input_image),
            "LoadVideo": lambda file: ({"file": file},),
            "GetVideoComponents": lambda video: (self.frames, {"waveform": torch.zeros(1, 2, 10)}, 24.0),
            "CreateVideo": lambda images, fps, audio=None: ({"images": images, "fps": fps, "audio": audio},),
            "SaveVideo": self.save_video,
        }

    def load_image(self, image: str):
        frame = self.other if image == "source_face.png" else self.photo
        return torch.from_numpy(frame[None].copy()), torch.zeros(1, *frame.shape[:2])

    def save_image(self, images: torch.Tensor, filename_prefix: str):
        self.preview(images)
        self.saved[filename_prefix] = images
        return ()

    def preview(self, images: torch.Tensor):
        images[0]  # ComfyUI's SaveImage and PreviewImage index the first image, so an empty batch fails there
        return ()

    def decode(self, samples: dict, vae: str):
        height, width = (8 * s for s in samples["samples"].shape[-2:])
        canvas = np.zeros((height, width, 3), np.float32)
        canvas[: self.photo.shape[0], : self.photo.shape[1]] = self.photo  # "generates" a portrait
        return (torch.from_numpy(canvas[None]),)

    def save_video(self, video: dict, filename_prefix: str, format: str, codec: str):  # noqa: A002
        self.video = video
        return ()


def run(pack, name: str, fixtures_dir: Path, *, photo: np.ndarray | None = None) -> StandIns:
    api = load(name, api=True)
    for node in api.values():
        if node["class_type"] == "GPENFaceDetectorLoader":
            # The fixtures ship only RetinaFace-MobileNet weights (no downloads in tests); the workflows' own
            # choice is checked by the validation tests.
            node["inputs"]["detector"] = DETECTOR
    stand_ins = StandIns(fixtures_dir)
    if photo is not None:
        stand_ins.photo = photo
    definitions = node_definitions(pack.NODE_CLASS_MAPPINGS)
    run_api_workflow(api, definitions, pack.NODE_CLASS_MAPPINGS, stand_ins.functions())
    return stand_ins


def assert_face_restored(image: torch.Tensor, original: np.ndarray) -> None:
    """The face region changed (random GPEN weights make any face look different), the corners did not."""
    face = (image[0, 150:330, 190:340] - torch.from_numpy(original[150:330, 190:340])).abs().mean()
    assert face > 0.02
    torch.testing.assert_close(image[0, :40, :40], torch.from_numpy(original[:40, :40]))


@pytest.mark.parametrize("name", ["restore_photo", "quick_restore", "after_face_swap"])
def test_photo_workflows_run(workflow_pack, comfy, fixtures_dir, name):
    stand_ins = run(workflow_pack, name, fixtures_dir)
    (image,) = stand_ins.saved.values()
    assert image.shape == (1, 600, 512, 3)
    assert_face_restored(image, stand_ins.photo)
    assert len(comfy.load_calls) == 1


def test_generation_workflow_runs(workflow_pack, fixtures_dir):
    stand_ins = run(workflow_pack, "after_generation", fixtures_dir)
    image = stand_ins.saved["gpen/generated"]
    assert image.shape == (1, 768, 512, 3)
    assert_face_restored(image, np.pad(stand_ins.photo, ((0, 168), (0, 0), (0, 0))))


def test_video_workflow_runs_frame_by_frame(workflow_pack, comfy, fixtures_dir):
    stand_ins = run(workflow_pack, "video_frames", fixtures_dir)
    video = stand_ins.video
    assert video["fps"] == 24.0 and video["audio"] is not None
    frames = video["images"]
    assert frames.shape == stand_ins.frames.shape
    assert torch.equal(frames[1], stand_ins.frames[1])  # the frame without a face is untouched
    assert_face_restored(frames[:1], stand_ins.photo)
    assert (frames[2] - stand_ins.frames[2]).abs().mean() > 0.005
    assert comfy.progress[-1].values[-1] == 3


@pytest.mark.parametrize("name", ["restore_photo", "quick_restore"])
def test_photo_workflows_pass_an_image_without_faces_through(workflow_pack, fixtures_dir, name):
    wall = np.random.default_rng(0).random((300, 400, 3), dtype=np.float32)
    stand_ins = run(workflow_pack, name, fixtures_dir, photo=wall)
    (image,) = stand_ins.saved.values()
    assert torch.equal(image[0], torch.from_numpy(wall))
