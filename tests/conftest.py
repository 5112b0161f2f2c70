"""Shared test fixtures: the test data in tests/fixtures, and the pack imported once under one name."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytest_plugins = ["comfy_host"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def _load_package() -> None:
    """Import the pack once, as the package `comfyui_gpen_restore`, through the command line's own loader; tests
    import its modules under that name only (the repository root is not on sys.path, so `import gpen_arch`
    fails instead of loading a second copy)."""
    spec = importlib.util.spec_from_file_location("restore_faces", REPO_ROOT / "restore_faces.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.load_package()


_load_package()

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Two cores here; keep torch's thread pool from oversubscribing them (results do not depend on it).
torch.set_num_threads(min(torch.get_num_threads(), 2))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"Test fixtures not found at {FIXTURES}: they are part of the repository; check out all of it")
    return FIXTURES
