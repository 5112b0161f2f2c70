"""The shipped workflows in the real host: each API twin runs on a real ComfyUI server (our nodes with real
detection and a test-made GPEN, ComfyUI's own nodes for the rest), each UI file loads in ComfyUI's real frontend
with none of our nodes missing, the frontend's own export of it is its API twin, and the template folder is what
ComfyUI's template browser shows (UI files with thumbnails, laid out clear of the frontend's panels).

One server and one browser page serve the whole module (see tests/comfy_host.py)."""

from __future__ import annotations

import copy
import io as bytes_io
import json
import math
import os
import time
import urllib.request
from urllib.parse import quote
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from comfy_host import PACK_DIR_NAME, ComfyError, ComfyServer, FrontendPage, describe_failure
from comfy_host import execution_error, status_messages
from support import DETECTOR, REPO_ROOT

WORKFLOWS = REPO_ROOT / "workflows"  # what ComfyUI publishes as this pack's templates: UI format only
API_WORKFLOWS = WORKFLOWS / "api"  # the API-format twins, one folder down where the template browser never looks
# The shipped workflows by the names the tests use, and their file names. A pack's template is known to the template
# browser by its file name alone (title, description and search text are all made of it: app/custom_node_manager.py
# and the frontend's template store), so each starts with "GPEN" and reads as a title.
FILE_NAMES = {"restore_photo": "GPEN restore a photo", "quick_restore": "GPEN quick restore",
              "after_face_swap": "GPEN after a face swap", "after_generation": "GPEN after generation",
              "video_frames": "GPEN video frames", "colourise": "GPEN colourise an old portrait",
              "repair": "GPEN repair a damaged face", "selfie": "GPEN selfie at 2048 with the background"}
NAMES = list(FILE_NAMES)
OTHER_PACKS_NODES = {"after_face_swap": ["ReActorFaceSwap"]}  # needs the ReActor pack, not installed here
THUMBNAIL_WIDTH = 640
# A laptop's browser window (1600 x 900): the view a user opens a template in; a 1920 x 1080 screen has more room.
VIEWPORT = {"width": 1600, "height": 900}
RENDERERS = {"litegraph": False, "vue": True}  # the frontend's setting Comfy.VueNodes.Enabled
# Nodes loading model files, with the ComfyUI folder each file belongs in: the workflows say where to get them.
MODEL_LOADERS = {"GPENModelLoader": "facerestore_models", "CheckpointLoaderSimple": "checkpoints",
                 "UpscaleModelLoader": "upscale_models"}
# Where the paste-back of Grace Hopper's face may change the 512x600 fixture photo (rows, columns): GPEN's aligned
# crop covers the whole head, and the mask's feather reaches rows 24-365, columns 110-406 (measured); the lower
# third (uniform and medals) and the sides must stay exactly as they were.
FACE_BOX = (slice(0, 400), slice(90, 430))
MIRRORED_FACE_BOX = (FACE_BOX[0], slice(512 - FACE_BOX[1].stop, 512 - FACE_BOX[1].start))
# An 8-bit PNG read into [0, 1] floats and written back is exact; allow one level for the encoder's rounding.
EIGHT_BIT = 1


def load(name: str, api: bool = False) -> dict:
    stem = FILE_NAMES[name]
    path = API_WORKFLOWS / f"{stem}.api.json" if api else WORKFLOWS / f"{stem}.json"
    return json.loads(path.read_text(encoding="utf-8"))


def runnable(prompt: dict) -> dict:
    """The prompt with the one offline detector the fixtures ship (the workflows' own choice is checked by the
    frontend export test, which compares every value)."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        if node["class_type"] == "GPENFaceDetectorLoader":
            node["inputs"]["detector"] = DETECTOR
    return prompt


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def photo(comfy_server: ComfyServer) -> np.ndarray:
    """The workflows' inputs, written into the server's input folder: `example.png` (the fixture photo of
    Grace Hopper as an exact 8-bit PNG, under the name of the picture every ComfyUI's input folder holds, which the
    templates open with; `portrait.png` the same), `generated.png` (the same face on the 512x768
    canvas after_generation's latent asks for), `old_portrait.png` (it in black and white),
    `scratched_portrait.png` (it with the mask editor's damage: transparent where damaged, see `DAMAGE`) and
    `clip.mp4` (see `video`). Returns the portrait's pixels, uint8 [600, 512, 3]."""
    from PIL import Image

    with Image.open(comfy_server.input_dir / "grace_hopper.jpg") as image:
        pixels = np.asarray(image.convert("RGB"))
    for name in ("example.png", "portrait.png"):
        Image.fromarray(pixels).save(comfy_server.input_dir / name)
    canvas = np.zeros((768, 512, 3), np.uint8)
    canvas[: pixels.shape[0]] = pixels
    Image.fromarray(canvas).save(comfy_server.input_dir / "generated.png")
    Image.fromarray(pixels).convert("L").convert("RGB").save(comfy_server.input_dir / "old_portrait.png")
    alpha = np.full(pixels.shape[:2], 255, np.uint8)
    alpha[DAMAGE] = 0  # what the mask editor writes: LoadImage's MASK is 1 - alpha
    Image.fromarray(np.dstack([pixels, alpha])).save(comfy_server.input_dir / "scratched_portrait.png")
    return pixels


# The damage the repair workflow's input carries: a tear across Grace Hopper's eyes (rows, columns; the fixture
# detector puts her eyes at (219, 188) and (303, 187) in the 512x600 photo).
DAMAGE = (slice(180, 194), slice(190, 335))
VIDEO_FPS = 24
VIDEO_AUDIO_RATE = 16000


@pytest.fixture(scope="module")
def video(comfy_server: ComfyServer, photo: np.ndarray) -> list[np.ndarray]:
    """`clip.mp4` in the input folder: four frames (the portrait, a flat grey frame without a face, the portrait
    mirrored, the portrait) at 24 fps with a sine tone as sound. Returns the frames as written (before h264)."""
    import av

    frames = [photo, np.full_like(photo, 128), np.ascontiguousarray(photo[:, ::-1]), photo]
    with av.open(str(comfy_server.input_dir / "clip.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=VIDEO_FPS)
        stream.width, stream.height, stream.pix_fmt = photo.shape[1], photo.shape[0], "yuv420p"
        stream.options = {"crf": "12"}  # near-lossless: faces stay detectable, comparisons stay meaningful
        audio = container.add_stream("aac", rate=VIDEO_AUDIO_RATE, layout="mono")
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
        seconds = len(frames) / VIDEO_FPS
        t = np.arange(int(VIDEO_AUDIO_RATE * seconds)) / VIDEO_AUDIO_RATE
        tone = (0.3 * np.sin(2 * math.pi * 440 * t)).astype(np.float32)[None]
        sound = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
        sound.sample_rate = VIDEO_AUDIO_RATE
        container.mux(audio.encode(sound))
        container.mux(audio.encode())
    return frames


def assert_only_the_face_changed(restored: np.ndarray, original: np.ndarray) -> None:
    """The face was restored (random GPEN weights make any face look different) and every pixel outside the
    face box is the input's, within 8-bit rounding."""
    assert restored.shape == original.shape
    difference = np.abs(restored.astype(np.int16) - original.astype(np.int16))
    assert difference[FACE_BOX].mean() > 5, "the face was not restored"
    outside = difference.copy()
    outside[FACE_BOX] = 0
    assert outside.max() <= EIGHT_BIT, f"pixels outside the face changed, by up to {outside.max()}/255"


# --- the template folder ---------------------------------------------------------------------------------------


def test_the_template_folder_holds_only_ui_workflows_each_with_a_thumbnail():
    """ComfyUI publishes every `workflows/*.json` of a pack as a template with `<name>.jpg` as its picture
    (app/custom_node_manager.py and the frontend's template store): an API-format file there is a broken
    template, and a missing .jpg a broken picture."""
    stems = sorted(FILE_NAMES.values())
    assert all(stem.startswith("GPEN ") for stem in stems)  # what a search for "GPEN" in the browser matches
    assert sorted(p.stem for p in WORKFLOWS.glob("*.json")) == stems
    assert sorted(p.stem for p in WORKFLOWS.glob("*.jpg")) == stems
    for name in NAMES:
        assert {"nodes", "links"} <= set(load(name)), f"{name}.json is not a UI-format workflow"
    assert sorted(p.name for p in API_WORKFLOWS.iterdir()) == sorted(f"{n}.api.json" for n in stems)


@pytest.mark.parametrize("name", NAMES)
def test_every_model_file_a_workflow_names_comes_with_its_address_and_folder(name: str):
    """The frontend lists a missing model with the `properties.models` entry whose name is the widget's value
    (its url and ComfyUI folder; core templates carry the same), instead of an unknown file."""
    loaders = [node for node in load(name)["nodes"] if node["type"] in MODEL_LOADERS]
    assert loaders
    for node in loaders:
        file_name = node["widgets_values"][0]
        (entry,) = node["properties"]["models"]
        assert entry["name"] == file_name and entry["directory"] == MODEL_LOADERS[node["type"]]
        assert entry["url"].startswith("https://") and entry["url"].endswith("/" + file_name)


def test_the_server_lists_our_templates_and_serves_their_thumbnails(comfy_server: ComfyServer):
    from PIL import Image

    templates = comfy_server.request("/workflow_templates")
    assert sorted(templates[PACK_DIR_NAME]) == sorted(FILE_NAMES.values())
    for name, stem in FILE_NAMES.items():
        template = comfy_server.request(f"/api/workflow_templates/{PACK_DIR_NAME}/{quote(stem)}.json")
        assert template == load(name)
        # The URL the frontend's template browser builds for a custom node's picture.
        request = f"{comfy_server.url}/api/workflow_templates/{PACK_DIR_NAME}/{quote(stem)}.jpg"
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.headers["Content-Type"] == "image/jpeg"
            data = answer.read()
        with Image.open(bytes_io.BytesIO(data)) as image:
            assert image.format == "JPEG" and image.width == THUMBNAIL_WIDTH and image.height >= 120
            pixels = np.asarray(image.convert("L"), np.float32)
        assert pixels.std() > 10, f"{name}.jpg is a flat placeholder, not a picture of the workflow"


# --- the API twins on the server -------------------------------------------------------------------------------


@pytest.mark.slow
def test_restore_photo_runs(comfy_server: ComfyServer, photo: np.ndarray):
    entry = comfy_server.run(runnable(load("restore_photo", api=True)))
    (saved,) = comfy_server.output_files(entry, "7")
    assert saved.parent == comfy_server.output_dir / "gpen" and saved.name.startswith("restored")
    assert_only_the_face_changed(read_png(saved), photo)
    # The previews the workflow shows: one detected face, one restored crop at the model's size (64 px).
    (detected,) = comfy_server.output_files(entry, "8")
    assert read_png(detected).shape == photo.shape
    crops = comfy_server.output_files(entry, "9")
    assert len(crops) == 1 and read_png(crops[0]).shape == (64, 64, 3)


@pytest.mark.slow
def test_quick_restore_runs(comfy_server: ComfyServer, photo: np.ndarray):
    entry = comfy_server.run(runnable(load("quick_restore", api=True)))
    (saved,) = comfy_server.output_files(entry, "5")
    assert saved.name.startswith("restored")
    assert_only_the_face_changed(read_png(saved), photo)


@pytest.mark.slow
def test_after_face_swap_runs_without_the_swap(comfy_server: ComfyServer, photo: np.ndarray):
    """ReActor is another pack (not installed): its node is cut out and the target image goes straight to GPEN;
    everything else runs as shipped."""
    prompt = runnable(load("after_face_swap", api=True))
    assert prompt.pop("3")["class_type"] == "ReActorFaceSwap"
    del prompt["2"]  # the swap's source face, used by nothing else
    prompt["1"]["inputs"]["image"] = "portrait.png"
    prompt["6"]["inputs"]["image"] = ["1", 0]
    entry = comfy_server.run(prompt)
    (saved,) = comfy_server.output_files(entry, "7")
    assert saved.name.startswith("swapped_restored")
    assert_only_the_face_changed(read_png(saved), photo)


@pytest.mark.slow
def test_after_generation_is_valid_and_its_gpen_half_runs(comfy_server: ComfyServer, photo: np.ndarray):
    """The whole graph passes the server's validation but for the Stable Diffusion checkpoint (2 GB, not here);
    then the GPEN half runs as shipped on a 'generated' image of the size the latent asks for."""
    prompt = runnable(load("after_generation", api=True))
    with pytest.raises(ComfyError) as refused:
        comfy_server.post(prompt)
    node_errors = refused.value.answer["node_errors"]
    assert list(node_errors) == ["1"], node_errors
    assert [e["extra_info"]["input_name"] for e in node_errors["1"]["errors"]] == ["ckpt_name"]

    width, height = prompt["4"]["inputs"]["width"], prompt["4"]["inputs"]["height"]
    for generating in ("1", "2", "3", "4", "5", "6"):
        del prompt[generating]
    prompt["6"] = {"class_type": "LoadImage", "inputs": {"image": "generated.png"}}
    entry = comfy_server.run(prompt)
    (saved,) = comfy_server.output_files(entry, "10")
    restored = read_png(saved)
    assert restored.shape == (height, width, 3)
    assert_only_the_face_changed(restored[: photo.shape[0]], photo)
    assert not restored[photo.shape[0]:].any()  # the empty lower part of the canvas stays black


def luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) @ np.float32([0.299, 0.587, 0.114])


@pytest.mark.slow
def test_colourise_an_old_portrait_runs(comfy_server: ComfyServer, photo: np.ndarray):
    """Restored by a GPEN-BFR, then colourised: colour appears on the face and nowhere else, the rest of the black-
    and-white photo stays as it was."""
    prompt = runnable(load("colourise", api=True))
    prompt["1"]["inputs"]["image"] = "old_portrait.png"
    entry = comfy_server.run(prompt)
    (saved,) = comfy_server.output_files(entry, "9")
    coloured, grey = read_png(saved), np.repeat(luma(photo).round().astype(np.uint8)[..., None], 3, axis=2)
    chroma = np.abs(coloured.astype(np.float32) - luma(coloured)[..., None]).max(axis=-1)
    assert (chroma[FACE_BOX] > 4).mean() > 0.05  # the face gained colour ...
    outside = np.ones(chroma.shape, bool)
    outside[FACE_BOX] = False
    assert chroma[outside].max() <= 1 and np.abs(coloured.astype(np.int16) - grey)[outside].max() <= 1  # ... only


@pytest.mark.slow
def test_repair_a_damaged_face_runs(comfy_server: ComfyServer, photo: np.ndarray):
    """The damage painted in the mask editor (LoadImage's MASK) is repaired; every pixel far from it is the
    photo's own."""
    prompt = runnable(load("repair", api=True))
    prompt["1"]["inputs"]["image"] = "scratched_portrait.png"
    entry = comfy_server.run(prompt)
    (saved,) = comfy_server.output_files(entry, "5")
    repaired = read_png(saved)
    changed = np.abs(repaired.astype(np.int16) - photo).max(axis=-1) > 0
    assert changed[DAMAGE].mean() > 0.9
    # The damage's reach: grown and feathered by 5 % of the face (19 px here), plus the resampling filters' few
    # pixels of the 64-px test model's crop, each 6 of the photo's (cutting the damage out, pasting it back).
    reach = 64
    near = np.zeros(changed.shape, bool)
    near[DAMAGE[0].start - reach : DAMAGE[0].stop + reach, DAMAGE[1].start - reach : DAMAGE[1].stop + reach] = True
    assert not changed[~near].any(), np.argwhere(changed & ~near)[:5]


@pytest.mark.slow
def test_selfie_at_2048_runs_on_the_upscaled_canvas(comfy_server: ComfyServer, photo: np.ndarray):
    """Core's upscaler (an upscale model in upstream GPEN's RealESRNet layout, read by spandrel) makes the 2x
    canvas, our paste puts the restored faces on it: the picture is the upscaler's outside the face."""
    prompt = runnable(load("selfie", api=True))
    entry = comfy_server.run(prompt)
    (saved,) = comfy_server.output_files(entry, "9")
    selfie = read_png(saved)
    assert selfie.shape == (2 * photo.shape[0], 2 * photo.shape[1], 3)
    upscale_only = {key: prompt[key] for key in ("1", "2", "3")}
    upscale_only["9"] = {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "gpen/x2"}}
    (upscaled,) = comfy_server.output_files(comfy_server.run(upscale_only), "9")
    difference = np.abs(selfie.astype(np.int16) - read_png(upscaled)).max(axis=-1)
    face = (slice(2 * FACE_BOX[0].start, 2 * FACE_BOX[0].stop), slice(2 * FACE_BOX[1].start, 2 * FACE_BOX[1].stop))
    assert difference[face].mean() > 5  # the faces were pasted ...
    difference[face] = 0
    assert difference.max() <= EIGHT_BIT  # ... onto the upscaled picture, which is untouched elsewhere


def read_video(path: Path) -> tuple[list[np.ndarray], float, int]:
    """Frames (RGB uint8), frame rate and audio sample count of a video file."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    with av.open(str(path)) as container:
        samples = sum(frame.samples for frame in container.decode(audio=0)) if container.streams.audio else 0
    return frames, fps, samples


@pytest.mark.slow
def test_video_frames_runs_frame_by_frame_with_fps_and_sound(comfy_server: ComfyServer, video: list[np.ndarray]):
    entry = comfy_server.run(runnable(load("video_frames", api=True)), timeout_s=300)
    (saved,) = comfy_server.output_files(entry, "7")
    assert saved.name.startswith("video") and saved.stat().st_size > 0
    inputs, _, input_samples = read_video(comfy_server.input_dir / "clip.mp4")
    frames, fps, samples = read_video(saved)
    assert len(frames) == len(video) and fps == VIDEO_FPS
    assert samples > 0 and abs(samples - input_samples) <= 2048  # the sound came along (one AAC frame of slack)
    changes = [np.abs(out.astype(np.int16) - inp.astype(np.int16)) for out, inp in zip(frames, inputs)]
    for index in (0, 2, 3):  # the frames with a face: restored inside the face, near-identical outside
        face = changes[index][FACE_BOX if index != 2 else MIRRORED_FACE_BOX]
        below = changes[index][FACE_BOX[0].stop + 20:]  # clear of the face and of h264's blocks around it
        assert face.mean() > 5 * max(below.mean(), 0.5), f"frame {index}: face not restored"
    # The grey frame has no face: only the re-encoding touched it, which may shift its level (0.33's SaveVideo
    # moves it by 2) but leaves it flat, where a pasted face would not.
    assert changes[1].mean() <= 2.5 and np.ptp(frames[1]) <= 2


# --- errors, interruption, freeing memory ------------------------------------------------------------------------


def run_expecting_error(server: ComfyServer, prompt: dict) -> dict:
    entry = server.wait(server.post(prompt))
    assert entry["status"]["status_str"] == "error"
    error = execution_error(entry)
    assert error is not None, entry["status"]
    return error


def test_non_square_crops_stop_with_the_restore_nodes_own_message(comfy_server: ComfyServer, photo: np.ndarray):
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "portrait.png"}},  # 512x600: not a square crop
        "2": {"class_type": "GPENModelLoader",
              "inputs": {"model_name": "GPEN-BFR-64.pth", "precision": "auto", "compile": False}},
        "3": {"class_type": "GPENRestoreFaces", "inputs": {"gpen_model": ["2", 0], "face_crops": ["1", 0],
                                                            "strength": 0.8}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    error = run_expecting_error(comfy_server, prompt)
    assert (error["node_id"], error["node_type"]) == ("3", "GPENRestoreFaces")
    message = error["exception_message"]
    # Stable parts of the node's message: what is wrong, and the size it found (written 512x600 or [.., 600, 512, ..]).
    assert "must be square" in message and "600" in message and "512" in message, message


def test_a_foreign_checkpoint_stops_with_the_loaders_own_message(comfy_server: ComfyServer):
    import torch

    # Listed as soon as it is in the folder (ComfyUI asks the node for its file list at each validation).
    torch.save({"conv.weight": torch.zeros(4, 3, 3, 3)}, comfy_server.models_dir / "facerestore_models" /
               "not_gpen.pth")
    prompt = {
        "1": {"class_type": "GPENModelLoader",
              "inputs": {"model_name": "not_gpen.pth", "precision": "auto", "compile": False}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "portrait.png"}},
        "3": {"class_type": "GPENRestoreFaces", "inputs": {"gpen_model": ["1", 0], "face_crops": ["2", 0],
                                                            "strength": 0.8}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    error = run_expecting_error(comfy_server, prompt)
    assert (error["node_id"], error["node_type"]) == ("1", "GPENModelLoader")
    assert "Not a GPEN checkpoint" in error["exception_message"]


def long_prompt(frames: int, strength: float) -> dict:
    """Grace Hopper's face (a 256-px crop of the portrait) repeated `frames` times through the one-node
    restorer: long enough to interrupt, at a few faces per second."""
    return runnable({
        "1": {"class_type": "LoadImage", "inputs": {"image": "portrait.png"}},
        "2": {"class_type": "ImageCrop", "inputs": {"image": ["1", 0], "width": 256, "height": 256,
                                                    "x": 130, "y": 110}},
        "3": {"class_type": "RepeatImageBatch", "inputs": {"image": ["2", 0], "amount": frames}},
        "4": {"class_type": "GPENModelLoader",
              "inputs": {"model_name": "GPEN-BFR-64.pth", "precision": "auto", "compile": False}},
        "5": {"class_type": "GPENFaceDetectorLoader", "inputs": {"detector": DETECTOR}},
        "6": {"class_type": "GPENRestoreFacesOneNode", "inputs": {
            "image": ["3", 0], "gpen_model": ["4", 0], "face_detector": ["5", 0], "strength": strength,
            "score_threshold": 0.9, "order": "largest", "face_index": "all", "max_faces": 0, "template": "gpen",
            "mask_shape": "ellipse", "erosion": 0.04, "feather": 0.1, "color_correction": True}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    })


@pytest.mark.slow
def test_interrupt_stops_a_running_prompt_and_unloading_models_keeps_the_next_working(
        comfy_server: ComfyServer, photo: np.ndarray):
    """Interrupt while the restorer is between faces (seen on the websocket: its progress has started), unload
    the models through /free in the same moment; then the next prompt, with the model loader's result still
    cached but its weights unloaded, runs to the end."""
    frames = 400
    socket = comfy_server.websocket()
    try:
        prompt_id = comfy_server.post(long_prompt(frames, strength=0.8))
        progress: list[int] = []
        for message in socket.messages(deadline=time.monotonic() + 180):
            data = message.get("data", {})
            if data.get("prompt_id") != prompt_id:
                continue
            if message["type"] == "progress" and data.get("node") == "6":
                progress.append(data["value"])
                if len(progress) == 1:
                    # Flags set while the prompt runs are read right after it ends, before the next prompt.
                    comfy_server.free(unload_models=True)
                    comfy_server.interrupt(prompt_id)
            if message["type"] in ("execution_interrupted", "execution_success", "execution_error"):
                break
    finally:
        socket.close()
    entry = comfy_server.wait(prompt_id)
    assert status_messages(entry, "execution_interrupted"), entry["status"]
    assert progress and max(progress) < frames, "the restorer ran to the end"
    assert "7" not in entry["outputs"]

    entry = comfy_server.run(long_prompt(1, strength=0.5))
    cached = status_messages(entry, "execution_cached")[0]["nodes"]
    assert "4" in cached and "6" not in cached  # the unloaded model object was reused and placed again
    (preview,) = comfy_server.output_files(entry, "7")
    restored, original = read_png(preview), photo[110:366, 130:386]
    assert np.abs(restored.astype(np.int16) - original).mean() > 1


# --- the frontend ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page(frontend_page: FrontendPage, photo: np.ndarray, video: list[np.ndarray]) -> Iterator[FrontendPage]:
    """The frontend at the size of a user's browser window, with the workflows' input files in place (so that
    every file combo keeps the workflow's value)."""
    frontend_page.page.set_viewport_size(VIEWPORT)
    yield frontend_page


@pytest.mark.parametrize("name", NAMES)
def test_ui_workflow_loads_with_none_of_our_nodes_missing(page: FrontendPage, name: str):
    page.load_workflow(load(name))
    assert page.missing_node_types() == OTHER_PACKS_NODES.get(name, [])
    loaded = page.page.evaluate("() => window.app.graph.nodes.map((n) => [String(n.id), n.type])")
    assert sorted(loaded) == sorted([str(n["id"]), n["type"]] for n in load(name)["nodes"])


def comparable(prompt: dict) -> dict:
    """An API prompt as the server reads it: per node id its class, title and inputs. Inputs compare exactly:
    a link is `[source node id as a string, output slot]` in both, a widget value is the value itself, so a
    changed value, a link moved to another slot and a value turned into a link all differ."""
    return {node_id: {"class_type": node["class_type"], "title": node.get("_meta", {}).get("title"),
                      "inputs": node["inputs"]} for node_id, node in prompt.items()}


def is_link(value: object) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


@pytest.mark.parametrize("name", NAMES)
def test_the_frontends_export_of_each_ui_workflow_is_its_api_twin(page: FrontendPage, comfy_server: ComfyServer,
                                                                  name: str):
    page.load_workflow(load(name))
    exported = comparable(page.graph_to_prompt())
    twin = comparable(load(name, api=True))
    definitions = comfy_server.object_info()
    for node_id, node in exported.items():
        if node["class_type"] in definitions:
            # The export also carries display-only widgets the node class does not define (LoadVideo's
            # `video-preview`, added once the video has loaded); the server ignores them, so the twin need not
            # have them. The twin itself must name only defined inputs.
            specs = {k: spec for group in definitions[node["class_type"]]["input"].values() for k, spec in group.items()}
            node["inputs"] = {k: v for k, v in node["inputs"].items() if k in specs}
            twin_inputs = twin.get(node_id, {}).get("inputs", {})
            assert set(twin_inputs) <= set(specs), node_id
            # An input the host added since the twin was written (0.33: CreateVideo's bit_depth) is exported at
            # its default, which is what the server gives the twin too.
            for added in set(node["inputs"]) - set(twin_inputs):
                assert node["inputs"].pop(added) == specs[added][1]["default"], (node_id, added)
    for missing in OTHER_PACKS_NODES.get(name, []):
        # A node of a pack that is not installed is exported with its links only (no class, no widget values:
        # the frontend has no definition to name them by); the twin must have exactly those links.
        (node_id,) = [i for i, node in twin.items() if node["class_type"] == missing]
        expected_links = {k: v for k, v in twin.pop(node_id)["inputs"].items() if is_link(v)}
        placeholder = exported.pop(node_id)
        assert placeholder["class_type"] is None
        assert {k: v for k, v in placeholder["inputs"].items() if is_link(v)} == expected_links
    assert exported == twin


def test_the_page_export_differs_when_the_graph_does(page: FrontendPage):
    """The comparison above can fail: a changed widget value and a rewired link both show in the export."""
    workflow = load("restore_photo")
    restore = next(n for n in workflow["nodes"] if n["type"] == "GPENRestoreFaces")
    restore["widgets_values"] = [0.5]
    page.load_workflow(workflow)
    exported = comparable(page.graph_to_prompt())
    assert exported["5"]["inputs"]["strength"] == 0.5
    assert exported != comparable(load("restore_photo", api=True))


# Overlays drawn over the graph canvas (side bar, tabs, the floating workflow menu and Run bar, minimap, zoom
# controls, toasts): a node point is hidden when the topmost element there is neither the canvas nor the node's own
# DOM (a Vue-rendered node, a text box, an image preview).
_HIDDEN_POINTS = """(boxes) => {
    const canvas = window.app.canvas.canvas;
    const hidden = {};
    for (const [id, [left, top, right, bottom]] of Object.entries(boxes)) {
        const points = [[left + 2, top + 2], [right - 2, top + 2], [left + 2, bottom - 2], [right - 2, bottom - 2],
                        [(left + right) / 2, top + 8]];
        for (const [x, y] of points) {
            const inside = x >= 8 && y >= 8 && x < window.innerWidth - 8 && y < window.innerHeight - 8;
            const element = inside ? document.elementFromPoint(x, y) : null;
            const node = element && element.closest("[data-node-id]");
            const clear = element && (element === canvas || element.closest(".dom-widget, .comfy-img-preview")
                                      || (node && node.dataset.nodeId === id));
            if (!clear) (hidden[id] = hidden[id] || []).push([Math.round(x), Math.round(y),
                element ? element.tagName + "." + element.className : "off screen"]);
        }
    }
    return hidden;
}"""


def overlapping(boxes: dict[str, list[float]]) -> list[tuple[str, str]]:
    """Pairs of node boxes that overlap on the screen (title bars included)."""
    items = sorted(boxes.items())
    return [(a, b) for i, (a, (l1, t1, r1, b1)) in enumerate(items) for b, (l2, t2, r2, b2) in items[i + 1:]
            if l1 < r2 and l2 < r1 and t1 < b2 and t2 < b1]


@pytest.mark.parametrize("renderer", list(RENDERERS))
@pytest.mark.parametrize("name", NAMES)
def test_every_node_is_in_view_apart_and_clear_of_the_frontends_panels(page: FrontendPage, name: str,
                                                                       renderer: str, tmp_path: Path):
    """At the view the workflow opens with, in the classic canvas and with Vue-rendered nodes (which grow to fit
    their widgets and the pack's badge row), no two nodes overlap and every node's corners and title lie on the
    bare canvas inside a laptop's window: none under the side bar (the shipped files once opened with their left
    column under it), the tab bar, the Run bar, the minimap or a toast. With GPEN_WRITE_THUMBNAILS=1 the classic
    view is also written as `workflows/<file name>.jpg`, the template's picture."""
    workflow = load(name)
    thumbnail = os.environ.get("GPEN_WRITE_THUMBNAILS") == "1" and renderer == "litegraph"
    if thumbnail:
        for node_type in OTHER_PACKS_NODES.get(name, []):
            register_stand_in(page, name, node_type)
    page.set_setting("Comfy.VueNodes.Enabled", RENDERERS[renderer])
    try:
        page.load_workflow(workflow)
        page.page.evaluate("() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")
        boxes = page.node_screen_boxes(rendered=RENDERERS[renderer])
        page.screenshot(tmp_path / f"{name}-{renderer}.png")
        assert len(boxes) == len(workflow["nodes"])
        assert overlapping(boxes) == [], f"overlapping nodes (screenshot in {tmp_path})"
        # Frontend 1.35 (ComfyUI 0.8.0) enlarges a classic workflow 1.2 times for its Vue nodes, past any view
        # laid out for the classic canvas; 1.48 keeps the layout.
        saved_position = next(n["pos"] for n in workflow["nodes"] if n["id"] == 1)
        if page.node_position(1) != saved_position:
            return
        hidden = page.page.evaluate(_HIDDEN_POINTS, boxes)
        assert hidden == {}, f"hidden node points (screenshot in {tmp_path}): {hidden}"
        if thumbnail:
            write_thumbnail(page, boxes, WORKFLOWS / f"{FILE_NAMES[name]}.jpg")
    finally:
        page.set_setting("Comfy.VueNodes.Enabled", False)


def register_stand_in(page: FrontendPage, name: str, node_type: str) -> None:
    """Teach the page another pack's node (ReActor's) from the workflow itself, so its template picture shows it
    as users with that pack see it, not as a missing node: sockets from the UI file, widgets (in order, each
    offering its saved value) from the API twin. For thumbnails only: the page keeps it for the session."""
    node_id, twin = next((i, n) for i, n in load(name, api=True).items() if n["class_type"] == node_type)
    node = next(n for n in load(name)["nodes"] if str(n["id"]) == node_id)
    widget_types = {bool: "BOOLEAN", int: "INT", float: "FLOAT"}
    required = {slot["name"]: [slot["type"]] for slot in node["inputs"] if slot.get("shape") != 7}
    required |= {key: [widget_types[type(value)], {"default": value}] if type(value) in widget_types
                 else [[value], {"default": value}] for key, value in twin["inputs"].items() if not is_link(value)}
    optional = {slot["name"]: [slot["type"]] for slot in node["inputs"] if slot.get("shape") == 7}
    definition = {
        "name": node_type, "display_name": twin["_meta"]["title"], "category": "other packs", "description": "",
        "python_module": "custom_nodes.stand_in", "output_node": False,
        "input": {"required": required, "optional": optional},
        "input_order": {"required": list(required), "optional": list(optional)},
        "output": [slot["type"] for slot in node["outputs"]], "output_name": [slot["name"] for slot in node["outputs"]],
        "output_is_list": [False] * len(node["outputs"]),
    }
    page.page.evaluate("async ([id, d]) => { await window.app.registerNodeDef(id, d); }", [node_type, definition])


def write_thumbnail(page: FrontendPage, boxes: dict[str, list[float]], path: Path) -> None:
    """The graph as the page shows it, cropped to its nodes and scaled to THUMBNAIL_WIDTH, as a JPEG."""
    from PIL import Image

    margin = 16
    left = max(min(b[0] for b in boxes.values()) - margin, 0)
    top = max(min(b[1] for b in boxes.values()) - margin, 0)
    right = min(max(b[2] for b in boxes.values()) + margin, VIEWPORT["width"])
    bottom = min(max(b[3] for b in boxes.values()) + margin, VIEWPORT["height"])
    png = page.page.screenshot(clip={"x": left, "y": top, "width": right - left, "height": bottom - top})
    with Image.open(bytes_io.BytesIO(png)) as shot:
        height = round(shot.height * THUMBNAIL_WIDTH / shot.width)
        shot.convert("RGB").resize((THUMBNAIL_WIDTH, height), Image.LANCZOS).save(path, quality=85,
                                                                                   optimize=True)


@pytest.mark.slow
def test_restore_photo_queued_from_the_page_runs(page: FrontendPage, comfy_server: ComfyServer,
                                                 photo: np.ndarray):
    """As a user runs it: loaded in the page, two widgets set in the page (the detector the fixtures ship, and a
    strength no other test uses, so that restoring and pasting really run instead of coming from ComfyUI's
    cache), queued by the page."""
    page.load_workflow(load("restore_photo"))
    page.page.evaluate("""(detector) => {
        const graph = window.app.graph;
        graph.getNodeById(3).widgets.find((w) => w.name === "detector").value = detector;
        graph.getNodeById(5).widgets.find((w) => w.name === "strength").value = 0.65;
    }""", DETECTOR)
    entry = comfy_server.wait(page.queue(), timeout_s=180)
    assert entry["status"]["status_str"] == "success", describe_failure(entry)
    cached = {node for message in status_messages(entry, "execution_cached") for node in message["nodes"]}
    assert not {"5", "6", "7"} & cached
    (saved,) = comfy_server.output_files(entry, "7")
    assert_only_the_face_changed(read_png(saved), photo)


# The workflow files as the pack first shipped them (commit 8e28538): what users saved and share.
SAVED = Path(__file__).parent / "fixtures" / "saved_workflows"
# Inputs added since then, all optional with these defaults (so a saved file means what it meant; on video frames,
# the one-node restore now also steadies the restored detail, temporal_consistency being on by default).
ADDED_INPUTS = {"GPENModelLoader": {"task": "auto"},
                "GPENDetectFaces": {"temporal_smoothing": 1.0, "max_gap": 5, "detection_size": 0},
                "GPENRestoreFacesOneNode": {"temporal_smoothing": 1.0, "max_gap": 5, "detection_size": 0,
                                            "luminance": "keep", "damage_grow": 0.02, "damage_feather": 0.03,
                                            "temporal_consistency": True},
                "GPENRestoreFaces": {"output_size": "model", "luminance": "keep", "damage_grow": 0.02,
                                     "damage_feather": 0.03, "temporal_consistency": True}}
FIRST_RELEASE = ["restore_photo", "quick_restore", "after_face_swap", "after_generation", "video_frames"]


def load_saved(name: str, api: bool = False) -> dict:
    return json.loads((SAVED / (f"{name}.api.json" if api else f"{name}.json")).read_text(encoding="utf-8"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["restore_photo", "quick_restore"])
def test_a_workflow_saved_with_the_first_release_still_runs(comfy_server: ComfyServer, photo: np.ndarray,
                                                            name: str):
    entry = comfy_server.run(runnable(load_saved(name, api=True)))
    saved_node = next(i for i, node in load_saved(name, api=True).items() if node["class_type"] == "SaveImage")
    (saved,) = comfy_server.output_files(entry, saved_node)
    assert_only_the_face_changed(read_png(saved), photo)


@pytest.mark.parametrize("name", FIRST_RELEASE)
def test_a_ui_workflow_saved_with_the_first_release_loads_with_its_values(page: FrontendPage, name: str):
    page.load_workflow(load_saved(name))
    assert page.missing_node_types() == OTHER_PACKS_NODES.get(name, [])
    exported = page.graph_to_prompt()
    for node_id, node in load_saved(name, api=True).items():
        if node["class_type"] not in ADDED_INPUTS and not node["class_type"].startswith("GPEN"):
            continue
        # Every saved value lands on the input it was saved for; the added inputs take their defaults.
        expected = {**node["inputs"], **ADDED_INPUTS.get(node["class_type"], {})}
        assert exported[node_id]["inputs"] == expected, node_id


# --- the subgraph blueprint -------------------------------------------------------------------------------------

BLUEPRINTS = REPO_ROOT / "subgraphs"  # a pack's subgraph blueprints (ComfyUI's app/subgraph_manager.py)
BLUEPRINT = "GPEN restore faces"


def test_both_frontends_offer_the_blueprint(page: FrontendPage, comfy_server: ComfyServer):
    """The server lists the pack's blueprint, and the frontend turns it into a node of the node library (by the
    file name, with the blueprint's description)."""
    assert sorted(p.stem for p in BLUEPRINTS.glob("*.json")) == [BLUEPRINT]
    listed = comfy_server.request("/global_subgraphs")
    ours = [entry for entry in listed.values() if entry["info"]["node_pack"] == f"custom_nodes.{PACK_DIR_NAME}"]
    assert [entry["name"] for entry in ours] == [BLUEPRINT]
    offered = page.page.evaluate("""() => {
        const pinia = document.querySelector("#vue-app").__vue_app__.config.globalProperties.$pinia;
        return Array.from(pinia._s.get("subgraph").subgraphBlueprints)
            .map((b) => ({name: b.display_name, description: b.description}));
    }""")
    blueprint = json.loads((BLUEPRINTS / f"{BLUEPRINT}.json").read_text(encoding="utf-8"))
    assert {"name": BLUEPRINT, "description": blueprint["extra"]["BlueprintDescription"]} in offered


@pytest.mark.slow
def test_the_blueprint_placed_in_a_graph_runs(page: FrontendPage, comfy_server: ComfyServer, photo: np.ndarray):
    """Load Image -> the blueprint -> Save Image, as a user wires it: the frontend flattens the subgraph into the
    prompt it sends (its promoted widgets set the inner nodes) and the server restores the face."""
    graph = json.loads((BLUEPRINTS / f"{BLUEPRINT}.json").read_text(encoding="utf-8"))
    (node,) = graph["nodes"]
    node["inputs"][0]["link"], node["outputs"][0]["links"] = 1, [2]
    graph["nodes"] += [
        {"id": 2, "type": "LoadImage", "pos": [-400, 0], "size": [315, 314], "flags": {}, "order": 0, "mode": 0,
         "inputs": [], "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]},
                                   {"name": "MASK", "type": "MASK", "links": None}],
         "properties": {}, "widgets_values": ["portrait.png", "image"]},
        {"id": 3, "type": "SaveImage", "pos": [400, 0], "size": [315, 270], "flags": {}, "order": 2, "mode": 0,
         "inputs": [{"name": "images", "type": "IMAGE", "link": 2}], "outputs": [], "properties": {},
         "widgets_values": ["gpen/blueprint"]},
    ]
    graph["links"] = [[1, 2, 0, 1, 0, "IMAGE"], [2, 1, 0, 3, 0, "IMAGE"]]
    graph["last_node_id"], graph["last_link_id"] = 3, 2
    page.load_workflow(graph)
    prompt = page.graph_to_prompt()
    inner = {node["class_type"]: node for node in prompt.values()}
    assert set(inner) == {"LoadImage", "SaveImage", "GPENModelLoader", "GPENFaceDetectorLoader",
                          "GPENRestoreFacesOneNode"}
    assert inner["GPENModelLoader"]["inputs"]["model_name"] == "GPEN-BFR-2048.pth"
    entry = comfy_server.run(runnable(prompt))
    save_id = next(i for i, node in prompt.items() if node["class_type"] == "SaveImage")
    (saved,) = comfy_server.output_files(entry, save_id)
    assert saved.name.startswith("blueprint")
    assert_only_the_face_changed(read_png(saved), photo)
