"""GPEN-BFR `.onnx` files (the ones ReActor and FaceFusion users have) behind GPEN's call contract."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..model_files.errors import MissingDependencyError, UnsupportedCheckpointError

logger = logging.getLogger(__name__)

VALID_SIZES = tuple(2**n for n in range(3, 12))  # 8 .. 2048, as GPEN itself


class OnnxGPEN(nn.Module):
    """Runs a GPEN `.onnx` graph with onnxruntime. `forward(x)`: `[B, 3, S, S]` RGB in [-1, 1], any batch size,
    device and float dtype; the result comes back on `x`'s device and dtype, written by onnxruntime straight into
    torch memory on the device it ran on.

    The graph is checked once at construction (one input `[N, 3, S, S]` and one output `[N, 3, S', S']`, S' = S but
    for an export of upstream's FullGenerator_SR, whose output is larger: `out_size`); sessions are
    made once per device and reused, on that CUDA device when the input is there and onnxruntime can use it (the
    provider it really runs on is logged, and a CPU fallback is a warning).
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self._sessions: dict[str, object] = {}
        session = self._session("cpu")
        inputs, outputs = session.get_inputs(), session.get_outputs()
        shapes = [list(node.shape) for node in (*inputs, *outputs)]
        size, out_size = _last_side(inputs), _last_side(outputs)
        if (
            len(inputs) != 1
            or len(outputs) != 1
            or inputs[0].type != "tensor(float)"
            or size not in VALID_SIZES
            or out_size not in VALID_SIZES
            or out_size < size
            or any(len(shape) != 4 or shape[1:] != [3, side, side] for shape, side in zip(shapes, (size, out_size)))
        ):
            found = ", ".join(f"{node.name} {node.type} {list(node.shape)}" for node in (*inputs, *outputs))
            raise UnsupportedCheckpointError(
                f"{self.path.name}: expected a GPEN ONNX graph with one float32 input of shape [N, 3, S, S] and one "
                f"output of shape [N, 3, S, S] (S a power of two up to 2048; larger for FullGenerator_SR), "
                f"found {found}."
            )
        self.size, self.out_size = int(size), int(out_size)
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        # Graphs exported with a fixed batch of 1 (the published ones) are run one face at a time.
        self.fixed_batch = shapes[0][0] if isinstance(shapes[0][0], int) else None

    def _session(self, device: torch.device | str):
        """The session for inputs on `device`, made once per device (`cuda:1` gets its own, on GPU 1)."""
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
        key = str(device)
        if key not in self._sessions:
            try:
                import onnxruntime as ort
            except ImportError as exc:
                raise MissingDependencyError(
                    f"{self.path.name} is an ONNX model and needs onnxruntime: `pip install onnxruntime` "
                    "(or onnxruntime-gpu for CUDA) in ComfyUI's Python environment, or use the .pth file instead."
                ) from exc
            providers: list = ["CPUExecutionProvider"]
            wants_cuda = device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
            if wants_cuda:
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index}))
            try:
                session = ort.InferenceSession(str(self.path), providers=providers)
            except Exception as exc:  # onnxruntime's error classes (InvalidProtobuf, Fail, ...) share no base
                if wants_cuda:  # the file opened on the CPU when it was loaded: CUDA is what failed
                    raise RuntimeError(
                        f"onnxruntime could not run {self.path.name} on {key} ({type(exc).__name__}: "
                        f"{_first_line(exc)}). Install the onnxruntime-gpu build that matches this CUDA, or use "
                        "the .pth file of this model (it runs on the GPU through torch)."
                    ) from exc
                raise UnsupportedCheckpointError(
                    f"onnxruntime cannot open {self.path.name} ({type(exc).__name__}: {_first_line(exc)}): the "
                    "file is truncated or not an ONNX model. Download it again."
                ) from exc
            used = session.get_providers()[0]
            if device.type == "cuda" and used != "CUDAExecutionProvider":
                logger.warning("onnxruntime runs %s on the CPU, not on %s (%s): install onnxruntime-gpu, or use the "
                               ".pth file of this model", self.path.name, key,
                               "its CUDA provider did not start" if wants_cuda else "no CUDA provider installed")
            logger.info("onnxruntime session for %s on %s (%s)", self.path.name, key, used)
            self._sessions[key] = session
        return self._sessions[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, self.size, self.size):
            raise ValueError(
                f"GPEN-{self.size} (ONNX) expects a [B, 3, {self.size}, {self.size}] tensor, got {list(x.shape)}; "
                f"resize the face crops to {self.size}x{self.size} first"
            )
        session = self._session(x.device)
        # onnxruntime reads and writes torch's own memory (I/O binding): a batch on the GPU never goes through
        # host memory, and on the CPU nothing is copied into or out of numpy.
        on_gpu = session.get_providers()[0] == "CUDAExecutionProvider"
        device = x.device if on_gpu else torch.device("cpu")
        batch = x.detach().to(device, torch.float32).contiguous()
        out = batch.new_empty((len(batch), 3, self.out_size, self.out_size))  # the graph's (checked when loaded)
        if on_gpu:
            torch.cuda.synchronize(device)  # torch's writes of `batch` are done before onnxruntime's stream reads
        step = self.fixed_batch or len(batch)
        for start in range(0, len(batch), step):
            binding = session.io_binding()
            for bind, name, tensor in ((binding.bind_input, self.input_name, batch[start : start + step]),
                                       (binding.bind_output, self.output_name, out[start : start + step])):
                bind(name, device.type, device.index or 0, np.float32, list(tensor.shape), tensor.data_ptr())
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
        return out.to(x.device, x.dtype)

    def extra_repr(self) -> str:
        larger = f", out_size={self.out_size}" if self.out_size != self.size else ""
        return f"{self.path.name}, size={self.size}{larger}"


def _last_side(nodes: list) -> int | str | None:
    """The last dimension of the first of `nodes` (graph inputs or outputs) if it is 4-D, else None."""
    return nodes[0].shape[-1] if nodes and len(nodes[0].shape) == 4 else None


def _first_line(exc: Exception) -> str:
    """The first line of an error's text: onnxruntime appends the whole graph or stack; cutting at a length
    would end mid-sentence."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else "no details"
