"""Shared test fixtures (the test data, a models folder, the fixture photos, a real detected face, an empty home),
and the pack imported once under one name. Constants and helpers the tests share are in support.py."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from support import DETECTOR, DETECTOR_FILE, FIXTURES, REPO_ROOT, read_rgb, save_gpen

pytest_plugins = ["comfy_host"]


def _load_package() -> None:
    """Import the pack once, as the package `comfyui_gpen_restore`, through the command line's own loader; tests
    import its modules under that name only (the repository root is not on sys.path, so `import gpen_arch`
    fails instead of loading a second copy)."""
    spec = importlib.util.spec_from_file_location("restore_faces", REPO_ROOT / "restore_faces.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.load_package()


_load_package()

# Two cores here; keep torch's thread pool from oversubscribing them (results do not depend on it).
torch.set_num_threads(min(torch.get_num_threads(), 2))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"Test fixtures not found at {FIXTURES}: they are part of the repository; check out all of it")
    return FIXTURES


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


@pytest.fixture(scope="session")
def grace_face(fixtures_dir: Path):
    """The one real face of grace_hopper.jpg, as the fixture detector reports it (a `FaceRecord`)."""
    from comfyui_gpen_restore.face_utils import load_detector

    faces = load_detector(DETECTOR, fixtures_dir / "facedetection").detect(
        read_rgb(fixtures_dir / "images" / "grace_hopper.jpg"))
    assert len(faces) == 1
    return faces[0]


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    """An empty home and working folder, so no real model folder of this machine is ever found."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    return home
