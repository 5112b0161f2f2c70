"""`GpenRunner`: the one owner of how a loaded GPEN is called, whatever file it came from.

It knows the model's crop size (and the size it restores to: larger for upstream's FullGenerator_SR), the dtype it
runs in (precision `auto` resolved once, here; `.onnx` graphs always in fp32), whether half precision applies, how
much memory one face takes, and how to restore a batch of aligned crops: `[N, S, S, C]` in 0..1 (channels last,
as ComfyUI images are) in, `[N, S', S', 3]` RGB in 0..1 out. The nodes, the pipeline and the command line never
ask "is it ONNX" themselves.

Model tensors are GPEN's own convention: `[N, 3, S, S]` RGB in [-1, 1] (upstream normalises with mean 0.5 and
std 0.5); the conversion to and from crops lives here and nowhere else.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .choices import DEFAULT_STRENGTH, LUMINANCES, PRECISIONS, TASKS
from .config import WHERE_TO_GET
from .loader import load_gpen
from .model import GPEN, channel_table

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Peak activation memory of one face is about 3.5x the encoder's feature elements times the element size
# (measured here on GPEN-512 and GPEN-1024, fp32, CPU peak RSS); 4 leaves headroom for allocator slack.
ACTIVATION_BYTES_FACTOR = 4.0
# Share of the free memory a restore batch may take; the rest stays for other nodes and fragmentation.
FREE_MEMORY_SHARE = 0.8
MAX_BATCH_SIZE = 16  # a cap, so one batch's latency (and the gap between progress updates) stays bounded
# From this size on, faces run one at a time on every device: one 2048-px face already fills a GPU, and batching
# only multiplies the activation memory (on the CPU, batch 2 took 11 % longer per face than batch 1 at 2048 px).
SEQUENTIAL_FROM_SIZE = 2048

OnFace = Callable[[], None]
CheckInterrupted = Callable[[], None]


class CropShapeError(ValueError):
    """Crops that are not a batch of square images `[N, S, S, C]`."""


def check_strength(strength: float) -> float:
    """`strength` if it is a blend factor in 0..1, else `ValueError` saying so (the one check of this rule)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be between 0 (unchanged) and 1 (fully restored), got {strength}")
    return strength


def choose_dtype(precision: str, *, fp16_ok: bool, bf16_ok: bool) -> torch.dtype:
    """The dtype a torch GPEN runs in: the one asked for, or for "auto" fp16 where the device handles it well, else
    bf16 where it does, else fp32. The caller says what the device handles (ComfyUI's model management, or the
    command line's own check of the device)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return DTYPES[precision]
    return torch.float16 if fp16_ok else torch.bfloat16 if bf16_ok else torch.float32


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX): there GPEN-512 runs about 2x faster in
    bf16 than in fp32 (0.44 vs 0.89 s here), and the restored photo stays within 68 dB PSNR of fp32 (random weights
    at the published size, tests/test_gpen_arch.py). Elsewhere bf16 is emulated and slower than fp32. Read through
    torch's own CPU feature probe (private, so a torch without it answers False)."""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(probe is not None and probe() for probe in probes)


class GpenRunner:
    """A loaded GPEN (native torch or an onnxruntime graph) and its call contract.

    A torch GPEN's weights are placed by the caller (ComfyUI's model management, or `.to()` on the command line);
    `restore` runs where they are. An ONNX graph places itself: onnxruntime runs on CUDA when the input tensor is
    there.
    """

    def __init__(self, module: nn.Module, *, name: str, dtype: torch.dtype = torch.float32,
                 task: str = "restore") -> None:
        if task not in TASKS:
            raise ValueError(f"Unknown task {task!r}; expected one of {TASKS}")
        self.module = module.eval()
        self.name = name
        # What the model was trained to do (see choices.TASKS): a colourising model is fed grey faces.
        self.task = task
        self.size = int(module.size)
        # The restored crops' side: the input's, or more for a generator whose decoder outgrows its encoder.
        self.output_size = int(getattr(module, "out_size", self.size))
        self.is_onnx = not isinstance(module, GPEN)
        self.dtype = torch.float32 if self.is_onnx else dtype
        if not self.is_onnx:
            self.module.to(dtype=self.dtype)

    @classmethod
    def load(
        cls, path: str | Path, *, precision: str = "auto", fp16_ok: bool = False, bf16_ok: bool = False,
        compile: bool = False, where_to_get: str = WHERE_TO_GET, task: str = "restore",
    ) -> GpenRunner:
        """Load `path` with `load_gpen` and set it up to run in `precision` (see `choose_dtype`) for `task`;
        `compile` applies `torch.compile`. For an `.onnx` file both are ignored (logged when asked for): it runs
        in fp32. `where_to_get` replaces `load_gpen`'s advice in refusals (see there)."""
        path = Path(path)
        dtype = choose_dtype(precision, fp16_ok=fp16_ok, bf16_ok=bf16_ok)
        runner = cls(load_gpen(path, where_to_get=where_to_get), name=path.name, dtype=dtype, task=task)
        if runner.is_onnx and (precision not in ("auto", "fp32") or compile):
            logger.warning("%s is an ONNX model and runs in fp32 through onnxruntime; precision %s and compile "
                           "ignored", path.name, precision)
        elif compile:
            runner.module.compile()  # in place: still a GPEN, its weights still placed by the caller
        return runner

    def __repr__(self) -> str:
        sizes = f"size={self.size}" + (f", output_size={self.output_size}" if self.output_size != self.size else "")
        return f"GpenRunner({self.name!r}, {sizes}, dtype={self.dtype}, onnx={self.is_onnx}, task={self.task!r})"

    @property
    def label(self) -> str:
        """How logs name the network: "GPEN-512", or "GPEN-512 to 1024" for one that restores to a larger size."""
        return f"GPEN-{self.size}" + (f" to {self.output_size}" if self.output_size != self.size else "")

    @property
    def precision(self) -> str:
        """The precision it runs in, by its name in `PRECISIONS` ("fp32", "fp16", "bf16")."""
        return next(name for name, dtype in DTYPES.items() if dtype == self.dtype)

    @property
    def weights_device(self) -> torch.device | None:
        """Where a torch GPEN's weights are now (None for ONNX, which holds no torch weights)."""
        return None if self.is_onnx else next(self.module.parameters()).device

    def face_memory_bytes(self) -> int:
        """Estimated peak activation memory for restoring one face (published channel widths: channel_multiplier
        2, narrow 1, the largest of the released models at every size)."""
        elements = sum(res * res * c for res, c in channel_table(2, 1).items() if res <= self.output_size)
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return int(ACTIVATION_BYTES_FACTOR * elements * itemsize)

    def batch_size_for(self, free_bytes: int, faces: int, device: torch.device) -> int:
        """Faces per forward pass: what fits in `FREE_MEMORY_SHARE` of `free_bytes`, 1 to `MAX_BATCH_SIZE`, never
        more than `faces`. Always 1 on the CPU (batches are no faster per face there and would only delay progress
        and interruption), from `SEQUENTIAL_FROM_SIZE` on, and for fixed-batch ONNX graphs."""
        if device.type == "cpu" or self.is_onnx or self.output_size >= SEQUENTIAL_FROM_SIZE:
            return 1
        fits = int(free_bytes * FREE_MEMORY_SHARE) // max(self.face_memory_bytes(), 1)
        return max(1, min(fits, MAX_BATCH_SIZE, max(faces, 1)))

    def restore(
        self,
        crops: torch.Tensor,
        *,
        device: torch.device,
        strength: float = DEFAULT_STRENGTH,
        batch_size: int = 1,
        on_face: OnFace | None = None,
        check_interrupted: CheckInterrupted | None = None,
        output_device: torch.device | str = "cpu",
        luminance: str = "keep",
    ) -> torch.Tensor:
        """Restore aligned face crops.

        Args:
            crops: `[N, S', S', C]` float in 0..1, RGB(A) or grey, any square size (resized to the model's size
                with antialiasing), on any device.
            device: where the model input goes (where the weights are, for a torch GPEN).
            strength: 1 = the restored face, 0 = the input crop; in between a linear blend.
            batch_size: faces per forward pass; halved and retried when the device runs out of memory.
            on_face: called once per restored face (progress).
            check_interrupted: called before every batch; raises to stop.
            output_device: where the result is gathered (the CPU for an IMAGE output; the model's device when
                paste-back runs there too, so the faces never leave it).
            luminance: for a colourising model, "keep" gives each face the input crop's luminance exactly (only
                its colour comes from the model), "model" the model's whole output. Other tasks ignore it.

        Returns:
            `[N, S', S', 3]` float32 RGB in 0..1 on `output_device`, S' the `output_size`. Inference errors
            propagate, and non-finite output raises `FloatingPointError`: nothing unrestored is ever returned as
            restored.
        """
        if crops.ndim != 4 or crops.shape[1] != crops.shape[2] or crops.shape[-1] not in (1, 3, 4):
            raise CropShapeError(
                f"face crops must be square images [N, S, S, C] with C in 1, 3, 4; got {list(crops.shape)}"
            )
        check_strength(strength)
        if luminance not in LUMINANCES:
            raise ValueError(f"luminance must be one of {LUMINANCES}, got {luminance!r}")
        side = self.output_size
        out = torch.empty((crops.shape[0], side, side, 3), dtype=torch.float32, device=output_device)
        start, batch_size = 0, max(1, batch_size)
        with torch.inference_mode(), ieee_fp32():
            while start < crops.shape[0]:
                if check_interrupted is not None:
                    check_interrupted()
                chunk = crops[start : start + batch_size].to(device=device, dtype=torch.float32)
                chunk = resize_crops(chunk, self.size)
                # A colourising GPEN was trained on grey faces: a colour photo's face is made grey first.
                model_input = _to_model_input(grey(chunk) if self.task == "colourise" else chunk, self.dtype)
                try:
                    output = self.module(model_input)
                except torch.OutOfMemoryError:
                    if batch_size == 1:
                        raise
                    batch_size //= 2
                    logger.warning("Out of memory restoring faces; retrying with %d face(s) per batch", batch_size)
                    continue
                if not torch.isfinite(output).all():
                    raise FloatingPointError(
                        f"GPEN produced NaN or infinite values in {self.dtype} on {device}: the model overflowed in "
                        "this precision. Load it with precision fp32 (or bf16 on GPUs that support it)."
                    )
                restored = _from_model_output(output)
                del output
                # What the restored faces are blended with or take their luminance from, at their size.
                chunk = resize_crops(chunk, side)
                if self.task == "colourise" and luminance == "keep":
                    restored = with_luminance(restored, crops_rgb(chunk))
                if strength < 1.0:
                    weight = strength
                    if self.task == "repair" and chunk.shape[-1] == 4:
                        # Damaged pixels have nothing to blend with (they are painted white, the damage is the
                        # alpha): there the repair is taken whole.
                        weight = strength + (1.0 - strength) * chunk[..., 3:]
                    restored = torch.lerp(crops_rgb(chunk), restored, weight)
                out[start : start + chunk.shape[0]] = restored
                start += chunk.shape[0]
                if on_face is not None:
                    for _ in range(chunk.shape[0]):
                        on_face()
        return out


@contextlib.contextmanager
def ieee_fp32() -> Iterator[None]:
    """Float32 work inside runs in IEEE fp32 on every GPU: TF32 (cuDNN's default for convolutions, which ComfyUI
    leaves on, and an opt-in for matmuls) rounds their inputs to 10 mantissa bits on Ampere and newer. What "fp32"
    means here: the same numbers as on the CPU, to float32 rounding. The flags are restored afterwards. No effect
    on fp16/bf16 work, nor on a CPU."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    kept = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = False  # only these two: ComfyUI's other cuDNN settings stay as they are
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = kept


def crops_rgb(crops: torch.Tensor) -> torch.Tensor:
    """Crops `[N, S, S, C]` as RGB `[N, S, S, 3]`: alpha dropped, grey repeated (a view)."""
    return crops[..., :3] if crops.shape[-1] >= 3 else crops.expand(*crops.shape[:-1], 3)


def luminance(rgb: torch.Tensor) -> torch.Tensor:
    """Luma `[..., 1]` of RGB `[..., 3]` in 0..1 (Rec. 601 weights, as upstream's YUV colourisation)."""
    return rgb[..., :1] * 0.299 + rgb[..., 1:2] * 0.587 + rgb[..., 2:3] * 0.114


def with_luminance(rgb: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`rgb`'s colour on `reference`'s luminance (both `[..., 3]` in 0..1): `reference`'s luma plus `rgb`'s
    chroma, shrunk towards grey only where the sum would leave 0..1, so the luma is `reference`'s exactly (the
    picture-space twin, for pasting, is face_utils.colour.with_luminance)."""
    luma = luminance(reference)
    chroma = rgb - luminance(rgb)
    room = torch.where(chroma > 0, (1 - luma) / chroma, torch.where(chroma < 0, -luma / chroma, torch.inf))
    return (luma + room.amin(dim=-1, keepdim=True).clamp(0.0, 1.0) * chroma).clamp(0.0, 1.0)


def grey(crops: torch.Tensor) -> torch.Tensor:
    """Crops `[N, S, S, C]` as grey RGB `[N, S, S, 3]` (their luma in every channel)."""
    rgb = crops_rgb(crops)
    return luminance(rgb).expand_as(rgb) if crops.shape[-1] >= 3 else rgb


def resize_crops(crops: torch.Tensor, size: int) -> torch.Tensor:
    """Square crops `[N, H, W, C]` resized to `[N, size, size, C]`: bicubic with antialiasing, so shrinking a 2048
    crop for a 512 model does not alias; clamped back to 0..1 because bicubic overshoots at edges."""
    if crops.shape[1] == size:
        return crops
    chw = crops.movedim(-1, 1)
    out = F.interpolate(chw, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return out.clamp(0, 1).movedim(1, -1)


def _to_model_input(crops: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Crops `[N, S, S, C]` in 0..1 to GPEN's `[N, 3, S, S]` in [-1, 1] as `dtype`, on the crops' device."""
    return (crops_rgb(crops).movedim(-1, 1) * 2 - 1).to(dtype)


def _from_model_output(output: torch.Tensor) -> torch.Tensor:
    """GPEN output `[N, 3, S, S]` (about [-1, 1]) to crops `[N, S, S, 3]` float32 in 0..1, on its device."""
    return ((output.float() + 1) / 2).clamp(0, 1).movedim(1, -1)
