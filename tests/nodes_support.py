"""Fixtures shared by the node, workflow and command-line tests: a ComfyUI-style models folder with test-made
GPEN weights and the real offline face detector, and the fixture photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from comfyui_gpen_restore import gpen_arch

REPO_ROOT = Path(__file__).resolve().parents[1]
# Small random GPENs keep tests to fractions of a second per face (GPEN-2048 takes seconds on a CPU).
SMALL_GPEN = {"style_dim": 64, "n_mlp": 2, "channel_multiplier": 1, "narrow": 0.125}
DETECTOR = "retinaface_mobile0.25"  # the one real detector the fixtures ship (see fixtures/README.md)
DETECTOR_FILE = "detection_mobilenet0.25_Final.pth"


def save_gpen(path: Path, size: int = 64, seed: int = 0) -> Path:
    """Write a randomly initialised (upstream's init) small GPEN state dict to `path`."""
    torch.manual_seed(seed)
    model = gpen_arch.GPEN(size=size, **SMALL_GPEN)
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


@pytest.fixture
def models_dir(tmp_path: Path, fixtures_dir: Path) -> Path:
    """A ComfyUI models folder: facerestore_models/GPEN-BFR-64.pth (test-made) and the fixture detector."""
    root = tmp_path / "models"
    save_gpen(root / "facerestore_models" / "GPEN-BFR-64.pth", 64)
    (root / "facedetection").mkdir(parents=True)
    shutil.copy(fixtures_dir / "facedetection" / DETECTOR_FILE, root / "facedetection" / DETECTOR_FILE)
    return root


@pytest.fixture
def grace(fixtures_dir: Path) -> np.ndarray:
    return read_rgb(fixtures_dir / "images" / "grace_hopper.jpg")


@pytest.fixture
def astronaut(fixtures_dir: Path) -> np.ndarray:
    return read_rgb(fixtures_dir / "images" / "astronaut.png")
