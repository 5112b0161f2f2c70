"""The real ComfyUI as a test host (a pytest plugin, loaded by conftest.py).

Three ways in, from cheapest to fullest:
- `comfy_inprocess`: ComfyUI's own modules imported in this process (model management, model patcher, utils,
  folder_paths, the V3 `io` API), as ComfyUI's tests-unit import them;
- `comfy_server`: a real ComfyUI server on 127.0.0.1 with this pack installed as a custom node, test-made GPEN
  weights and the fixture face detector, driven over its HTTP API and websocket;
- `frontend_page`: ComfyUI's real web frontend, served by that server, in a headless Chromium (Playwright).

A hand-written double of ComfyUI drifts from it silently; these fixtures keep the host real. Only the standard
library talks HTTP (urllib) and websocket (a minimal client below) so the harness adds no dependency of its own.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support import DETECTOR_FILE, REPO_ROOT, save_gpen, save_realesrnet

PACK_DIR_NAME = "comfyui-gpen-restore"  # the folder name users clone into (README), so ComfyUI's module name
# Our pack imported in-process: as a package under this name, never as top-level `nodes` (ComfyUI's own module).
CHROMIUM = Path("/usr/lib/chromium/chromium-headless-shell")  # Debian's chromium-headless-shell (tests/run.sh)
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-background-networking",  # nothing but 127.0.0.1: no update, metrics or safe-browsing traffic
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
SERVER_START_TIMEOUT_S = 180.0  # a cold start imports torch, ComfyUI's nodes and ours on a shared 2-core machine
PAGE_READY_TIMEOUT_S = 120.0


def comfyui_dir() -> Path:
    """The ComfyUI work tree to test against: $COMFYUI_DIR (tests/run.sh exports its choice), else
    ../shared/comfyui beside the clone. Read-only: nothing is ever written inside it."""
    env = os.environ.get("COMFYUI_DIR")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "comfyui"
    if not (path / "main.py").is_file() or not (path / "comfy").is_dir():
        pytest.fail(f"No ComfyUI at {path} (expected main.py and comfy/ there): set COMFYUI_DIR or run tests/run.sh")
    return path.resolve()


# --- in-process ------------------------------------------------------------------------------------------------


def import_comfy() -> types.SimpleNamespace:
    """Import ComfyUI's real modules into this process, on the CPU.

    ComfyUI's folder goes first on sys.path (its top-level names, `nodes`, `utils`, `app`, must win), and
    `comfy.cli_args.args.cpu` is set before `comfy.model_management` is imported, because model management picks
    its device once, at import."""
    root = str(comfyui_dir())
    if root not in sys.path:
        sys.path.insert(0, root)
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management
    import comfy.model_patcher
    import comfy.utils
    import folder_paths
    from comfy_api.latest import io

    return types.SimpleNamespace(
        model_management=comfy.model_management, model_patcher=comfy.model_patcher, utils=comfy.utils,
        folder_paths=folder_paths, io=io,
    )


@pytest.fixture(scope="session")
def comfy_inprocess() -> types.SimpleNamespace:
    """ComfyUI's modules (model_management, model_patcher, utils, folder_paths, io), imported for real."""
    return import_comfy()


# --- a server --------------------------------------------------------------------------------------------------


class ComfyError(AssertionError):
    """The server refused a prompt (validation) or answered an HTTP error; carries its JSON answer."""

    def __init__(self, message: str, answer: Any = None) -> None:
        super().__init__(message)
        self.answer = answer


class WebSocket:
    """Just enough of RFC 6455 to read ComfyUI's status messages: a client that sends nothing after the
    handshake. Text frames are JSON; binary frames (live previews) and pings are skipped."""

    def __init__(self, host: str, port: int, path: str, timeout_s: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("websocket handshake: connection closed")
            head += chunk
        status, _, self.buffer = head.partition(b"\r\n\r\n")
        if b" 101 " not in status.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"websocket handshake refused: {status[:200]!r}")

    def _read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("websocket closed by the server")
            self.buffer += chunk
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def _frame(self) -> tuple[int, bytes]:
        first, second = self._read(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack(">H", self._read(2))
        elif length == 127:
            (length,) = struct.unpack(">Q", self._read(8))
        mask = self._read(4) if second & 0x80 else None
        payload = self._read(length)
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return first & 0x0F, payload

    def messages(self, deadline: float) -> Iterator[dict]:
        """ComfyUI's JSON messages ({"type", "data"}) until `deadline` (time.monotonic()), then TimeoutError."""
        text = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no matching websocket message before the deadline")
            self.sock.settimeout(left)
            opcode, payload = self._frame()
            if opcode == 8:
                raise ConnectionError("websocket closed by the server")
            if opcode in (1, 0):
                text += payload
                try:
                    yield json.loads(text)
                except json.JSONDecodeError:
                    continue  # a fragmented text message: wait for the rest
                text = b""

    def close(self) -> None:
        self.sock.close()


@dataclass
class ComfyServer:
    """A running ComfyUI: its address, folders and log, and thin helpers over its HTTP API."""

    url: str
    base_dir: Path
    log_path: Path
    process: subprocess.Popen
    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def temp_dir(self) -> Path:
        return self.base_dir / "temp"

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "models"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def request(self, path: str, body: Any = None, timeout_s: float = 30.0) -> Any:
        """GET (body None) or POST JSON to the server; the decoded JSON answer, or None for an empty one."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as answer:
                raw = answer.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                detail = json.loads(raw)
            except json.JSONDecodeError:
                detail = raw.decode(errors="replace")
            raise ComfyError(f"{path}: HTTP {exc.code}: {detail}", detail) from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw.decode(errors="replace")

    def post(self, prompt: dict) -> str:
        """Queue an API-format prompt; its prompt_id. A prompt ComfyUI's validation refuses raises ComfyError
        with the server's answer (`error`, `node_errors`)."""
        return self.request("/prompt", {"prompt": prompt, "client_id": self.client_id})["prompt_id"]

    def history(self, prompt_id: str) -> dict | None:
        return self.request(f"/history/{prompt_id}").get(prompt_id)

    def wait(self, prompt_id: str, timeout_s: float = 120.0) -> dict:
        """Poll /history until the prompt has finished (successfully or not); its history entry."""
        deadline = time.monotonic() + timeout_s
        delay = 0.05
        while True:
            entry = self.history(prompt_id)
            if entry is not None and entry.get("status", {}).get("status_str") in ("success", "error"):
                return entry
            if self.process.poll() is not None:
                raise AssertionError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"prompt {prompt_id} not finished after {timeout_s} s:\n{self.log_tail()}")
            time.sleep(delay)  # polling interval only: the result is read from the state, not assumed
            delay = min(delay * 1.5, 0.5)

    def run(self, prompt: dict, timeout_s: float = 120.0) -> dict:
        """Post, wait, and insist on success: the history entry (its `outputs` per output node)."""
        entry = self.wait(self.post(prompt), timeout_s)
        assert entry["status"]["status_str"] == "success", describe_failure(entry)
        return entry

    def websocket(self, timeout_s: float = 30.0) -> WebSocket:
        """A websocket under this server's client id: progress and status of the prompts `post` queues."""
        host, port = self.url.removeprefix("http://").split(":")
        return WebSocket(host, int(port), f"/ws?clientId={self.client_id}", timeout_s)

    def object_info(self, node_class: str | None = None) -> dict:
        return self.request("/object_info" + (f"/{node_class}" if node_class else ""))

    def queue(self) -> dict:
        return self.request("/queue")

    def interrupt(self, prompt_id: str | None = None) -> None:
        self.request("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})

    def free(self, unload_models: bool = True, free_memory: bool = False) -> None:
        self.request("/free", {"unload_models": unload_models, "free_memory": free_memory})

    def output_files(self, entry: dict, node_id: str, kind: str = "images") -> list[Path]:
        """The files an output node of a finished prompt wrote (SaveImage: output/, PreviewImage: temp/)."""
        roots = {"output": self.output_dir, "temp": self.temp_dir, "input": self.input_dir}
        return [roots[f["type"]] / f.get("subfolder", "") / f["filename"]
                for f in entry["outputs"].get(node_id, {}).get(kind, [])]


def execution_error(entry: dict) -> dict | None:
    """The `execution_error` message of a finished prompt's history entry (node_id, node_type,
    exception_message, ...), or None when it has none."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data
    return None


def describe_failure(entry: dict) -> str:
    """A failed prompt's error as a readable assertion message: the node, its message and the traceback's end."""
    error = execution_error(entry)
    if error is None:
        return f"prompt did not succeed: {entry.get('status')}"
    traceback = "".join(error.get("traceback") or [])[-2000:]
    return (f"{error.get('node_type')} (node {error.get('node_id')}) failed: {error.get('exception_type')}: "
            f"{error.get('exception_message')}\n{traceback}")


def status_messages(entry: dict, kind: str) -> list[dict]:
    return [data for k, data in entry.get("status", {}).get("messages", []) if k == kind]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_base_dir(base: Path, fixtures: Path) -> None:
    """ComfyUI's --base-directory: the pack under custom_nodes, test-made weights, the fixture detector, and
    user settings that keep the frontend's first-run dialogs (tutorial, templates) out of the way."""
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / PACK_DIR_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    restore = base / "models" / "facerestore_models"
    # The workflows name GPEN-BFR-2048.pth; a small 64-px GPEN under that name keeps them fast.
    # Small random GPENs (the pack reads the size from the weights, so any file name works).
    save_gpen(restore / "GPEN-BFR-64.pth", 64, seed=0)
    save_gpen(restore / "GPEN-BFR-2048.pth", 64, seed=1)
    save_gpen(restore / "GPEN-Colorization-1024.pth", 64, seed=3)  # the colourise and repair workflows' models
    save_gpen(restore / "GPEN-Inpainting-1024.pth", 64, seed=4)
    save_realesrnet(base / "models" / "upscale_models" / "realesrnet_x2.pth")  # the selfie workflow's upscaler
    (base / "models" / "facedetection").mkdir(parents=True)
    shutil.copy(fixtures / "facedetection" / DETECTOR_FILE, base / "models" / "facedetection" / DETECTOR_FILE)
    (base / "input").mkdir()
    for image in (fixtures / "images").iterdir():
        shutil.copy(image, base / "input" / image.name)
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps({
        "Comfy.TutorialCompleted": True,
        "Comfy.Workflow.ShowMissingNodesWarning": False,  # the test reads the missing types, not a dialog
        # No dialog or overlay for the one model the tests do not install (after_generation's SD checkpoint):
        "Comfy.Workflow.ShowMissingModelsWarning": False,  # frontend 1.35's dialog
        "Comfy.RightSidePanel.ShowErrorsTab": False,  # frontend 1.48's error overlay
    }))


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory: pytest.TempPathFactory, fixtures_dir: Path) -> Iterator[ComfyServer]:
    """One ComfyUI server for the session (a cold start takes tens of seconds on 2 cores), stopped at the end."""
    base = tmp_path_factory.mktemp("comfyui")
    prepare_base_dir(base, fixtures_dir)
    port = free_port()
    log_path = base / "server.log"
    command = [
        sys.executable, str(comfyui_dir() / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(port),
        "--base-directory", str(base), "--disable-auto-launch", "--disable-api-nodes",
        "--database-url", f"sqlite:///{base / 'comfyui.db'}",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=base, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   stdin=subprocess.DEVNULL)
    server = ComfyServer(url=f"http://127.0.0.1:{port}", base_dir=base, log_path=log_path, process=process)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"ComfyUI exited with code {process.returncode} while starting:\n{server.log_tail()}")
            try:
                server.request("/system_stats", timeout_s=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"ComfyUI did not answer /system_stats in {SERVER_START_TIMEOUT_S} s:\n"
                            f"{server.log_tail()}")
            time.sleep(0.25)  # polling interval while the server imports
        if not any(name.startswith("GPEN") for name in server.object_info()):
            ours = [line for line in server.log().splitlines() if PACK_DIR_NAME in line]
            pytest.fail("ComfyUI started without this pack's nodes; its log about the pack:\n" + "\n".join(ours))
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


# --- the frontend ----------------------------------------------------------------------------------------------


# Installed once per page: the frontend's own report of missing node types is the list it hands the extensions'
# `afterConfigureGraph` hook after every `loadGraphData` (the same list its "missing nodes" dialog shows).
_REGISTER_PROBE = """async () => {
    window.__gpenMissing = null;
    await window.app.registerExtension({
        name: "gpen.tests.missingNodes",
        afterConfigureGraph(missing) {
            window.__gpenMissing = (missing || []).map((m) => (typeof m === "string" ? m : m.type));
        },
    });
}"""


class FrontendPage:
    """ComfyUI's web frontend in headless Chromium, driven through the page's `app` object."""

    def __init__(self, page: Any, server: ComfyServer) -> None:
        self.page = page
        self.server = server
        self.console: list[str] = []
        page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))

    def open(self) -> None:
        """Load the page and wait until the app has registered every node class the server offers and opened
        its first workflow (the end of its setup, which would otherwise replace a graph loaded before it)."""
        node_classes = sorted(self.server.object_info())
        self.page.goto(self.server.url, wait_until="domcontentloaded")
        self.page.wait_for_function(
            """(classes) => {
                const app = window.app, types = window.LiteGraph && window.LiteGraph.registered_node_types;
                return Boolean(app && app.canvas && types && classes.every((c) => c in types)
                               && app.extensionManager?.workflow?.activeWorkflow);
            }""",
            arg=node_classes,
            timeout=PAGE_READY_TIMEOUT_S * 1000,
        )
        self.page.evaluate(_REGISTER_PROBE)

    def load_workflow(self, workflow: dict) -> None:
        """Load a UI-format workflow as a user's drop does (`app.loadGraphData`)."""
        self.page.evaluate("() => { window.__gpenMissing = null; }")
        self.page.evaluate("async (w) => { await window.app.loadGraphData(w, true, true, null); }", workflow)
        self.page.wait_for_function("() => window.__gpenMissing !== null", timeout=30_000)

    def missing_node_types(self) -> list[str]:
        """The node types the frontend found no definition for in the last loaded workflow."""
        return sorted(set(self.page.evaluate("() => window.__gpenMissing")))

    def graph_to_prompt(self) -> dict:
        """The page's own API export of the loaded graph (`app.graphToPrompt().output`)."""
        return self.page.evaluate("async () => (await window.app.graphToPrompt()).output")

    def queue(self) -> str:
        """Queue the loaded graph from the page (as the Run button does); the prompt_id the server gave it."""
        return self.page.evaluate("""async () => {
            const p = await window.app.graphToPrompt();
            const answer = await window.comfyAPI.api.api.queuePrompt(0, p);
            return answer.prompt_id;
        }""")

    def set_setting(self, name: str, value: Any) -> None:
        """Change a frontend setting as the settings dialog does (kept in the server's user settings)."""
        self.page.evaluate("async ([n, v]) => { await window.app.extensionManager.setting.set(n, v); }", [name, value])

    def node_position(self, node_id: int) -> list[float]:
        """A node's position in graph coordinates as the frontend holds it after loading."""
        return self.page.evaluate("(id) => Array.from(window.app.graph.getNodeById(id).pos)", node_id)

    def node_screen_boxes(self, rendered: bool = False) -> dict[str, list[float]]:
        """Each node's box [left, top, right, bottom] in page pixels (title bar included), at the current view:
        computed from the canvas (classic nodes), or with `rendered` the node's own element (Vue nodes)."""
        return self.page.evaluate("""(rendered) => {
            const canvas = window.app.canvas, ds = canvas.ds, rect = canvas.canvas.getBoundingClientRect();
            const title = window.LiteGraph.NODE_TITLE_HEIGHT;
            const boxes = {};
            for (const node of window.app.graph.nodes) {
                const element = rendered && document.querySelector(`[data-node-id="${node.id}"]`);
                if (element) {
                    const box = element.getBoundingClientRect();
                    boxes[String(node.id)] = [box.left, box.top, box.right, box.bottom];
                    continue;
                }
                const [x, y] = node.pos, [w, h] = node.size;
                boxes[String(node.id)] = [
                    rect.left + (x + ds.offset[0]) * ds.scale, rect.top + (y - title + ds.offset[1]) * ds.scale,
                    rect.left + (x + w + ds.offset[0]) * ds.scale, rect.top + (y + h + ds.offset[1]) * ds.scale,
                ];
            }
            return boxes;
        }""", rendered)

    def screenshot(self, path: Path, **options: Any) -> Path:
        self.page.evaluate("() => window.app.canvas.setDirty(true, true)")
        self.page.screenshot(path=str(path), **options)
        return path


@pytest.fixture(scope="session")
def frontend_page(comfy_server: ComfyServer) -> Iterator[FrontendPage]:
    """The real frontend, opened once per session; Debian's headless Chromium, never a downloaded browser."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: tests/run.sh installs Debian's chromium-headless-shell")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            frontend = FrontendPage(page, comfy_server)
            frontend.open()
            yield frontend
        finally:
            browser.close()


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll `predicate` until it returns something truthy (bounded); that value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)
