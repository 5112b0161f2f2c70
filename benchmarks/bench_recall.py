"""Recall of small faces in a large image: the former 1024-px detection copy against the full-resolution default.

    python benchmarks/bench_recall.py                       # 4000x3000, faces of 30/45/60/90 px, 30 per image
    python benchmarks/bench_recall.py --sizes 45 60 --seeds 2

The synthetic crowd (tests/crowd_support.py): the real faces of tests/fixtures/images/grace_hopper.jpg and
astronaut.png (as the detector finds them on the originals), cut out with some context, shrunk to the face size
(geometric mean of the box's width and height) and blended into a smooth random background on a 5x6 grid with random
jitter, half of them mirrored. A known face is found when a detection overlaps its box with IoU > 0.5; a false
positive is a detection matching no face. Detector: RetinaFace MobileNet-0.25 (the fixture weights) at score 0.9.
"MP seen" is the total area the network ran on (tiles and passes), the machine-independent cost; times are wall
and process CPU seconds (on a shared machine wall time drifts with the load, CPU time less). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
# (label, detection_size): the former default and the new one.
SETTINGS = (("1024-px copy (former default)", 1024), ("full resolution, tiled (default)", 0))

logger = logging.getLogger("bench_recall")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[30, 45, 60, 90], help="face sizes, px")
    parser.add_argument("--image", type=int, nargs=2, default=[4000, 3000], metavar=("W", "H"))
    parser.add_argument("--grid", type=int, nargs=2, default=[5, 6], metavar=("ROWS", "COLS"))
    parser.add_argument("--seeds", type=int, default=1, help="crowds per face size (layout and background)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--detector-dir", type=Path, default=REPO_ROOT / "tests" / "fixtures" / "facedetection")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    sys.path.insert(0, str(REPO_ROOT))
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    import restore_faces

    restore_faces.load_package()
    from comfyui_gpen_restore.face_utils import load_detector
    from crowd_support import face_sources, make_crowd, match

    detector = load_detector("retinaface_mobile0.25", args.detector_dir)
    sources = face_sources(detector, REPO_ROOT / "tests" / "fixtures" / "images")
    seen_pixels = []
    network = detector._detect_rgb

    def counting(rgb: np.ndarray, threshold: float):
        seen_pixels.append(rgb.shape[0] * rgb.shape[1])
        return network(rgb, threshold)

    # Untimed warm-up: torch's first calls allocate and pick kernels.
    detector.detect(make_crowd(sources, [60], size_hw=(1500, 2000), grid_rc=(2, 2)).image)
    detector._detect_rgb = counting  # counts the area each pass and tile costs
    size_hw = (args.image[1], args.image[0])
    rows = []
    for face_size in args.sizes:
        for label, detection_size in SETTINGS:
            found = known = false_positives = 0
            wall = cpu = 0.0
            seen_pixels.clear()
            for seed in range(args.seeds):
                crowd = make_crowd(sources, [face_size], size_hw=size_hw, grid_rc=tuple(args.grid), seed=seed)
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                faces = detector.detect(crowd.image, detection_size=detection_size)
                wall += time.perf_counter() - start_wall
                cpu += time.process_time() - start_cpu
                assigned, used = match(faces, crowd.boxes_xyxy)
                found += int((assigned >= 0).sum())
                known += len(assigned)
                false_positives += int((used == 0).sum())
            rows.append((face_size, label, found, known, false_positives, sum(seen_pixels) / args.seeds / 1e6,
                         wall / args.seeds, cpu / args.seeds))
            logger.info("%d px, %s: %d/%d found, %d false positives, %.1f s", *rows[-1][:5], rows[-1][6])

    print(f"\n{args.image[0]}x{args.image[1]} image, {args.grid[0] * args.grid[1]} faces per image, "
          f"{args.seeds} image(s) per size, RetinaFace MobileNet-0.25, score >= 0.9, {args.threads} CPU threads\n")
    print("| face size | detection | recall | false positives | MP seen | wall s | CPU s |")
    print("|---|---|---|---|---|---|---|")
    for face_size, label, found, known, false_positives, megapixels, wall, cpu in rows:
        print(f"| {face_size} px | {label} | {found}/{known} ({found / known:.0%}) | {false_positives} | "
              f"{megapixels:.1f} | {wall:.1f} | {cpu:.1f} |")


if __name__ == "__main__":
    main()
