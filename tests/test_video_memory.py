"""The one-node restore's memory does not grow with the frame count: beyond ComfyUI's own input and output batches
it holds one frame's work at a time, however long the video.

Each measurement runs `face_utils.pipeline.restore_image` (the one-node restore's path) in a fresh process, this
file run as a script, on N synthetic 1280x720 frames (the fixture photo on a grey canvas with fresh seeded pixel
noise per frame) with a small random GPEN-64 and the fixture RetinaFace-MobileNet. The process's peak RSS is reset
just before the call (/proc/self/clear_refs), so the peak it reports afterwards is the call's own: its rise above
the RSS at the start of the call, minus the output IMAGE and MASK batches the call fills, is the memory the
restore needs beyond the batches. The measure counts bytes, not time, so it is deterministic up to allocator
slack of well under a frame.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO_ROOT

FRAME_HW = (720, 1280)
FRAME_BYTES = FRAME_HW[0] * FRAME_HW[1] * 3 * 4  # one float32 RGB frame: 11 MB
# SHORT is past the frames the pipeline holds in flight (temporal consistency's 3 frames of look-ahead, the paste's
# colour window): from 6 to 12 frames its memory still rose by about 28 MiB, from 12 on it stays flat.
SHORT, LONG = 12, 36
# The limit on growth from SHORT to LONG frames. Holding anything the loop makes per frame (its copy of the frame,
# the pasted frame, a frame-sized mask or blend buffer) would add at least 24 x 3.7 MB (a float32 mask), typically
# 24 x 11 MB = 265 MB; the leaking variant below shows that this measure sees it. GPEN-64's crops are only 48 KB,
# too small to resolve here; what keeps them from accumulating is the same per-frame scope (crops and restored
# crops are locals of one iteration of `restore_frames`), and at GPEN-2048 sizes (50 MB a crop) they would be
# frame-sized accumulation. Measured on the 2-core dev machine, temporal consistency on as by default, six runs:
# 12 frames 81-91 MiB beyond the batches, 36 frames 82-89 MiB (growth -9 to +6 MiB), 36 frames kept by the leaking
# variant 453-458 MiB.
GROWTH_LIMIT_BYTES = 4 * FRAME_BYTES
NOISE_SIGMA = 2.0 / 255.0  # per pixel, channel and frame: the detector's landmarks jitter as on real video

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="peak memory is read and reset through Linux's /proc/self")


@pytest.mark.slow
def test_one_node_restore_memory_does_not_grow_with_frame_count(tmp_path: Path, fixtures_dir: Path) -> None:
    from support import DETECTOR, save_gpen

    weights = save_gpen(tmp_path / "GPEN-BFR-64.pth", 64)
    jobs = {
        "short": {"frames": SHORT, "leak": False},
        "long": {"frames": LONG, "leak": False},
        # The same loop with a sink that keeps every finished frame, as a pipeline accumulating its per-frame
        # results would: proof that the measure below sees frame-sized accumulation.
        "leaking": {"frames": LONG, "leak": True},
    }
    results = run_workers({name: {**job, "weights": str(weights), "detector": DETECTOR,
                                         "detector_dir": str(fixtures_dir / "facedetection")}
                           for name, job in jobs.items()})

    for name, result in results.items():
        assert result["faces"] == jobs[name]["frames"], f"{name}: one face per frame expected, got {result}"
    growth = results["long"]["beyond_batches"] - results["short"]["beyond_batches"]
    leaked = results["leaking"]["beyond_batches"] - results["short"]["beyond_batches"]
    summary = ", ".join(f"{name} {result['beyond_batches'] / 2**20:.1f} MiB" for name, result in results.items())
    assert growth < GROWTH_LIMIT_BYTES, (
        f"memory beyond the batches grew by {growth / 2**20:.1f} MiB from {SHORT} to {LONG} frames "
        f"(limit {GROWTH_LIMIT_BYTES / 2**20:.0f} MiB, 4 frames): something is kept per frame ({summary})"
    )
    # The process's whole peak (ru_maxrss, weights and imports included) minus the batches tells the same.
    whole_growth = results["long"]["process_beyond_batches"] - results["short"]["process_beyond_batches"]
    assert whole_growth < GROWTH_LIMIT_BYTES, f"whole-process peak beyond the batches grew by {whole_growth} bytes"
    # Keeping the LONG finished frames (398 MB; measured: 362-372 MiB more than the short run) fails the same check
    # by a wide margin.
    assert leaked > LONG * FRAME_BYTES / 2 > 2 * GROWTH_LIMIT_BYTES, (
        f"the measure missed {LONG} frames kept by the leaking variant ({summary})")


def run_workers(jobs: dict[str, dict]) -> dict[str, dict]:
    """Each job in its own fresh process (run together: they measure bytes, not time); their JSON results."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",  # three processes on a small CI machine; results do not depend on it
           # Every allocation of 1 MiB or more straight from the kernel and back when freed (glibc otherwise moves its
           # threshold as it goes and keeps freed frames in its heap), so the peak is what the pipeline holds, not
           # where the allocator's slack happened to land (+-40 MiB between runs without it).
           "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    procs = {name: subprocess.Popen([sys.executable, __file__, json.dumps(job)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env)
             for name, job in jobs.items()}
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name} worker failed:\n{err[-3000:]}"
        results[name] = json.loads(out.strip().splitlines()[-1])
    return results


# --- worker: one measurement in a fresh process (this file run as a script) ----------------------------------


def measure(job: dict) -> dict:
    """Run `restore_image` on `job["frames"]` frames and return its memory beyond the batches (see the module
    docstring). With `job["leak"]`, the same loop through `restore_frames` with a sink that also keeps every
    finished frame."""
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO_ROOT))
    import restore_faces

    restore_faces.load_package()
    from comfyui_gpen_restore.face_utils import load_detector
    from comfyui_gpen_restore.face_utils.choices import DEFAULT_TEMPORAL_CONSISTENCY
    from comfyui_gpen_restore.face_utils.paste import PasteSettings
    from comfyui_gpen_restore.face_utils.pipeline import DetectSettings, restore_frames, restore_image
    from comfyui_gpen_restore.gpen_arch.runner import GpenRunner

    torch.set_num_threads(1)
    runner = GpenRunner.load(job["weights"], precision="fp32")
    detector = load_detector(job["detector"], Path(job["detector_dir"]))
    frames = make_frames(job["frames"])
    cpu = torch.device("cpu")

    def restore(crops: torch.Tensor, on_face) -> torch.Tensor:
        return runner.restore(crops, device=cpu, on_face=on_face)

    detect, paste = DetectSettings(crop_size=runner.size), PasteSettings()
    steady = DEFAULT_TEMPORAL_CONSISTENCY  # as the one-node restore runs by default: a few frames held for it
    setup_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    rss_before = current_rss()
    with open("/proc/self/clear_refs", "w") as clear_refs:  # peak RSS (VmHWM, ru_maxrss) := RSS now
        clear_refs.write("5")
    if job["leak"]:
        out_image = torch.empty(frames.shape, dtype=torch.float32)
        out_mask = torch.zeros(frames.shape[:3], dtype=torch.float32)
        kept: list[np.ndarray] = []

        def store(index: int, frame: np.ndarray, mask: np.ndarray | None) -> None:
            out_image[index] = torch.from_numpy(frame)
            if mask is not None:
                out_mask[index] = torch.from_numpy(mask)
            kept.append(frame)

        faces = restore_frames(frames, detector, restore, detect, paste, store, temporal_consistency=steady)
    else:
        out_image, out_mask, faces = restore_image(frames, detector, restore, detect, paste,
                                                   temporal_consistency=steady)
    # VmHWM, not ru_maxrss: getrusage also reports the peak of threads that have exited since the set-up (a
    # library's worker thread ending), which clear_refs does not reset, and that would hide the call's own peak.
    peak = peak_rss()
    input_bytes = frames.numel() * 4
    output_bytes = (out_image.numel() + out_mask.numel()) * 4
    return {
        "faces": len(faces),
        "beyond_batches": peak - rss_before - output_bytes,
        # The whole process's peak (weights, imports and the input batch included), as a user would read it.
        "process_beyond_batches": max(setup_peak, peak) - input_bytes - output_bytes,
    }


def make_frames(count: int):
    """IMAGE `[count, 720, 1280, 3]` float32 in 0..1: the fixture photo on a grey canvas, fresh N(0, 2/255) noise
    per pixel in every frame (seeded), written frame by frame into one preallocated tensor."""
    import cv2
    import numpy as np
    import torch

    bgr = cv2.imread(str(REPO_ROOT / "tests" / "fixtures" / "images" / "grace_hopper.jpg"), cv2.IMREAD_COLOR)
    photo = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0  # RGB from OpenCV's BGR, here only
    canvas = np.full((*FRAME_HW, 3), 0.45, dtype=np.float32)
    top, left = (FRAME_HW[0] - photo.shape[0]) // 2, (FRAME_HW[1] - photo.shape[1]) // 2
    canvas[top:top + photo.shape[0], left:left + photo.shape[1]] = photo
    rng = np.random.default_rng(0)
    frames = torch.empty((count, *FRAME_HW, 3), dtype=torch.float32)
    for t in range(count):
        noisy = canvas + rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(NOISE_SIGMA)
        frames[t] = torch.from_numpy(np.clip(noisy, 0.0, 1.0, out=noisy))
    return frames


def peak_rss() -> int:
    """Peak resident bytes of this process since the last reset through /proc/self/clear_refs (VmHWM)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024  # kB


def current_rss() -> int:
    """Resident bytes of this process now."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
