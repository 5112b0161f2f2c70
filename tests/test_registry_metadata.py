"""What the ComfyUI registry reads: pyproject.toml's fields against the registry's documented rules, the icon the
metadata points at, the README's stated ComfyUI floor, and which files `.comfyignore` keeps out of the package."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib

import cv2
import pytest
from support import REPO_ROOT

# Rules from the registry: publisher ids as the registry backend validates them; node names as
# docs.comfy.org/registry/specifications states them; the classifier values comfy-cli accepts.
PUBLISHER_ID = re.compile(r"[a-z][a-z0-9-]*")
NODE_NAME = re.compile(r"[A-Za-z](?:[A-Za-z0-9]|[-_.](?=[A-Za-z0-9])){0,98}")
REGISTRY_CLASSIFIERS = {
    "Operating System :: OS Independent",
    "Operating System :: Microsoft :: Windows",
    "Operating System :: POSIX :: Linux",
    "Operating System :: MacOS",
    "Environment :: GPU :: NVIDIA CUDA",
    "Environment :: GPU :: AMD ROCm",
    "Environment :: GPU :: Intel Arc",
    "Environment :: NPU :: Huawei Ascend",
    "Environment :: GPU :: Apple Metal",
}
ICON_MAX_SIDE = 400  # the registry's limit for icons


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_names_follow_the_registry_rules(pyproject):
    assert NODE_NAME.fullmatch(pyproject["project"]["name"])
    assert PUBLISHER_ID.fullmatch(pyproject["tool"]["comfy"]["PublisherId"])
    assert pyproject["tool"]["comfy"]["DisplayName"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pyproject["project"]["version"])


def test_classifiers_are_the_registrys_own(pyproject):
    classifiers = set(pyproject["project"]["classifiers"])
    assert classifiers <= REGISTRY_CLASSIFIERS, classifiers - REGISTRY_CLASSIFIERS
    assert any(c.startswith("Operating System :: ") for c in classifiers)
    assert any(c.startswith("Environment :: ") for c in classifiers)


def test_urls_and_icon_point_into_the_repository(pyproject):
    urls = pyproject["project"]["urls"]
    repository = urls["Repository"]
    owner_and_name = re.fullmatch(r"https://github\.com/([^/]+/[^/]+)", repository).group(1)
    assert urls["Issues"] == f"{repository}/issues"
    assert urls["Documentation"].startswith(repository)
    icon_url = pyproject["tool"]["comfy"]["Icon"]
    prefix = f"https://raw.githubusercontent.com/{owner_and_name}/main/"
    assert icon_url.startswith(prefix), icon_url
    # The file the URL will serve once pushed: a square PNG within the registry's size limit, with transparency.
    icon_path = REPO_ROOT / icon_url.removeprefix(prefix)
    assert icon_path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    icon = cv2.imread(str(icon_path), cv2.IMREAD_UNCHANGED)
    assert icon.shape[0] == icon.shape[1] <= ICON_MAX_SIDE and icon.shape[2] == 4
    assert icon[0, 0, 3] == 0 and icon[icon.shape[0] // 2, icon.shape[1] // 2, 3] == 255  # rounded corners
    assert icon[..., :3].std() > 20  # a picture, not a flat fill


def test_readme_states_the_same_oldest_comfyui(pyproject):
    floor = re.fullmatch(r">=(\d+\.\d+\.\d+)", pyproject["tool"]["comfy"]["requires-comfyui"]).group(1)
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    installation = readme.split("## Installation into ComfyUI", 1)[1].split("\n## ", 1)[0]
    assert re.search(rf"\*\*Requirements:\*\* ComfyUI {re.escape(floor)} or newer", installation)


def test_comfyignore_keeps_development_files_out_of_the_package():
    git = shutil.which("git")
    inside = git and subprocess.run([git, "rev-parse", "--is-inside-work-tree"], cwd=REPO_ROOT,
                                    capture_output=True, text=True).stdout.strip() == "true"
    if not inside:
        pytest.skip("not a git checkout: comfy-cli packs git-tracked files, so there is nothing to check")
    tracked = subprocess.run([git, "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True).stdout.splitlines()
    # The tracked files that match .comfyignore, with git's own gitignore matching (comfy-cli uses the same syntax).
    ignored = set(subprocess.run([git, "ls-files", "--cached", "--ignored", "--exclude-from=.comfyignore"],
                                 cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.splitlines())
    published = [path for path in tracked if path not in ignored]
    for folder in ("tests/", "benchmarks/", ".ci/"):
        assert any(path.startswith(folder) for path in tracked)
        assert not [path for path in published if path.startswith(folder)], folder
    for needed in ("__init__.py", "nodes/__init__.py", "pyproject.toml", "requirements.txt", "README.md", "LICENSE",
                   "restore_faces.py", "face_utils/weights.py", "gpen_arch/model.py",
                   "workflows/GPEN restore a photo.json", "subgraphs/GPEN restore faces.json"):
        assert needed in published, needed
    assert sum(path.startswith("workflows/") for path in published) == sum(
        path.startswith("workflows/") for path in tracked)


# Import names of the declared distributions (PyPI name -> module).
IMPORT_NAMES = {"numpy": "numpy", "opencv-python": "cv2", "facexlib": "facexlib", "safetensors": "safetensors",
                "onnxruntime": "onnxruntime"}


def test_every_declared_dependency_is_imported_by_the_pack(pyproject):
    requirements = [line.strip() for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    declared = pyproject["project"]["dependencies"]
    assert sorted(requirements) == sorted(declared)
    sources = "\n".join(p.read_text(encoding="utf-8") for p in REPO_ROOT.glob("*.py")) + "\n".join(
        p.read_text(encoding="utf-8") for folder in ("gpen_arch", "face_utils") for p in (REPO_ROOT / folder).glob("*.py"))
    for name in [*declared, *pyproject["project"]["optional-dependencies"]["onnx"]]:
        module = IMPORT_NAMES[name]
        assert re.search(rf"^\s*(import {module}\b|from {module}\b)", sources, re.M), f"{name} is declared, never imported"
