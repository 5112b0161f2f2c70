"""Video batches through the one-node restore: time per frame and memory for 30 / 100 / 300 1080p frames, and the
steadiness of the pasted faces (landmark jitter, pixel flicker) with and without temporal smoothing.

    python benchmarks/bench_video.py                          # GPEN-512 at 30/100/300 frames, GPEN-2048 at 30
    python benchmarks/bench_video.py --runs 2048x300          # any size x frames pairs
    python benchmarks/bench_video.py --quick                  # a small GPEN, a few frames: a smoke run

Frames are synthetic 1920x1080 video made from the real photo tests/fixtures/images/grace_hopper.jpg, scaled so
its face is about 320 px and placed on a grey canvas, moving slowly by a known sub-pixel pan (`--pan`, px per
frame) with independent Gaussian pixel noise in every frame (sigma 2/255, seeded) so the detector's landmarks
jitter as on a real video. They go through `face_utils.pipeline.restore_image`, the path the one-node restore
takes: the fixture RetinaFace-MobileNet-0.25 finds the faces, a GPEN of the published architecture with random
weights (none ship here; random weights cost the same) restores them on the CPU in fp32, and they are pasted
with the default `PasteSettings`.

Every row runs in a fresh process. Memory is the process's peak RSS (`ru_maxrss`): the whole process, the
input IMAGE batch, the output IMAGE and MASK batches and the weights included; the table also shows it minus the
batches' own bytes (what the restore costs beyond ComfyUI's batches) and the peak of the call itself above the
RSS before it (peak reset through /proc/self/clear_refs, minus the output batches it fills). Times are medians
over frames, split into finding the faces (the first pass: detection, tracking, alignment), GPEN and the rest of
the second pass (crop and paste), read from `on_progress` and the restore callback. Prints Markdown tables.
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
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "tests" / "fixtures"
PHOTO = FIXTURES / "images" / "grace_hopper.jpg"
DETECTOR = "retinaface_mobile0.25"  # the one real detector the fixtures ship
FRAME_HW = (1080, 1920)
PHOTO_SCALE = 1.6  # the fixture face's 197-px box becomes ~315 px: a close-up on 1080p video
NOISE_SIGMA = 2.0 / 255.0  # per pixel and channel: a clean camera's sensor noise, re-drawn every frame
BACKGROUND = 0.45  # grey canvas around the photo
# Published GPEN-BFR configurations (upstream's README); "64s" is the tests' small random GPEN (fractions of a
# second per face), for --quick.
ARCHS: dict[str, dict[str, Any]] = {
    "64s": {"size": 64, "style_dim": 64, "n_mlp": 2, "channel_multiplier": 1, "narrow": 0.125},
    "256": {"size": 256, "style_dim": 512, "n_mlp": 8, "channel_multiplier": 1, "narrow": 0.5},
    "512": {"size": 512, "style_dim": 512, "n_mlp": 8, "channel_multiplier": 2, "narrow": 1},
    "1024": {"size": 1024, "style_dim": 512, "n_mlp": 8, "channel_multiplier": 2, "narrow": 1},
    "2048": {"size": 2048, "style_dim": 512, "n_mlp": 8, "channel_multiplier": 2, "narrow": 1},
}
DEFAULT_RUNS = ["512x30", "512x100", "512x300", "2048x30"]
QUICK_RUNS = ["64sx4", "64sx12"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", default=None,
                        help=f"memory/time rows as MODELxFRAMES, models {', '.join(ARCHS)} (default: "
                             f"{' '.join(DEFAULT_RUNS)})")
    parser.add_argument("--pan", type=float, default=0.5, help="horizontal pan of the memory rows, px per frame")
    parser.add_argument("--steady-model", default="512", choices=sorted(ARCHS),
                        help="model of the smoothing on/off rows")
    parser.add_argument("--steady-frames", type=int, default=60, help="frames of the still sequence (0 = skip)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (the same for every row)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per row (0 = torch's default); on a CPU shared with other work, 1 "
                             "avoids the thread pool's stalls")
    parser.add_argument("--quick", action="store_true", help="a smoke run: the small GPEN, a few frames")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return
    runs = args.runs if args.runs is not None else QUICK_RUNS if args.quick else DEFAULT_RUNS
    steady_model, steady_frames = ("64s", min(args.steady_frames, 8)) if args.quick else (
        args.steady_model, args.steady_frames)

    import torch

    threads = args.threads or torch.get_num_threads()
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{threads} thread(s) per row; fp32 on the CPU; detector {DETECTOR}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        weights: dict[str, Path] = {}

        def weights_for(model: str) -> Path:
            if model not in weights:
                weights[model] = save_weights(model, Path(tmp) / f"gpen_{model}.pth")
            return weights[model]

        rows = []
        for spec in runs:
            model, frames = parse_run(spec)
            job = {"kind": "memory", "model": model, "frames": frames, "weights": str(weights_for(model)),
                   "pan": args.pan, "seed": args.seed, "threads": args.threads}
            rows.append(run_job(job))
            print_memory_row(rows[-1], header=len(rows) == 1)
        if steady_frames:
            print()
            job = {"kind": "steady", "model": steady_model, "frames": steady_frames,
                   "weights": str(weights_for(steady_model)), "pan": 0.0, "seed": args.seed,
                   "threads": args.threads}
            result = run_job(job)
            for i, variant in enumerate(result.get("variants", [{**job, "error": result.get("error")}])):
                print_steady_row({**job, **variant}, header=i == 0)
    print(f"\nTotal wall time {time.perf_counter() - started:.0f} s.")


def parse_run(spec: str) -> tuple[str, int]:
    """'512x300' -> ("512", 300)."""
    model, _, frames = spec.rpartition("x")
    if model not in ARCHS or not frames.isdigit() or int(frames) < 1:
        raise SystemExit(f"--runs takes MODELxFRAMES with MODEL one of {', '.join(ARCHS)}, got {spec!r}")
    return model, int(frames)


def save_weights(model: str, path: Path) -> Path:
    """A randomly initialised GPEN of architecture `model` saved as a state dict, as tests/support.py's
    `save_gpen` does (upstream's init, seeded)."""
    import torch

    import_pack()
    from comfyui_gpen_restore import gpen_arch

    torch.manual_seed(0)
    torch.save(gpen_arch.GPEN(**ARCHS[model]).state_dict(), path)
    return path


def import_pack():
    """The pack imported as `comfyui_gpen_restore`, through the command line's loader (as the tests do)."""
    sys.path.insert(0, str(REPO_ROOT))
    import restore_faces

    return restore_faces.load_package()


def run_job(job: dict) -> dict:
    """`job` in a fresh process; its JSON result, or the error's last line."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"]
        return {**job, "error": lines[-1]}
    return {**job, **json.loads(proc.stdout.strip().splitlines()[-1]), "process_s": time.perf_counter() - started}


def print_memory_row(row: dict, *, header: bool) -> None:
    if header:
        print("\n| model | frames | faces | find faces s/frame | GPEN s/face | crop+paste s/frame | total s/frame "
              "| peak RSS GiB | batches GiB | peak beyond batches GiB | call peak above its start, beyond output "
              "GiB | row wall s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    name = f"GPEN-{row['model']}"
    if "error" in row:
        print(f"| {name} | {row['frames']} | error: {row['error']} |||||||||", flush=True)
        return
    print(f"| {name} | {row['frames']} | {row['faces']} | {row['find_s']:.3f} | {row['gpen_s']:.2f} "
          f"| {row['paste_s']:.3f} | {row['total_s_per_frame']:.2f} | {gib(row['peak_bytes'])} "
          f"| {gib(row['batch_bytes'])} | {gib(row['peak_bytes'] - row['batch_bytes'])} "
          f"| {gib(row['call_peak_bytes'] - row['output_bytes'])} | {row['process_s']:.0f} |", flush=True)


def print_steady_row(row: dict, *, header: bool) -> None:
    if header:
        print(f"Still sequence, {row['frames']} frames, per-frame noise sigma 2/255; flicker = mean |frame t - "
              "frame t-1| over the pixels inside every frame's pasted mask (mask = 1), in 8-bit levels, after "
              "rounding to 8 bits; 'identity' pastes the aligned crops back unrestored (the pipeline's own share).\n")
        print("| restorer | smoothing | temporal consistency | faces | landmark jitter px (RMS frame-to-frame) | "
              "flicker input | flicker output | output - input | mask px |")
        print("|---|---|---|---|---|---|---|---|---|")
    name = f"GPEN-{row['model']}" if row["restorer"] == "gpen" else "identity"
    if "error" in row:
        print(f"| {name} | {row['smoothing']} | {row['temporal']} | error: {row['error']} ||||||", flush=True)
        return
    print(f"| {name} | {'on (1.0)' if row['smoothing'] else 'off'} | {'on' if row['temporal'] else 'off'} "
          f"| {row['faces']} | {row['jitter_px']:.3f} "
          f"| {row['flicker_in']:.2f} | {row['flicker_out']:.2f} | {row['flicker_out'] - row['flicker_in']:+.2f} "
          f"| {row['mask_px']} |", flush=True)


def gib(count: float) -> str:
    return f"{count / 2**30:.2f}"


# --- worker: one row in a fresh process ----------------------------------------------------------------------


def run_worker(job: dict) -> dict:
    """One row: build the frames, run `restore_image` once and measure it (see the module docstring); or for
    the steadiness job, `STEADY_VARIANTS` one after the other on the same frames."""
    import torch

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    import_pack()
    from comfyui_gpen_restore.face_utils import load_detector
    from comfyui_gpen_restore.gpen_arch.runner import GpenRunner

    runner = GpenRunner.load(job["weights"], precision="fp32")
    detector = load_detector(DETECTOR, FIXTURES / "facedetection")
    frames = make_frames(job["frames"], seed=job["seed"], pan_px=job["pan"])
    if job["kind"] == "memory":
        result = measured_run(frames, runner, detector, smoothing=1.0, restorer="gpen")
        del result["out"]
        return result
    cached = CachedDetector(detector)  # the variants see the same frames: detect them once
    variants = []
    for restorer, smoothing, temporal in STEADY_VARIANTS:
        run = measured_run(frames, runner, cached, smoothing=smoothing, restorer=restorer,
                           temporal_consistency=temporal)
        measures = steadiness(frames, *run.pop("out"))
        variants.append({"restorer": restorer, "smoothing": smoothing, "temporal": temporal, **run, **measures})
    return {"variants": variants}


# (restorer, temporal smoothing, temporal consistency)
STEADY_VARIANTS = (("gpen", 0.0, False), ("gpen", 1.0, False), ("gpen", 1.0, True), ("identity", 0.0, False),
                   ("identity", 1.0, False))


class CachedDetector:
    """`detector` with its detections remembered per frame index: the steadiness variants run the pipeline on the
    same frames, which give the same detections each time."""

    def __init__(self, detector) -> None:
        self.detector = detector
        self.name = detector.name
        self.cache: dict[int, list] = {}

    def detect(self, frame, *, frame_index: int = 0, **options) -> list:
        if frame_index not in self.cache:
            self.cache[frame_index] = self.detector.detect(frame, frame_index=frame_index, **options)
        return list(self.cache[frame_index])


def measured_run(frames, runner, detector, *, smoothing: float, restorer: str,
                 temporal_consistency: bool = False) -> dict:
    """`restore_image` on `frames` with `runner` ("gpen") or the aligned crops pasted back as they are
    ("identity"); times per step and peak memory (see the module docstring)."""
    import numpy as np
    import torch

    from comfyui_gpen_restore.face_utils.paste import PasteSettings
    from comfyui_gpen_restore.face_utils.pipeline import DetectSettings, restore_image

    gpen_times: list[float] = []
    cpu = torch.device("cpu")

    def restore(crops: torch.Tensor, on_face) -> torch.Tensor:
        if restorer == "identity":
            on_face()
            return crops.clone()
        start = time.perf_counter()
        out = runner.restore(crops, device=cpu, on_face=on_face)
        gpen_times.append((time.perf_counter() - start) / max(crops.shape[0], 1))
        return out

    marks: list[float] = []  # time after each progress step

    def on_progress(done: int, total: int) -> None:
        marks.append(time.perf_counter())

    setup_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rss_before = current_rss()
    reset_peak()
    start = time.perf_counter()
    out_image, out_mask, faces = restore_image(
        frames, detector, restore, DetectSettings(crop_size=runner.size, smoothing=smoothing), PasteSettings(),
        on_progress=on_progress, temporal_consistency=temporal_consistency,
    )
    elapsed = time.perf_counter() - start
    call_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    n = frames.shape[0]
    input_bytes = frames.numel() * frames.element_size()
    output_bytes = out_image.numel() * out_image.element_size() + out_mask.numel() * out_mask.element_size()
    # The first n steps are the first pass (one per frame); then one per face (or faceless frame): one face
    # per frame here, so the second pass's steps are frames too.
    first_pass = np.diff([start] + marks[:n])
    second_pass = np.diff(marks[n - 1:])
    gpen_s = statistics.median(gpen_times) if gpen_times else 0.0
    return {
        "faces": len(faces),
        "elapsed_s": elapsed,
        "total_s_per_frame": elapsed / n,
        "find_s": float(np.median(first_pass)),
        "gpen_s": gpen_s,
        "paste_s": float(np.median(second_pass)) - gpen_s,
        "peak_bytes": max(setup_peak, call_peak),
        "setup_peak_bytes": setup_peak,
        "rss_before_bytes": rss_before,
        "call_peak_bytes": call_peak - rss_before,
        "input_bytes": input_bytes,
        "output_bytes": output_bytes,
        "batch_bytes": input_bytes + output_bytes,
        "out": (out_image, out_mask, faces),
    }


def make_frames(count: int, *, seed: int, pan_px: float):
    """An IMAGE batch `[count, 1080, 1920, 3]` float32 in 0..1: the fixture photo scaled by `PHOTO_SCALE` on a grey
    canvas, panned right by `pan_px` per frame (bilinear, sub-pixel), with fresh N(0, `NOISE_SIGMA`) noise per
    pixel, channel and frame; written frame by frame into one preallocated tensor (as ComfyUI's loaders hold it)."""
    import cv2
    import numpy as np
    import torch

    bgr = cv2.imread(str(PHOTO), cv2.IMREAD_COLOR)
    photo = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0  # RGB from OpenCV's BGR, here only
    photo = cv2.resize(photo, None, fx=PHOTO_SCALE, fy=PHOTO_SCALE, interpolation=cv2.INTER_CUBIC).clip(0, 1)
    height, width = FRAME_HW
    canvas = np.full((height, width, 3), BACKGROUND, dtype=np.float32)
    top, left = (height - photo.shape[0]) // 2, (width - photo.shape[1]) // 3
    canvas[top:top + photo.shape[0], left:left + photo.shape[1]] = photo
    rng = np.random.default_rng(seed)
    frames = torch.empty((count, height, width, 3), dtype=torch.float32)
    for t in range(count):
        shift = np.array([[1.0, 0.0, pan_px * t], [0.0, 1.0, 0.0]])
        frame = canvas if pan_px == 0 else cv2.warpAffine(canvas, shift, (width, height), flags=cv2.INTER_LINEAR,
                                                          borderMode=cv2.BORDER_REPLICATE)
        noisy = frame + rng.standard_normal(frame.shape, dtype=np.float32) * np.float32(NOISE_SIGMA)
        frames[t] = torch.from_numpy(np.clip(noisy, 0.0, 1.0, out=noisy))
    return frames


def steadiness(frames, out_image, out_mask, faces) -> dict:
    """Landmark jitter of the faces restored and pixel flicker inside the face, input and output (see
    `print_steady_row`)."""
    import numpy as np

    landmarks = np.stack([np.array(face.landmarks_xy) for face in faces])  # [T, 5, 2]: one face per frame
    jitter = float(np.sqrt(np.mean(np.sum(np.diff(landmarks, axis=0) ** 2, axis=-1))))
    inside = (out_mask >= 1.0).all(dim=0).numpy()  # pixels fully pasted in every frame: one fixed region

    def flicker(batch) -> float:
        levels = np.rint(batch.numpy()[:, inside] * 255).astype(np.int16)  # [T, P, C], what a video file holds
        return float(np.abs(np.diff(levels, axis=0)).mean())

    return {"jitter_px": jitter, "flicker_in": flicker(frames), "flicker_out": flicker(out_image),
            "mask_px": int(inside.sum())}


def current_rss() -> int:
    """Resident bytes of this process now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> None:
    """Reset this process's peak RSS (VmHWM, which ru_maxrss reports) to its current RSS (Linux 4.0+)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


if __name__ == "__main__":
    main()
