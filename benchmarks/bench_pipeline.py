"""The whole pipeline per stage: model load, detection, crop warp, GPEN, paste-back, conversions; and how much of
the one-node path's time is spent outside GPEN.

    python benchmarks/bench_pipeline.py                          # CPU: photo, 1080p batch, 4K group; GPEN-512/2048
    python benchmarks/bench_pipeline.py --device cuda --precision fp16   # a GPU: the device-resident path
    python benchmarks/bench_pipeline.py --scenes photo --models 512 --repeats 5

Scenes (built from the fixture photos, tests/fixtures/images, with tests/crowd_support.py):
- photo: grace_hopper.jpg enlarged to 1137 px high (970x1137), one face;
- batch: 8 frames of 1920x1080, one ~260-px face panning 4 px per frame (a video batch: tracked and smoothed);
- group: 3840x2160 with 6 faces of 180-300 px.

Every row runs in a fresh process (its peak memory is its own: the whole process, VmHWM, and on CUDA the peak
allocated by torch). The model is randomly initialised at its published size (what runs is the same network);
faces are found by RetinaFace MobileNet-0.25 (the fixture weights), and the column "R50 ms" times the default
ResNet-50 detector's network on the first frame with random weights (its face head zeroed, so no detections cost
anything downstream; one cold run on the 1080p and 4K scenes). Stage times are medians of `--repeats` runs each: detection, crop warp (`warp_crops`) and
paste-back with colour correction (`paste_back`) as the separate nodes run them, conversions (IMAGE frame to the
pipeline's frame and back). "whole" is one run of the one-node path (`restore_image`) with the GPEN calls inside
it timed ("GPEN"), and "outside" is the rest of that same run: what the pipeline costs on top of the model.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "tests" / "fixtures"
SCENES = ("photo", "batch", "group")
# Published GPEN-BFR configurations (upstream's README).
MODELS = {512: {"size": 512}, 2048: {"size": 2048}}
GPEN_CONFIG = {"style_dim": 512, "n_mlp": 8, "channel_multiplier": 2, "narrow": 1}
BATCH_FRAMES = 8
PAN_PX_PER_FRAME = 4.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", nargs="+", default=list(SCENES), choices=SCENES)
    parser.add_argument("--models", type=int, nargs="+", default=sorted(MODELS), choices=sorted(MODELS))
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"),
                        help="GPEN's precision (fp16 or bf16 on a GPU; both are emulated, slowly, on a CPU)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each stage after a warm-up; medians shown")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return

    import torch

    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"device {args.device}, {args.precision}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        weights = {size: save_weights(size, Path(tmp)) for size in args.models}
        detector_dir = save_detectors(Path(tmp))
        print_header()
        for scene in args.scenes:
            for size in args.models:
                job = {"scene": scene, "size": size, "weights": str(weights[size]), "detectors": str(detector_dir),
                       "device": args.device, "precision": args.precision, "repeats": args.repeats,
                       "threads": args.threads}
                print_row(run_job(job))
    print(f"\nTotal wall time {time.perf_counter() - started:.0f} s.")


def import_pack():
    """The pack as `comfyui_gpen_restore` (the command line's loader), and the tests' scene helpers."""
    for folder in (str(REPO_ROOT / "tests"), str(REPO_ROOT)):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    import restore_faces

    return restore_faces.load_package()


def save_weights(size: int, folder: Path) -> Path:
    import torch

    import_pack()
    from comfyui_gpen_restore import gpen_arch

    torch.manual_seed(0)
    path = folder / f"GPEN-BFR-{size}.pth"
    torch.save(gpen_arch.GPEN(size=size, **GPEN_CONFIG).state_dict(), path)
    return path


def save_detectors(folder: Path) -> Path:
    """The fixture MobileNet-0.25 RetinaFace, and a random ResNet-50 one whose face head is zeroed."""
    import shutil
    import warnings

    import torch
    from facexlib.detection.retinaface import RetinaFace

    shutil.copy(FIXTURES / "facedetection" / "detection_mobilenet0.25_Final.pth", folder)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = RetinaFace(network_name="resnet50", half=False, device="cpu")
    with torch.no_grad():
        for head in net.ClassHead:
            head.conv1x1.weight.zero_()
            head.conv1x1.bias.zero_()
    torch.save(net.state_dict(), folder / "detection_Resnet50_Final.pth")
    return folder


def run_job(job: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"]
        return {**job, "error": lines[-1]}
    return {**job, **json.loads(proc.stdout.strip().splitlines()[-1])}


COLUMNS = ("scene", "model", "device", "frames x faces", "load s", "detect ms/frame", "R50 ms", "warp ms/frame",
           "GPEN ms/face", "paste ms/frame", "conversions ms/frame", "whole ms/frame", "outside GPEN",
           "peak GiB")


def print_header() -> None:
    print("\n| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS), flush=True)


def print_row(row: dict) -> None:
    head = f"| {row['scene']} | GPEN-{row['size']} | {row['device']} |"
    if "error" in row:
        print(f"{head} error: {row['error']} |" + " |" * (len(COLUMNS) - 4), flush=True)
        return
    frames, faces = row["frames"], row["faces"]
    per_frame = lambda key: f"{1000 * row[key]:.1f}"
    outside = row["whole_s"] - row["gpen_s"]
    peak = row["peak_bytes"] / 2**30
    cuda_peak = f" (CUDA {row['cuda_peak_bytes'] / 2**30:.2f})" if row.get("cuda_peak_bytes") else ""
    print(f"{head} {frames} x {faces / frames:.0f} | {row['load_s']:.2f} | {per_frame('detect_s')} "
          f"| {per_frame('r50_s')} | {per_frame('warp_s')} | {1000 * row['gpen_s'] / faces:.0f} "
          f"| {per_frame('paste_s')} | {per_frame('convert_s')} | {1000 * row['whole_s'] / frames:.0f} "
          f"| {1000 * outside / frames:.0f} ms = {100 * outside / row['gpen_s']:.1f} % of GPEN "
          f"| {peak:.2f}{cuda_peak} |", flush=True)


# --- worker: one row in a fresh process ----------------------------------------------------------------------


def run_worker(job: dict) -> dict:
    import torch

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    import_pack()
    from comfyui_gpen_restore.face_utils import PasteSettings, load_detector, pipeline
    from comfyui_gpen_restore.face_utils.conversion import frame_to_numpy
    from comfyui_gpen_restore.face_utils.pixels import choose_pixels
    from comfyui_gpen_restore.gpen_arch import GpenRunner

    device = torch.device(job["device"])
    pixels = choose_pixels(device)
    repeats = job["repeats"]
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def timed(work, runs: int = repeats, warm_up: bool = True) -> tuple[float, object]:
        """Median seconds of `runs` runs (after a warm-up run unless told not to), and the last result."""
        result, times = work() if warm_up else None, []
        for _ in range(runs):
            sync()
            start = time.perf_counter()
            result = work()
            sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times), result

    start = time.perf_counter()
    runner = GpenRunner.load(Path(job["weights"]), precision=job["precision"], fp16_ok=True, bf16_ok=True,
                             compile=False, where_to_get="a test-made file")
    runner.module.to(device)
    sync()
    load_s = time.perf_counter() - start

    image = torch.from_numpy(scene_frames(job["scene"]))
    frames = image.shape[0]
    detector = load_detector("retinaface_mobile0.25", job["detectors"], device=device)
    settings = pipeline.DetectSettings(crop_size=runner.size)
    paste = PasteSettings()
    detect_s, faces = timed(lambda: pipeline.detect_faces(image, detector, settings))
    r50 = load_detector("retinaface_resnet50", job["detectors"], device=device)
    # One cold run on the large scenes: ResNet-50 takes seconds per megapixel on a CPU.
    large = image.shape[1] * image.shape[2] > 1920 * 1088 or frames > 1
    r50_s, _ = timed(lambda: r50.detect(frame_to_numpy(image, 0)), runs=1 if large else repeats, warm_up=not large)
    warp_s, crops = timed(lambda: pipeline.warp_crops(image, faces, pixels=pixels))

    gpen_s = 0.0

    def restore(crops, on_face):
        nonlocal gpen_s
        sync()
        start = time.perf_counter()
        out = runner.restore(crops, device=device, strength=0.8, on_face=on_face, output_device=crops.device)
        sync()
        gpen_s += time.perf_counter() - start
        return out

    restored = restore(crops, lambda: None)
    gpen_s = 0.0
    paste_s, _ = timed(lambda: pipeline.paste_back(image, restored, faces, paste, pixels=pixels))

    def convert() -> None:
        out = torch.empty_like(image)
        for index in range(frames):
            out[index] = torch.from_numpy(frame_to_numpy(image, index))

    convert_s, _ = timed(convert)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync()
    start = time.perf_counter()
    pipeline.restore_image(image, detector, restore, settings, paste, pixels=pixels)
    sync()
    whole_s = time.perf_counter() - start
    return {
        "frames": frames, "faces": len(faces), "load_s": load_s, "detect_s": detect_s / frames,
        "r50_s": r50_s, "warp_s": warp_s / frames, "gpen_s": gpen_s, "paste_s": paste_s / frames,
        "convert_s": convert_s / frames, "whole_s": whole_s, "peak_bytes": peak_rss_bytes(),
        "cuda_peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0,
    }


def scene_frames(scene: str):
    """The scene's frames, float32 [B, H, W, 3] in 0..1 (see the module docstring)."""
    import cv2
    import numpy as np
    from comfyui_gpen_restore.face_utils import load_detector
    from crowd_support import face_sources, make_crowd
    from support import read_rgb

    if scene == "photo":
        rgb = read_rgb(FIXTURES / "images" / "grace_hopper.jpg")
        scale = 1137 / rgb.shape[0]
        size_wh = (round(rgb.shape[1] * scale), 1137)
        return cv2.resize(rgb, size_wh, interpolation=cv2.INTER_CUBIC).clip(0, 1)[None]
    sources = face_sources(load_detector("retinaface_mobile0.25", FIXTURES / "facedetection"), FIXTURES / "images")
    if scene == "batch":
        return np.stack([
            make_crowd(sources[:1], [260.0], size_hw=(1080, 1920), centres_xy=[(900 + PAN_PX_PER_FRAME * t, 520)]).image
            for t in range(BATCH_FRAMES)
        ])
    centres = [(600 + 1300 * (i % 3), 600 + 1000 * (i // 3)) for i in range(6)]
    return make_crowd(sources, [180.0, 240.0, 300.0], size_hw=(2160, 3840), centres_xy=centres).image[None]


def peak_rss_bytes() -> int:
    """The process's peak resident memory (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


if __name__ == "__main__":
    main()
