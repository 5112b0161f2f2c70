"""Restored detail that holds still (`temporal_consistency`): flicker, a blink, a moving face, and the time it costs.

    python benchmarks/bench_temporal.py            # 15-frame shots of the fixture photo, crops at 512 px

GPEN invents detail, and random weights cannot show that; a test restorer stands in: it returns its input crop
with fresh fine detail (noise of 0.06) drawn at every call, as a GAN's invented detail differs from frame to frame.
Rows: the frame-to-frame change inside a still face (flicker), how much the eyes follow a 3-frame blink, the mean
difference from the per-frame restore on a face moving 6 px a frame over a striped background with a restorer that
invents nothing (a ghost of the neighbours would show there), each with the input agreement on and switched off;
then the time the stage adds per face at 512, 1024 and 2048 px against GPEN's own (the published configuration,
random weights; fp32, and bf16 where the CPU has it natively) on this machine. Prints Markdown tables (the README
shows them).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
FRAMES = 15
BLINK = range(6, 9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crop", type=int, default=512, help="crop side for the quality rows")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    import restore_faces

    restore_faces.load_package()
    import cv2
    import torch
    from comfyui_gpen_restore.face_utils import PasteSettings, load_detector, pipeline, temporal

    torch.set_num_threads(2)
    bgr = cv2.imread(str(REPO_ROOT / "tests" / "fixtures" / "images" / "grace_hopper.jpg"), cv2.IMREAD_COLOR)
    photo = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    (face,) = load_detector("retinaface_mobile0.25", REPO_ROOT / "tests" / "fixtures" / "facedetection").detect(photo)
    (x0, y0), (x1, _) = face.landmarks_xy[:2]

    def detector(shift_per_frame: float = 0.0, offset: float = 0.0):
        class Given:
            name = "given"

            def detect(self, frame, *, frame_index=0, **_):
                dx = offset + shift_per_frame * frame_index
                moved = face.with_frame(frame_index)
                a, b, c, d = moved.box_xyxy
                return [dataclasses.replace(moved, box_xyxy=(a + dx, b, c + dx, d),
                                            landmarks_xy=tuple((x + dx, y) for x, y in moved.landmarks_xy))]

        return Given()

    def restorer(detail: float):
        generator = torch.Generator().manual_seed(0)

        def restore(crops, on_face):
            for _ in range(crops.shape[0]):
                on_face()
            return (crops[..., :3] + torch.randn(crops[..., :3].shape, generator=generator) * detail).clamp(0, 1)

        return restore

    def run(frames, found, restore, consistent):
        settings = pipeline.DetectSettings(crop_size=args.crop, score_threshold=0.5, smoothing=0.0)
        batch = torch.from_numpy(np.stack(frames))
        out, mask, _ = pipeline.restore_image(batch, found, restore, settings, PasteSettings(color_correction=False),
                                              temporal_consistency=consistent)
        return out.numpy(), mask.numpy()

    rng = np.random.default_rng(1)
    still = [np.clip(photo + rng.normal(0, 0.01, photo.shape), 0, 1).astype(np.float32) for _ in range(FRAMES)]
    blink = [frame.copy() for frame in still]
    for t in BLINK:
        blink[t][round(y0) - 8 : round(y0) + 8, round(x0) - 15 : round(x1) + 15] *= 0.4
    stripes = 0.3 + 0.4 * ((np.arange(photo.shape[1]) // 8) % 2).astype(np.float32)
    moving = []
    for t in range(FRAMES):
        frame = np.tile(stripes[None, :, None], (photo.shape[0], 1, 3))
        frame[60:380, 60 + 6 * t : 340 + 6 * t] = photo[60:380, 120:400]
        moving.append(frame)
    eyes = (slice(round(y0) - 6, round(y0) + 6), slice(round(x0) - 10, round(x1) + 10))

    rows = []
    for label, scale in (("on", temporal.AGREEMENT_SCALE), ("switched off", 1e9)):
        temporal.AGREEMENT_SCALE = scale
        plain, mask = run(still, detector(), restorer(0.06), False)
        steady, _ = run(still, detector(), restorer(0.06), True)
        core = mask[0] > 0.99
        flicker = np.abs(np.diff(steady, axis=0))[:, core].mean() / np.abs(np.diff(plain, axis=0))[:, core].mean()
        plain_b, _ = run(blink, detector(), restorer(0.06), False)
        steady_b, _ = run(blink, detector(), restorer(0.06), True)
        followed = abs(steady_b[7][eyes].mean() - steady_b[4][eyes].mean()) / abs(
            plain_b[7][eyes].mean() - plain_b[4][eyes].mean())
        plain_m, mask_m = run(moving, detector(6.0, -60.0), restorer(0.0), False)
        steady_m, _ = run(moving, detector(6.0, -60.0), restorer(0.0), True)
        ghost = np.abs(steady_m - plain_m)[mask_m > 0.5].mean()
        rows.append((label, flicker, followed, ghost))
    print(f"Test restorer inventing fresh detail each frame; {FRAMES}-frame shots, {args.crop}-px crops.\n")
    print("| input agreement | flicker in a still face, / per-frame | blink followed, / per-frame | "
          "ghost on a moving face (mean difference) |")
    print("|---|---|---|---|")
    for label, flicker, followed, ghost in rows:
        print(f"| {label} | {flicker:.2f}x | {followed:.2f}x | {ghost:.1e} |")

    from comfyui_gpen_restore.gpen_arch import GPEN
    from comfyui_gpen_restore.gpen_arch.runner import cpu_has_native_bf16

    dtypes = [torch.float32] + ([torch.bfloat16] if cpu_has_native_bf16() else [])
    names = " / ".join(str(dtype).removeprefix("torch.") for dtype in dtypes)
    print(f"\n| crop | combining 6 neighbours, ms per face | GPEN at that size ({names}), ms per face | share |")
    print("|---|---|---|---|")
    for size in (512, 1024, 2048):
        own, own_input = torch.rand(size, size, 3), torch.rand(size, size, 3)
        side = min(size, temporal.COMPARE_SIZE)
        neighbours = [(k, temporal._blurred(torch.rand(size, size, 3), side), torch.rand(size, size, 3))
                      for k in (-3, -2, -1, 1, 2, 3)]

        def steady() -> None:  # what the stage adds per face: its input compared, combined into a new crop
            temporal.combine(temporal._blurred(own_input, side), own, neighbours, out=torch.empty_like(own))

        combining = seconds(steady)
        gpen = []
        for dtype in dtypes:  # the published configuration, random weights: the same arithmetic as real ones
            model = GPEN(size=size).to(dtype).eval()
            crop = torch.rand(1, 3, size, size, dtype=dtype) * 2 - 1
            with torch.inference_mode():
                gpen.append(seconds(functools.partial(model, crop), repeats=1))
        share = " / ".join(f"{combining / g:.0%}" for g in gpen)
        print(f"| {size} | {combining * 1000:.0f} | {' / '.join(f'{g * 1000:.0f}' for g in gpen)} | {share} |")


def seconds(work, repeats: int = 3) -> float:
    """Mean wall time of `work()` over `repeats` runs after one warm-up run."""
    work()
    start = time.perf_counter()
    for _ in range(repeats):
        work()
    return (time.perf_counter() - start) / repeats


if __name__ == "__main__":
    main()
