"""Weights resolution and downloads (through torch.hub), against an HTTP server on 127.0.0.1, never the internet."""

from __future__ import annotations

import ast
import hashlib
import http.server
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from comfyui_gpen_restore import face_utils
from comfyui_gpen_restore.face_utils import ChecksumError, WeightsSpec, WeightsUnavailableError, load_detector, resolve_weights
from comfyui_gpen_restore.face_utils.weights import KNOWN_WEIGHTS
from support import CodePayload

PAYLOAD = bytes(range(256)) * 5000  # 1.28 MB: several of torch.hub's 128 kB read chunks
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
PACKAGE_ROOT = Path(face_utils.__file__).resolve().parents[1]
# Modules whose import would be network code of our own (what the ComfyUI registry's scanner looks for).
NETWORK_MODULES = {"urllib", "http", "socket", "ssl", "requests", "urllib3", "httpx", "aiohttp"}


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.requests.append(self.path)
        if self.path == "/truncated.pth":
            # Announces the whole file, sends half, closes: a connection lost mid-download.
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            return
        if self.path == "/truncated-chunked.pth":
            # Chunked encoding cut inside a chunk: http.client raises IncompleteRead, which is not an OSError.
            self.protocol_version = "HTTP/1.1"
            self.close_connection = True
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(f"{len(PAYLOAD):x}\r\n".encode() + PAYLOAD[:1000])
            return
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        if not self.path.endswith("?nolength"):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server():
    _Handler.files = {"/weights.pth": PAYLOAD, "/weights.pth?nolength": PAYLOAD}
    _Handler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/weights.pth"


def test_downloads_missing_file_with_progress_bar(server, tmp_path, capsys):
    base, handler = server
    path = resolve_weights("weights.pth", tmp_path / "models", url=f"{base}/weights.pth", sha256=PAYLOAD_SHA256)
    assert path == tmp_path / "models" / "weights.pth"
    assert path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in path.parent.iterdir()) == ["weights.pth"]  # no temporary file left
    assert handler.requests == ["/weights.pth"]
    # torch.hub's bar (tqdm's, or its own "100.0%" without tqdm), on stderr (ComfyUI's console), reached the end.
    assert re.search(r"\b100(\.0)?%", capsys.readouterr().err)


def test_download_without_content_length_is_still_verified(server, tmp_path):
    base, _ = server
    path = resolve_weights("weights.pth", tmp_path, url=f"{base}/weights.pth?nolength", sha256=PAYLOAD_SHA256)
    assert path.read_bytes() == PAYLOAD
    with pytest.raises(ChecksumError):
        resolve_weights("other.pth", tmp_path, url=f"{base}/weights.pth?nolength", sha256="cd" * 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.pth"]


def test_present_file_is_used_without_download_or_checksum(tmp_path):
    (tmp_path / "weights.pth").write_bytes(b"the user's own file")
    # The address is dead and the checksum is wrong: neither may matter for a file already there.
    path = resolve_weights("weights.pth", tmp_path, url=_closed_port_url(), sha256="0" * 64)
    assert path.read_bytes() == b"the user's own file"


def test_bad_checksum_leaves_nothing_behind(server, tmp_path):
    base, _ = server
    with pytest.raises(ChecksumError) as error:
        resolve_weights("weights.pth", tmp_path, url=f"{base}/weights.pth", sha256="AB" * 32)
    message = str(error.value)
    assert "weights.pth" in message and PAYLOAD_SHA256 in message and "ab" * 32 in message
    assert "deleted" in message and str(tmp_path) in message
    assert list(tmp_path.iterdir()) == []
    assert isinstance(error.value, WeightsUnavailableError)


def test_offline_error_names_file_address_and_folder(tmp_path):
    url = _closed_port_url()
    with pytest.raises(WeightsUnavailableError) as error:
        resolve_weights("detection_Resnet50_Final.pth", tmp_path, url=url, sha256=PAYLOAD_SHA256)
    assert not isinstance(error.value, ChecksumError)
    message = str(error.value)
    assert "detection_Resnet50_Final.pth" in message and url in message and str(tmp_path) in message
    assert list(tmp_path.iterdir()) == []


def test_http_error_is_reported(server, tmp_path):
    base, _ = server
    with pytest.raises(WeightsUnavailableError, match="404") as error:
        resolve_weights("weights.pth", tmp_path, url=f"{base}/missing.pth", sha256=PAYLOAD_SHA256)
    assert not isinstance(error.value, ChecksumError)
    assert f"{base}/missing.pth" in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_connection_lost_mid_download_leaves_nothing_behind(server, tmp_path):
    base, handler = server
    # torch.hub does not compare the bytes received with Content-Length; the full SHA-256 catches the shortfall.
    with pytest.raises(ChecksumError, match="incomplete"):
        resolve_weights("weights.pth", tmp_path, url=f"{base}/truncated.pth", sha256=PAYLOAD_SHA256)
    assert handler.requests == ["/truncated.pth"]
    assert list(tmp_path.iterdir()) == []


def test_broken_chunked_download_is_reported_with_the_address(server, tmp_path):
    base, _ = server
    url = f"{base}/truncated-chunked.pth"
    with pytest.raises(WeightsUnavailableError) as error:
        resolve_weights("weights.pth", tmp_path, url=url, sha256=PAYLOAD_SHA256)
    assert "IncompleteRead" in str(error.value) and url in str(error.value) and str(tmp_path) in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="bare file name"):
        resolve_weights("../x.pth", tmp_path, url="http://127.0.0.1/x", sha256=PAYLOAD_SHA256)
    with pytest.raises(ValueError, match="64 hex"):
        resolve_weights("x.pth", tmp_path, url="http://127.0.0.1/x", sha256="abc")


def test_known_weights_are_official_and_pinned():
    assert set(KNOWN_WEIGHTS) == {"retinaface_resnet50", "retinaface_mobile0.25", "yunet", "parsenet"}
    for spec in KNOWN_WEIGHTS.values():
        assert spec.url.startswith("https://") and spec.url.endswith(spec.filename)
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256), spec.sha256  # a full lower-case SHA-256


def test_detector_is_downloaded_on_first_use(server, tmp_path, fixtures_dir, monkeypatch):
    base, handler = server
    fixture = fixtures_dir / "facedetection" / "detection_mobilenet0.25_Final.pth"
    data = fixture.read_bytes()
    handler.files["/detection_mobilenet0.25_Final.pth"] = data
    spec = WeightsSpec(
        "detection_mobilenet0.25_Final.pth", f"{base}/detection_mobilenet0.25_Final.pth",
        hashlib.sha256(data).hexdigest(),
    )
    monkeypatch.setitem(KNOWN_WEIGHTS, "retinaface_mobile0.25", spec)
    detector = load_detector("retinaface_mobile0.25", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [spec.filename]
    assert (tmp_path / spec.filename).read_bytes() == data
    assert detector.detect(np.full((64, 64, 3), 0.5, np.float32)) == []
    # Second load: the file is there, no request is made.
    load_detector("retinaface_mobile0.25", tmp_path)
    assert handler.requests == ["/detection_mobilenet0.25_Final.pth"]


def test_import_loads_no_model_library():
    root = Path(face_utils.__file__).resolve().parents[1]
    # Imported as the command line imports the pack (face_utils imports gpen_arch relatively, so the folder is
    # never imported alone).
    code = ("import sys, restore_faces; restore_faces.load_package(); import comfyui_gpen_restore.face_utils; "
            "print('facexlib' in sys.modules, 'torchvision' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_copy_of_fixture_detector_is_accepted_by_name(tmp_path, fixtures_dir):
    # The fixture is another training run than facexlib's release: a present file must not be checksum-rejected.
    shutil.copy(fixtures_dir / "facedetection" / "detection_mobilenet0.25_Final.pth", tmp_path)
    assert load_detector("retinaface_mobile0.25", tmp_path).name == "retinaface_mobile0.25"


def test_package_has_no_network_code_of_its_own():
    # Shipped modules only (tests and benchmarks are not published); downloads belong to torch.hub.
    offenders, checked = [], []
    for folder, subfolders, files in os.walk(PACKAGE_ROOT):
        subfolders[:] = [d for d in subfolders if not d.startswith((".", "__")) and d not in {"tests", "benchmarks"}]
        checked += [Path(folder, name) for name in files if name.endswith(".py")]
    for path in checked:
        relative = path.relative_to(PACKAGE_ROOT)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{relative}: import {name}" for name in names if name.split(".")[0] in NETWORK_MODULES]
    assert offenders == []
    assert PACKAGE_ROOT / "face_utils" / "weights.py" in checked and PACKAGE_ROOT / "nodes" / "models.py" in checked


@pytest.mark.parametrize(("damage", "expected"), [
    ("cut", r"detection_mobilenet0.25_Final.pth is truncated or corrupt \([\d,]+ bytes"),
    ("empty", r"is an empty file \(0 bytes\)"),
    ("text", r"is not a PyTorch checkpoint"),
    ("code", r"needs code to load, which is never run"),
])
def test_a_damaged_detector_file_says_what_it_is_and_where_the_real_one_is(tmp_path, fixtures_dir, damage, expected):
    import torch

    from comfyui_gpen_restore.model_files.errors import UnsupportedCheckpointError

    spec = KNOWN_WEIGHTS["retinaface_mobile0.25"]
    target = tmp_path / spec.filename
    data = (fixtures_dir / "facedetection" / spec.filename).read_bytes()
    if damage == "cut":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        target.write_bytes(b"")
    elif damage == "text":
        target.write_text("404: Not Found")
    else:
        torch.save({"state_dict": {}, "hook": CodePayload(str(tmp_path / "ran"))}, target)
    with pytest.raises(UnsupportedCheckpointError, match=expected) as error:
        load_detector("retinaface_mobile0.25", tmp_path)
    message = str(error.value)
    assert spec.url in message and "weights_only" not in message and message.endswith(".")
    assert not (tmp_path / "ran").exists()


def test_an_offline_detector_names_the_other_detectors(tmp_path, monkeypatch):
    spec = KNOWN_WEIGHTS["retinaface_resnet50"]
    offline = WeightsSpec(spec.filename, _closed_port_url(), spec.sha256)
    monkeypatch.setitem(KNOWN_WEIGHTS, "retinaface_resnet50", offline)
    (tmp_path / KNOWN_WEIGHTS["yunet"].filename).write_bytes(b"onnx")
    with pytest.raises(WeightsUnavailableError) as error:
        load_detector("retinaface_resnet50", tmp_path)
    message = str(error.value)
    assert "Could not download detection_Resnet50_Final.pth" in message  # the download's own message, then:
    assert "Or choose another detector: retinaface_mobile0.25 (detection_mobilenet0.25_Final.pth)" in message
    assert "yunet (face_detection_yunet_2023mar.onnx, already in that folder)" in message
