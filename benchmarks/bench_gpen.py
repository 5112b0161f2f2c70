"""Time per face and peak memory of GPEN: ours, and optionally upstream's code and onnxruntime, side by side.

    python benchmarks/bench_gpen.py                               # 512/1024/2048, fp32 + bf16, batch 1 and 2
    python benchmarks/bench_gpen.py --sizes 2048 --dtypes fp32 --upstream ~/src/GPEN --onnx

Every configuration runs in a fresh process (so peak memory is its own: the whole process, weights included)
on the same random weights and input; with `--upstream PATH` (a checkout of yangxy/GPEN, never committed here)
upstream's `FullGenerator` runs too and the table shows how far our output is from it. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# Published configurations (upstream's README): GPEN-BFR-512/1024/2048; 256 uses channel_multiplier 1, narrow 0.5.
CONFIGS = {
    256: {"size": 256, "channel_multiplier": 1, "narrow": 0.5},
    512: {"size": 512, "channel_multiplier": 2, "narrow": 1},
    1024: {"size": 1024, "channel_multiplier": 2, "narrow": 1},
    2048: {"size": 2048, "channel_multiplier": 2, "narrow": 1},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048], choices=sorted(CONFIGS))
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up; the median is shown")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda")
    parser.add_argument("--upstream", type=Path, help="a checkout of yangxy/GPEN to compare with (fp32, batch 1)")
    parser.add_argument("--onnx", action="store_true",
                        help="also run onnxruntime on upstream's network exported to ONNX (needs --upstream "
                             "and `pip install onnxscript`)")
    parser.add_argument("--compile", action="store_true", help="also run ours under torch.compile")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.onnx and not args.upstream:
        parser.error("--onnx exports upstream's network: give --upstream PATH too")
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return

    import torch

    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, device {args.device}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            weights = Path(tmp) / f"gpen_{size}.pth"
            make_weights(size, weights)
            jobs = [("ours", dtype, batch) for dtype in args.dtypes for batch in args.batches]
            if args.compile:
                jobs += [("ours+compile", dtype, 1) for dtype in args.dtypes]
            if args.upstream:
                jobs.append(("upstream", "fp32", 1))
            if args.onnx:
                jobs.append(("onnxruntime", "fp32", 1))
            for impl, dtype, batch in jobs:
                job = {"impl": impl, "size": size, "dtype": dtype, "batch": batch, "weights": str(weights),
                       "repeats": args.repeats, "device": args.device,
                       "upstream": str(args.upstream) if args.upstream else None, "tmp": tmp}
                rows.append(run_job(job))
                print_row(rows[-1], header=len(rows) == 1)


def import_pack():
    """The pack as `comfyui_gpen_restore`, through the command line's own loader (its one import name)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import restore_faces

    return restore_faces.load_package()


def make_weights(size: int, path: Path) -> None:
    import torch

    import_pack()
    from comfyui_gpen_restore.gpen_arch import GPEN

    torch.manual_seed(size)
    torch.save(GPEN(**CONFIGS[size]).state_dict(), path)


def run_job(job: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        return {**job, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    return {**job, **json.loads(proc.stdout.strip().splitlines()[-1])}


def print_row(row: dict, *, header: bool) -> None:
    if header:
        print("\n| size | implementation | dtype | batch | s / face | peak memory GiB | max abs diff vs ours fp32 |")
        print("|---|---|---|---|---|---|---|")
    if "error" in row:
        print(f"| {row['size']} | {row['impl']} | {row['dtype']} | {row['batch']} | error: {row['error']} | | |")
        return
    diff = f"{row['max_abs_diff']:.2e}" if row.get("max_abs_diff") is not None else ""
    print(f"| {row['size']} | {row['impl']} | {row['dtype']} | {row['batch']} | {row['seconds_per_face']:.3f} "
          f"| {row['peak_gib']:.2f} | {diff} |", flush=True)


# --- worker: one configuration in a fresh process ------------------------------------------------------------


def run_worker(job: dict) -> dict:
    import torch

    import_pack()
    device = torch.device(job["device"])
    dtype = getattr(torch, DTYPES[job["dtype"]])
    size, batch = job["size"], job["batch"]
    generator = torch.Generator().manual_seed(0)
    x = (torch.rand(batch, 3, size, size, generator=generator) * 2 - 1).to(device, dtype)
    model = build(job, device, dtype)

    times = []
    with torch.inference_mode():
        for _ in range(job["repeats"] + 1):
            synchronize(device)
            start = time.perf_counter()
            out = model(x)
            synchronize(device)
            times.append(time.perf_counter() - start)
    result = {
        "seconds_per_face": statistics.median(times[1:]) / batch,
        "peak_gib": peak_memory_gib(device),
        "max_abs_diff": None,
    }
    reference = Path(job["tmp"]) / f"reference_{size}.pt"
    if job["impl"] == "ours" and job["dtype"] == "fp32" and batch == 1:
        torch.save(out.float().cpu(), reference)
    elif reference.exists():
        ref = torch.load(reference, weights_only=True)
        result["max_abs_diff"] = (out[:1].float().cpu() - ref).abs().max().item()
    return result


def build(job: dict, device, dtype):
    import torch

    from comfyui_gpen_restore.gpen_arch import load_gpen

    if job["impl"] == "upstream":
        model = upstream_model(job).to(device, dtype)
        return lambda x: model(x)[0]
    if job["impl"] == "onnxruntime":
        path = Path(job["tmp"]) / f"gpen_{job['size']}.onnx"
        if not path.exists():
            export_onnx(upstream_model(job), path)
        return load_gpen(path)
    model = load_gpen(job["weights"]).to(device, dtype)
    if job["impl"] == "ours+compile":
        return torch.compile(model)
    return model


def upstream_model(job: dict):
    """Upstream's `FullGenerator` from the user's checkout, with the benchmark's weights."""
    import torch

    sys.path.insert(0, str(Path(job["upstream"]) / "face_model"))
    from gpen_model import FullGenerator

    config = CONFIGS[job["size"]]
    model = FullGenerator(job["size"], 512, 8, config["channel_multiplier"], narrow=config["narrow"], device="cpu")
    model.load_state_dict(torch.load(job["weights"], weights_only=True))
    return model.eval()


def export_onnx(model, path: Path) -> None:
    """Export upstream's network the way the published GPEN .onnx files are (fixed batch of 1)."""
    import torch

    class ImageOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x)[0]

    size = 2**model.log_size
    with torch.no_grad():  # torch's current exporter (needs `pip install onnxscript`), as the fixture's was made
        program = torch.onnx.export(ImageOnly(), (torch.zeros(1, 3, size, size),), input_names=["input"],
                                    output_names=["output"], opset_version=18, dynamo=True)
    program.save(str(path))


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


if __name__ == "__main__":
    main()
