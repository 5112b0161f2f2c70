"""Weights resolution and downloads, against an HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import re

import hashlib
import http.server
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
from test_gpen_loader import CodePayload

PAYLOAD = bytes(range(256)) * 5000  # 1.28 MB: several download chunks
PAYLOAD_SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.requests.append(self.path)
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


def test_downloads_missing_file_with_progress(server, tmp_path):
    base, handler = server
    calls = []
    path = resolve_weights(
        "weights.pth", tmp_path / "models", url=f"{base}/weights.pth", sha256=PAYLOAD_SHA256,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert path == tmp_path / "models" / "weights.pth"
    assert path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in path.parent.iterdir()) == ["weights.pth"]  # no temporary file left
    assert calls[0] == (0, len(PAYLOAD)) and calls[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert len(calls) > 2 and all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))
    assert handler.requests == ["/weights.pth"]


def test_progress_without_content_length(server, tmp_path):
    base, _ = server
    calls = []
    resolve_weights(
        "weights.pth", tmp_path, url=f"{base}/weights.pth?nolength", sha256=PAYLOAD_SHA256,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls[-1] == (len(PAYLOAD), None)


def test_present_file_is_used_without_download_or_checksum(tmp_path):
    (tmp_path / "weights.pth").write_bytes(b"the user's own file")
    # The address is dead and the checksum is wrong: neither may matter for a file already there.
    path = resolve_weights("weights.pth", tmp_path, url=_closed_port_url(), sha256="0" * 64)
    assert path.read_bytes() == b"the user's own file"


def test_bad_checksum_leaves_nothing_behind(server, tmp_path):
    base, _ = server
    with pytest.raises(ChecksumError) as error:
        resolve_weights("weights.pth", tmp_path, url=f"{base}/weights.pth", sha256="ab" * 32)
    message = str(error.value)
    assert "weights.pth" in message and PAYLOAD_SHA256 in message and "ab" * 32 in message
    assert list(tmp_path.iterdir()) == []
    assert isinstance(error.value, WeightsUnavailableError)


def test_offline_error_names_file_address_and_folder(tmp_path):
    url = _closed_port_url()
    with pytest.raises(WeightsUnavailableError) as error:
        resolve_weights("detection_Resnet50_Final.pth", tmp_path, url=url, sha256=PAYLOAD_SHA256)
    message = str(error.value)
    assert "detection_Resnet50_Final.pth" in message and url in message and str(tmp_path) in message
    assert list(tmp_path.iterdir()) == []


def test_http_error_is_reported(server, tmp_path):
    base, _ = server
    with pytest.raises(WeightsUnavailableError, match="404"):
        resolve_weights("weights.pth", tmp_path, url=f"{base}/missing.pth", sha256=PAYLOAD_SHA256)
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
    calls = []
    detector = load_detector("retinaface_mobile0.25", tmp_path, progress=lambda d, t: calls.append(d))
    assert (tmp_path / spec.filename).read_bytes() == data
    assert calls[-1] == len(data)
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


@pytest.mark.parametrize(("damage", "expected"), [
    ("cut", r"detection_mobilenet0.25_Final.pth is truncated or corrupt \([\d,]+ bytes"),
    ("empty", r"is an empty file \(0 bytes\)"),
    ("text", r"is not a PyTorch checkpoint"),
    ("code", r"needs code to load, which is never run"),
])
def test_a_damaged_detector_file_says_what_it_is_and_where_the_real_one_is(tmp_path, fixtures_dir, damage, expected):
    import torch

    from comfyui_gpen_restore.gpen_arch import UnsupportedCheckpointError

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
