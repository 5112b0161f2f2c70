"""Shared test fixtures: paths to `../shared/fixtures` (CI has it beside the clone)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT.parent / "shared" / "fixtures"

# Two cores here; keep torch's thread pool from oversubscribing them (results do not depend on it).
torch.set_num_threads(min(torch.get_num_threads(), 2))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"Test fixtures not found at {FIXTURES}: clone the project next to its shared/ folder")
    return FIXTURES
