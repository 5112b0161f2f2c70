"""What the tests share besides fixtures (those are in conftest.py): the test constants, test-made GPEN weights,
the fixture photos as arrays, a face record placed anywhere, a pickle that runs code, and the command line's
test driver. Defined here once; test modules import from here, never from each other."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

if TYPE_CHECKING:
    from comfyui_gpen_restore.face_utils import FaceRecord

REPO_ROOT = Path(__file__).resolve().parents[1]
# The torch pixel backend's device in tests: a CUDA GPU where there is one (benchmarks/gpu_check.sh), else the CPU
# (the same code).
TEST_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
FIXTURES = REPO_ROOT / "tests" / "fixtures"
# Small random GPENs keep tests to fractions of a second per face (GPEN-2048 takes seconds on a CPU).
SMALL_GPEN = {"style_dim": 64, "n_mlp": 2, "channel_multiplier": 1, "narrow": 0.125}
DETECTOR = "retinaface_mobile0.25"  # the one real detector the fixtures ship (see fixtures/README.md)
DETECTOR_FILE = "detection_mobilenet0.25_Final.pth"

# GPEN outputs compared in fp32 (tests/NUMERICS.md: the kernel settings measured). Their rounding (scale 4-6): ours
# and upstream's fixture each lie within 5.5e-6 of the fp64 result (about 10 ulps).
# Ours against upstream's fixture (upstream's code, made elsewhere): measured up to 6.7e-6 apart; a wiring error
# shows as 0.1-5.
PARITY_TOLERANCE = 1e-4
# Ours against ours with other kernels (another batch size, bands of rows): the same sums in another order, so at
# most the two distances to fp64, 1.1e-5; measured up to 4.2e-6. A band one row off shows as 0.36.
REORDER_TOLERANCE = 2e-5
# An 8-bit file read back against float pixels: rounding to the nearest level is off by at most half of one.
EIGHT_BIT_ROUNDING = 0.5 / 255


def save_gpen(path: Path, size: int = 64, seed: int = 0, out_size: int | None = None) -> Path:
    """Write a randomly initialised (upstream's init) small GPEN state dict to `path` (with `out_size`, upstream's
    FullGenerator_SR, restoring to that size)."""
    from comfyui_gpen_restore import gpen_arch  # the pack is importable once conftest.py has loaded it

    torch.manual_seed(seed)
    model = gpen_arch.GPEN(size=size, out_size=out_size, **SMALL_GPEN)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def read_rgb(path: Path) -> np.ndarray:
    """A fixture photo as float32 RGB [H, W, 3] in [0, 1]."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def image_batch(*frames: np.ndarray) -> torch.Tensor:
    """ComfyUI IMAGE [B, H, W, C] from numpy frames."""
    return torch.from_numpy(np.stack(frames))


FRAME_HW = (1080, 1920)  # a virtual video frame for placed faces, large enough for every tracking path
NOISE = 0.015  # landmark jitter, in face sizes: the middle of RetinaFace's 1-2 % on video


def place(
    base: FaceRecord, frame: int, center_xy: tuple[float, float], *, scale: float = 1.0, noise: float = 0.0,
    rng: np.random.Generator | None = None, score: float | None = None,
) -> FaceRecord:
    """`base` scaled about its box centre, moved so that centre is at `center_xy` in a `FRAME_HW` frame, with iid
    Gaussian noise of `noise` face sizes on every landmark and box coordinate."""
    from comfyui_gpen_restore.face_utils import FaceRecord

    box = np.array(base.box_xyxy).reshape(2, 2)
    centre = box.mean(axis=0)
    points = np.concatenate([np.array(base.landmarks_xy), box])
    points = (points - centre) * scale + np.array(center_xy)
    if noise:
        points = points + rng.normal(0.0, noise * base.box_size * scale, points.shape)
    return FaceRecord(
        frame_index=frame, image_size_hw=FRAME_HW, box_xyxy=tuple(points[5:].ravel()),
        score=base.score if score is None else score, landmarks_xy=tuple(map(tuple, points[:5])),
    )


class CodePayload:
    """Unpickling this would run `open(marker, "w")`: weights_only loading must refuse it before it runs."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def run_cli(args: list[object], home: Path) -> int:
    """The command line run in-process as if installed in `home`/custom_nodes/pack; returns its exit code."""
    from comfyui_gpen_restore.cli import main as cli

    return cli.main([str(a) for a in args], script_dir=home / "custom_nodes" / "pack")


def cli_args(models_dir: Path, *extra: object) -> list[object]:
    """The options that point the command line at `models_dir`'s test-made GPEN and the fixture detector."""
    return ["--model", models_dir / "facerestore_models" / "GPEN-BFR-64.pth",
            "--detector", DETECTOR, "--detector-dir", models_dir / "facedetection", *extra]


def one_error_line(err: str) -> str:
    """The single `error: ...` line a setup error prints, checked to be the only output besides progress."""
    lines = [line for line in err.splitlines() if not line.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


class GivenFace:
    """A stand-in detector that reports one given face (a `FaceRecord`) in every frame."""

    name = "stand-in"

    def __init__(self, face: FaceRecord) -> None:
        self.face = face

    def detect(self, frame: np.ndarray, *, frame_index: int = 0, **_) -> list[FaceRecord]:
        return [self.face.with_frame(frame_index)]


def save_realesrnet(path: Path, blocks: int = 2) -> Path:
    """A RealESRNet x2 in upstream GPEN's layout (`realesrnet_x2.pth`: BasicSR's RRDBNet state dict under
    "params_ema", 32 features, the input pixel-unshuffled to 12 channels), what core ComfyUI's upscaler reads,
    with `blocks` RRDB blocks instead of upstream's 23. Its weights upscale like a real one, only blurrier: the
    trunk is switched off (conv_body 0), the 12 unshuffled channels pass through every conv and upsampling, and
    conv_last averages each colour's four, so the output is the picture's 2x2 means enlarged 4x (leaky ReLU
    leaves values in 0..1 alone)."""
    features, growth, weights = 32, 32, {}

    def conv(name: str, inputs: int, outputs: int, pass_through: int = 0) -> None:
        weight = torch.zeros(outputs, inputs, 3, 3)
        for channel in range(pass_through):
            weight[channel, channel, 1, 1] = 1.0
        weights[f"{name}.weight"], weights[f"{name}.bias"] = weight, torch.zeros(outputs)

    conv("conv_first", 12, features, pass_through=12)
    for block in range(blocks):
        for dense in (1, 2, 3):
            for layer in range(1, 6):
                conv(f"body.{block}.rdb{dense}.conv{layer}", features + (layer - 1) * growth,
                     growth if layer < 5 else features)
    conv("conv_body", features, features)
    for name in ("conv_up1", "conv_up2", "conv_hr"):
        conv(name, features, features, pass_through=12)
    conv("conv_last", features, 3)
    for colour in range(3):  # pixel_unshuffle puts colour c's four sub-pixels at channels 4c .. 4c + 3
        weights["conv_last.weight"][colour, 4 * colour : 4 * colour + 4, 1, 1] = 0.25
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params_ema": weights}, path)
    return path


def face_mesh(points: np.ndarray, *, swap_sides: bool = False) -> np.ndarray:
    """A MediaPipe Face Mesh [478, 2] holding five (x, y) points (LANDMARK_NAMES order) at the indices core's face
    landmarks are read at, the rest far away (so reading any other index shows); `swap_sides` gives each pair
    MediaPipe's other naming (the subject's left first)."""
    from comfyui_gpen_restore.face_utils.landmark_faces import EYES, MESH_POINTS, MOUTH_CORNERS, NOSE_TIP

    mesh = np.full((MESH_POINTS, 2), -1000.0)
    eyes, mouth = (EYES[::-1], MOUTH_CORNERS[::-1]) if swap_sides else (EYES, MOUTH_CORNERS)
    mesh[list(eyes)], mesh[NOSE_TIP], mesh[list(mouth)] = points[:2], points[2], points[3:]
    return mesh


def face_landmarks(faces_by_frame: list[list[FaceRecord]], image_hw: tuple[int, int]) -> dict:
    """The FACE_LANDMARKS payload core ComfyUI's MediaPipe node would give for these faces: pixels with the image
    edge at 0 (ours have the first pixel's centre there, hence + 0.5), the box and the detector's score."""
    frames = [[{"landmarks_xy": face_mesh(np.asarray(f.landmarks_xy)) + 0.5,
                "bbox_xyxy": np.asarray(f.box_xyxy, np.float32) + 0.5, "score": f.score, "presence": 5.0,
                "blendshapes": {}} for f in faces] for faces in faces_by_frame]
    return {"frames": frames, "image_size": image_hw, "connection_sets": {}}
