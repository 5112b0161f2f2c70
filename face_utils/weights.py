"""Finding detector and parser weights in a model folder, downloading a missing file on first use.

Policy: a file the user placed in the folder is trusted and used as is (it may be another training run with the
same layout, as the test fixture detector is); only what we download is checked against its published SHA-256.
Downloads go through `torch.hub.download_url_to_file`, so the pack carries no network code of its own (the
ComfyUI registry's scanner flags packs that do). That function writes to a temporary file beside the target,
checks the SHA-256 we pass as `hash_prefix` (all 64 digits, so the whole digest is compared), moves the file into
place only when it matches, and deletes the temporary file on every failure: an interrupted or corrupted download
never leaves a file that looks valid. Nothing here runs at import time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.hub

from ..model_files.checkpoints import read_checkpoint
from ..model_files.errors import UnsupportedCheckpointError

logger = logging.getLogger(__name__)

# The start of torch.hub's message when the downloaded bytes do not have the expected SHA-256 (torch 2.x); the only
# RuntimeError `download_url_to_file` raises itself.
TORCH_HUB_HASH_MISMATCH = "invalid hash value"


class WeightsUnavailableError(RuntimeError):
    """A weights file is not in the model folder and could not be downloaded."""


class ChecksumError(WeightsUnavailableError):
    """A downloaded file does not have the published SHA-256; it has been deleted."""


@dataclass(frozen=True)
class WeightsSpec:
    """Where a weights file officially comes from, and its published SHA-256."""

    filename: str
    url: str
    sha256: str


# Official release addresses. SHA-256 sums: facexlib's release assets (v0.1.0 detection, v0.2.2 parsing) and the
# OpenCV zoo's Git LFS object for YuNet, each cross-checked in several independent public manifests (for example
# the Arch Linux python-facexlib PKGBUILD and download scripts that pin them); none is computed by us.
KNOWN_WEIGHTS: dict[str, WeightsSpec] = {
    "retinaface_resnet50": WeightsSpec(
        filename="detection_Resnet50_Final.pth",
        url="https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth",
        sha256="6d1de9c2944f2ccddca5f5e010ea5ae64a39845a86311af6fdf30841b0a5a16d",
    ),
    "retinaface_mobile0.25": WeightsSpec(
        filename="detection_mobilenet0.25_Final.pth",
        url="https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_mobilenet0.25_Final.pth",
        sha256="2979b33ffafda5d74b6948cd7a5b9a7a62f62b949cef24e95fd15d2883a65220",
    ),
    "yunet": WeightsSpec(
        filename="face_detection_yunet_2023mar.onnx",
        url=(
            "https://media.githubusercontent.com/media/opencv/opencv_zoo/main/models/face_detection_yunet/"
            "face_detection_yunet_2023mar.onnx"
        ),
        sha256="8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
    ),
    "parsenet": WeightsSpec(
        filename="parsing_parsenet.pth",
        url="https://github.com/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth",
        sha256="3d558d8d0e42c20224f13cf5a29c79eba2d59913419f945545d8cf7b72920de2",
    ),
}


def resolve_weights(filename: str, model_dir: str | Path, *, url: str, sha256: str) -> Path:
    """Path of `filename` in `model_dir`, downloading it from `url` first if it is not there.

    A present file is returned without reading it (trusted: the user put it there). A missing one is downloaded
    with `torch.hub.download_url_to_file`, which shows its progress bar on stderr (ComfyUI's console) and must
    end with the SHA-256 `sha256` (64 hex digits), else it is deleted. torch.hub sets no network timeout: a server
    that stops sending mid-file keeps the call waiting until the connection drops.

    Raises:
        WeightsUnavailableError: the download failed (offline, HTTP error, connection lost, disk full); the
            message names the file, the address and the folder to put it in by hand.
        ChecksumError: the downloaded bytes do not match `sha256` (a truncated download ends here too, since
            torch.hub does not compare the length with Content-Length); nothing is left behind.
    """
    if Path(filename).name != filename or not filename:
        raise ValueError(f"filename must be a bare file name, got {filename!r}")
    folder = Path(model_dir).expanduser()
    target = folder / filename
    if target.is_file():
        return target
    expected = sha256.strip().lower()
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")

    logger.info("%s not found in %s; downloading it from %s", filename, folder, url)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsUnavailableError(
            f"Cannot create the model folder {folder} to download {filename} into ({exc}). Create it, or download "
            f"{url} yourself and put it there as {filename}."
        ) from exc

    try:
        torch.hub.download_url_to_file(url, str(target), hash_prefix=expected, progress=True)
    except Exception as exc:
        # torch.hub lets the standard library's HTTP errors through: URLError/HTTPError and other OSErrors
        # (refused, reset, disk full), and protocol errors such as IncompleteRead (a truncated chunked body),
        # which are not OSErrors. Each means "the file is not available"; the cause stays attached.
        if isinstance(exc, RuntimeError) and str(exc).startswith(TORCH_HUB_HASH_MISMATCH):
            raise ChecksumError(
                f"Downloaded {filename} from {url}, but it is not the published file (torch.hub: {exc}; expected "
                f"SHA-256 {expected}). The download was incomplete or altered and the file was deleted. Try again "
                f"later, or download it yourself and put it in {folder} as {filename}."
            ) from exc
        raise WeightsUnavailableError(
            f"Could not download {filename} from {url} ({type(exc).__name__}: {exc}). If this machine is offline, "
            f"download that address elsewhere and put the file in {folder} as {filename}."
        ) from exc
    logger.info("Saved %s (SHA-256 verified)", target)
    return target


def resolve_known_weights(key: str, model_dir: str | Path) -> Path:
    """`resolve_weights` for one of `KNOWN_WEIGHTS` (by key, for example "retinaface_resnet50")."""
    try:
        spec = KNOWN_WEIGHTS[key]
    except KeyError:
        raise ValueError(f"Unknown weights {key!r}; expected one of {sorted(KNOWN_WEIGHTS)}") from None
    return resolve_weights(spec.filename, model_dir, url=spec.url, sha256=spec.sha256)


def load_state_dict_into(net: torch.nn.Module, path: Path, key: str) -> torch.nn.Module:
    """Load the weights at `path` (plain tensors only, through `model_files.checkpoints.read_checkpoint`) strictly into
    `net`, facexlib's network for the `KNOWN_WEIGHTS[key]` file; unwraps a `state_dict` container and a
    DataParallel `module.` prefix. Raises `UnsupportedCheckpointError` (a ValueError) naming the expected file
    and its address when the file does not fit."""
    spec = KNOWN_WEIGHTS[key]
    expected = f"Expected {spec.filename} from {spec.url} (delete the file to have it downloaded again)"
    state_dict = read_checkpoint(path, where_to_get=expected)
    if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
        state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, dict):
        raise UnsupportedCheckpointError(
            f"{path} holds a {type(state_dict).__name__}, not a state dict. {expected}."
        )
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    try:
        net.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise UnsupportedCheckpointError(
            f"{path} is not a {key} checkpoint with facexlib's layout ({str(exc).splitlines()[0]}). {expected}."
        ) from exc
    return net
