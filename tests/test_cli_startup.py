"""The command line answers `--help` and mistakes in its arguments without importing torch, OpenCV or the other
heavy libraries (seconds on a cold start), and a job imports only the optional libraries it uses.

Each case runs `restore_faces.py` in a fresh interpreter, as a user does, and looks at the modules it imported;
nothing here is timed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import DETECTOR, REPO_ROOT

HEAVY = ("torch", "cv2", "numpy", "facexlib", "torchvision", "av", "onnxruntime")

# Runs the script as `python restore_faces.py ARGS` would (its exit included), then prints its exit code and the
# modules the process imported, as JSON on the last line of stdout.
RUN_AND_LIST_MODULES = """
import json, runpy, sys
sys.argv = sys.argv[1:]
code = 0
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exc:
    code = exc.code
print(json.dumps({"exit": code, "modules": sorted(sys.modules)}))
"""

COMMANDS = {
    "help": ["--help"],
    "unknown choice": ["--input", "photo.jpg", "--detector", "no_such_detector"],  # argparse's error
    "missing input": ["--input", "no_such_photo.jpg"],  # the command line's own check of the paths
}


@dataclass(frozen=True)
class Run:
    exit: int
    stdout: str  # without the last line, the listing
    stderr: str
    packages: frozenset[str]  # the top-level packages imported


def run_script(args: list[str], cwd: Path) -> Run:
    result = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST_MODULES, str(REPO_ROOT / "restore_faces.py"), *args],
        capture_output=True, text=True, cwd=cwd, timeout=300,
    )
    *printed, listing = result.stdout.splitlines() or [""]
    assert listing.startswith("{"), result.stderr
    report = json.loads(listing)
    return Run(report["exit"], "\n".join(printed), result.stderr,
               frozenset(name.split(".")[0] for name in report["modules"]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    """Each of `COMMANDS` run once, in an empty folder."""
    cwd = tmp_path_factory.mktemp("startup")
    return {command: run_script(args, cwd) for command, args in COMMANDS.items()}


def test_the_commands_are_help_and_two_mistakes(runs):
    """What the import checks below run really is `--help` and two errors, not something that stopped earlier."""
    assert runs["help"].exit == 0 and "--detector" in runs["help"].stdout
    assert runs["unknown choice"].exit == 2 and "invalid choice: 'no_such_detector'" in runs["unknown choice"].stderr
    assert runs["missing input"].exit == 2
    assert "error: --input no_such_photo.jpg: no such file or folder" in runs["missing input"].stderr


@pytest.mark.parametrize("module", HEAVY)
@pytest.mark.parametrize("command", COMMANDS)
def test_help_and_argument_errors_import_no_heavy_library(runs, command, module):
    assert module not in runs[command].packages


@pytest.mark.slow
def test_an_image_job_imports_neither_pyav_nor_onnxruntime(models_dir, tmp_path, fixtures_dir):
    photo = fixtures_dir / "images" / "grace_hopper.jpg"
    run = run_script(["--input", str(photo), "--output", str(tmp_path / "out.png"), "--model",
                      str(models_dir / "facerestore_models" / "GPEN-BFR-64.pth"), "--detector", DETECTOR,
                      "--detector-dir", str(models_dir / "facedetection")], tmp_path)
    assert run.exit == 0 and (tmp_path / "out.png").is_file(), run.stderr
    assert {"torch", "cv2", "facexlib"} <= run.packages  # RetinaFace is facexlib's
    assert not run.packages & {"av", "onnxruntime"}


@pytest.mark.slow
def test_an_aligned_job_imports_no_face_detector_library(models_dir, tmp_path, fixtures_dir):
    crop = fixtures_dir / "images" / "astronaut.png"
    run = run_script(["--aligned", "--input", str(crop), "--output", str(tmp_path / "out.png"), "--model",
                      str(models_dir / "facerestore_models" / "GPEN-BFR-64.pth")], tmp_path)
    assert run.exit == 0 and (tmp_path / "out.png").is_file(), run.stderr
    assert "torch" in run.packages
    assert not run.packages & {"facexlib", "torchvision", "av", "onnxruntime"}
