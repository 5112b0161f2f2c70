"""Command line: restore every face in image files or folders, through the same pipeline as the ComfyUI nodes.

Run it with the script at the pack's root: `python restore_faces.py --input photo.jpg --output out/`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from . import pipeline
from .conversion import frames_to_image
from . import (
    DETECTORS,
    KNOWN_WEIGHTS,
    MASK_SHAPES,
    ORDERS,
    TEMPLATES,
    PasteSettings,
    WeightsUnavailableError,
    load_detector,
    load_face_parser,
)
from ..gpen_arch import PRECISIONS, GpenRunner, MissingDependencyError, UnsupportedCheckpointError, check_strength
from ..gpen_arch.runner import DEFAULT_STRENGTH, CropShapeError
from ..gpen_arch.files import DOWNLOAD_HINT, RESTORE_FOLDER, find_models, preferred_model
from .weights import DETECTION_FOLDER, folder_with_file

logger = logging.getLogger(__name__)

PACK_DIR = Path(__file__).resolve().parents[1]  # the pack's folder: custom_nodes/<pack> inside a ComfyUI
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")  # what OpenCV reads and writes
DEFAULT_OUTPUT_SUFFIX = ".png"  # lossless, so restoring never adds compression artefacts
SIXTEEN_BIT_SUFFIXES = (".png", ".tif", ".tiff")  # formats OpenCV writes with 16 bits per channel


class CommandLineError(Exception):
    """A problem the user can fix (missing model, bad path); printed without a traceback."""


def model_roots(script_dir: Path) -> list[Path]:
    """Folders that may hold `facerestore_models`/`facedetection`, most specific first: ./models, the ComfyUI
    this pack is installed in (custom_nodes/<pack>/../../models), ~/ComfyUI/models."""
    roots = [Path.cwd() / "models", script_dir.parent.parent / "models", Path.home() / "ComfyUI" / "models"]
    unique: list[Path] = []
    for root in roots:
        if root.resolve() not in [r.resolve() for r in unique]:
            unique.append(root)
    return unique


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="restore_faces.py",
        description="Restore every face in images with GPEN (the same pipeline as the ComfyUI nodes).",
        epilog="Example: python restore_faces.py --input photos/ --output restored/ "
        "--model models/facerestore_models/GPEN-BFR-2048.pth",
    )
    parser.add_argument("--input", "-i", nargs="+", required=True, type=Path,
                        help="image files and/or folders (searched recursively for images)")
    parser.add_argument("--output", "-o", type=Path, default=Path("restored"),
                        help="output folder (default: ./restored); a file name if there is exactly one input image")
    parser.add_argument("--model", "-m", type=Path,
                        help="GPEN weights (.pth/.pt/.safetensors/.onnx); default: the largest GPEN found in "
                        "./models/facerestore_models, the ComfyUI this pack is in, or ~/ComfyUI/models")
    parser.add_argument("--aligned", action="store_true",
                        help="inputs are already aligned face crops: restore each whole image, no detection")
    parser.add_argument("--strength", type=float, default=DEFAULT_STRENGTH,
                        help="blend of restored and original face, 0..1 (default 0.8, as upstream GPEN)")
    parser.add_argument("--detector", choices=DETECTORS, default=DETECTORS[0], help="face detector")
    parser.add_argument("--detector-dir", type=Path,
                        help="folder with detector/parser weights (downloaded there if missing); default: a "
                        "facedetection folder next to the model folder")
    parser.add_argument("--threshold", type=float, default=0.9, help="detection score threshold (default 0.9)")
    parser.add_argument("--order", choices=ORDERS, default="largest", help="face order for --face-index")
    parser.add_argument("--face-index", default="all", help="'all' or positions such as '0' or '0,2'")
    parser.add_argument("--max-faces", type=int, default=0, help="at most this many faces per image (0 = all)")
    parser.add_argument("--template", choices=TEMPLATES, default="gpen", help="alignment template")
    parser.add_argument("--mask-shape", choices=MASK_SHAPES, default="ellipse", help="paste mask shape")
    parser.add_argument("--erosion", type=float, default=PasteSettings.erosion, help="mask erosion, fraction of the crop")
    parser.add_argument("--feather", type=float, default=PasteSettings.feather, help="mask feather, fraction of the crop")
    parser.add_argument("--no-color-correction", action="store_true", help="do not match the original colours")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, mps")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: fp16 (or bf16) on CUDA GPUs that run it well, fp32 elsewhere")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the network (slow first image, faster after; not for .onnx)")
    parser.add_argument("--verbose", "-v", action="store_true", help="log each step")
    return parser


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


def main(argv: Sequence[str] | None = None, *, script_dir: Path | None = None) -> int:
    """Entry point; returns the process exit code (0 ok, 1 some images failed, 2 usage or setup error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args, script_dir or PACK_DIR)
    except (CommandLineError, UnsupportedCheckpointError, MissingDependencyError, WeightsUnavailableError,
            FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, script_dir: Path) -> int:
    try:
        check_strength(args.strength)
        # The model's size replaces the crop size once it is loaded; every other setting is checked now.
        detect_settings = pipeline.DetectSettings(
            template=args.template, score_threshold=args.threshold, order=args.order, index=args.face_index,
            max_faces=args.max_faces,
        )
        paste_settings = PasteSettings(mask_shape=args.mask_shape, erosion=args.erosion, feather=args.feather,
                                       strength=1.0, color_correction=not args.no_color_correction)
    except ValueError as exc:
        raise CommandLineError(_with_option_names(str(exc))) from exc
    jobs = plan_jobs(args.input, args.output)
    roots = model_roots(script_dir)
    model_path = args.model or default_model(roots)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    runner = GpenRunner.load(model_path, precision=args.precision, compile=args.compile, **_half_support(device))
    if not runner.is_onnx:
        runner.module.to(device)
    detect_settings = dataclasses.replace(detect_settings, crop_size=runner.size)
    logger.info("%r from %s on %s", runner, model_path, device)

    def restore(crops: torch.Tensor, on_face) -> torch.Tensor:
        return runner.restore(crops, device=device, strength=args.strength, on_face=on_face)

    progress = ProgressLine(len(jobs))
    failures: list[str] = []
    if args.aligned:
        for job in jobs:
            read = _read_or_record(job.source, failures)
            if read is not None:
                image, depth = read
                try:
                    restored = restore(frames_to_image([image]), progress.face)
                except CropShapeError as exc:  # not a square crop: this image fails, the others go on
                    failures.append(f"{job.source}: {exc}")
                else:
                    write_image(job.target, restored[0].numpy(), depth)
            progress.image_done()
    else:
        detector_dir = args.detector_dir or default_detector_dir(roots, model_path, args.detector)
        detector = load_detector(args.detector, detector_dir, device=device)
        parser = None
        if args.mask_shape == "parsing":
            parser = load_face_parser(args.detector_dir or default_detector_dir(roots, model_path, "parsenet"),
                                      device=device)
        for job in jobs:
            read = _read_or_record(job.source, failures)
            if read is not None:
                image, depth = read
                out, _mask, faces = pipeline.restore_frames(
                    frames_to_image([image]), detector, lambda crops, _on_face: restore(crops, progress.face),
                    detect_settings, paste_settings, parser=parser,
                )
                if not len(faces):
                    logger.warning("No face found in %s; written unchanged", job.source)
                write_image(job.target, out[0].numpy(), depth)
            progress.image_done()
    progress.finish()
    if failures:
        print(f"error: {len(failures)} of {len(jobs)} image(s) could not be restored:", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    return 0


# The settings' own names in their checks' messages, and the options that set them.
OPTION_NAMES = {"score_threshold": "--threshold", "Face index": "--face-index", "max_faces": "--max-faces", "face_index": "--face-index",
                "strength": "--strength", "erosion": "--erosion", "feather": "--feather"}


def _with_option_names(message: str) -> str:
    for name, option in OPTION_NAMES.items():
        if message.startswith(name):
            return option + message[len(name):]
    return message


def _half_support(device: torch.device) -> dict[str, bool]:
    """What `device` runs well besides fp32, for precision "auto": fp16 on CUDA GPUs with tensor cores (compute
    capability 7.0 and later), bf16 where CUDA supports it; fp32 elsewhere (emulated half precision on CPUs is
    many times slower)."""
    if device.type != "cuda":
        return {"fp16_ok": False, "bf16_ok": False}
    return {"fp16_ok": torch.cuda.get_device_capability(device) >= (7, 0), "bf16_ok": torch.cuda.is_bf16_supported()}


def plan_jobs(inputs: Sequence[Path], output: Path) -> list[Job]:
    """Input images and where each result goes. Folders are searched recursively and mirrored under `output`;
    results are PNG unless `output` is a single file name with an image extension."""
    sources: list[tuple[Path, Path]] = []  # (image, path relative to the output folder)
    for item in inputs:
        if item.is_dir():
            images = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise CommandLineError(f"--input {item}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
            sources.extend((p, p.relative_to(item)) for p in images)
        elif item.is_file():
            if item.suffix.lower() not in IMAGE_SUFFIXES:
                raise CommandLineError(f"--input {item}: not an image file (expected {', '.join(IMAGE_SUFFIXES)})")
            sources.append((item, Path(item.name)))
        else:
            raise CommandLineError(f"--input {item}: no such file or folder")
    if len(sources) == 1 and output.suffix.lower() in IMAGE_SUFFIXES:
        return [Job(sources[0][0], output)]
    if output.suffix.lower() in IMAGE_SUFFIXES:
        raise CommandLineError(
            f"--output {output} is a file name but there are {len(sources)} input images; give a folder instead"
        )
    jobs = [Job(source, (output / rel).with_suffix(DEFAULT_OUTPUT_SUFFIX)) for source, rel in sources]
    targets = [job.target for job in jobs]
    clashes = sorted({str(t) for t in targets if targets.count(t) > 1})
    if clashes:
        raise CommandLineError(f"Several inputs would be written to the same output: {', '.join(clashes)}; "
                               "rename them or run them separately")
    return jobs


def default_model(roots: Sequence[Path]) -> Path:
    """The preferred GPEN file (GPEN-BFR-2048 first) in the `facerestore_models` folder of `roots`."""
    folders = [root / RESTORE_FOLDER for root in roots]
    models = find_models(folders)
    if not models:
        raise CommandLineError(
            f"No GPEN model given (--model) and none found in {', '.join(str(f) for f in folders)}. "
            f"{DOWNLOAD_HINT}. Put it in one of those folders or pass --model PATH."
        )
    by_name = {str(p): p for p in models}
    return by_name[preferred_model(by_name)]


def default_detector_dir(roots: Sequence[Path], model_path: Path, weights: str) -> Path:
    """Where detector (or parser) weights `weights` are: a `facedetection` folder holding the file, beside the
    model's folder when that is a `facerestore_models` folder (a ComfyUI layout), else under `roots`. When none
    holds it, the first of those, where it is then downloaded."""
    model_folder = model_path.resolve().parent
    candidates = [root / DETECTION_FOLDER for root in roots]
    if model_folder.name == RESTORE_FOLDER:
        candidates.insert(0, model_folder.parent / DETECTION_FOLDER)
    return folder_with_file(KNOWN_WEIGHTS[weights].filename, candidates) or candidates[0]


def read_image(path: Path) -> tuple[np.ndarray, int]:
    """An image file as float32 `[H, W, C]` RGB(A) or grey in [0, 1], upright (EXIF orientation applied), and
    the bit depth to write results in: 16 for 16-bit and floating-point files, else 8."""
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise CommandLineError(f"{path}: OpenCV cannot read this file as an image")
    if data.ndim == 2 or data.shape[2] != 4:
        # IMREAD_UNCHANGED ignores EXIF orientation (phone photos would come out sideways); without an alpha
        # channel to keep, read again the way that applies it.
        data = cv2.imread(str(path), cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
    depth = 16 if data.dtype in (np.uint16, np.float32, np.float64) else 8
    scale = {np.dtype(np.uint16): 65535.0, np.dtype(np.uint8): 255.0}.get(data.dtype, 1.0)
    if data.ndim == 2:
        data = data[:, :, None]
    elif data.shape[2] == 3:
        data = cv2.cvtColor(data, cv2.COLOR_BGR2RGB)  # OpenCV boundary: BGR on disk, RGB inside
    elif data.shape[2] == 4:
        data = cv2.cvtColor(data, cv2.COLOR_BGRA2RGBA)
    return (data.astype(np.float32) / scale).clip(0, 1), depth


def write_image(path: Path, image: np.ndarray, depth: int = 8) -> None:
    """Write float `[H, W, C]` RGB(A) or grey in [0, 1], creating folders as needed: 16-bit when `depth` is 16
    and the format has it (PNG, TIFF), else 8-bit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if depth == 16 and path.suffix.lower() in SIXTEEN_BIT_SUFFIXES:
        data = np.clip(np.rint(image * 65535.0), 0, 65535).astype(np.uint16)
    else:
        data = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    if data.shape[2] == 3:
        data = cv2.cvtColor(data, cv2.COLOR_RGB2BGR)
    elif data.shape[2] == 4:
        data = cv2.cvtColor(data, cv2.COLOR_RGBA2BGRA)
    if not cv2.imwrite(str(path), data):
        raise CommandLineError(f"{path}: OpenCV could not write this file (unsupported extension or no access)")


def _read_or_record(path: Path, failures: list[str]) -> tuple[np.ndarray, int] | None:
    try:
        return read_image(path)
    except CommandLineError as exc:
        failures.append(str(exc))
        return None


class ProgressLine:
    """A one-line progress bar on stderr (images done, faces restored, elapsed time)."""

    WIDTH = 30

    def __init__(self, images: int) -> None:
        self.images, self.done, self.faces = images, 0, 0
        self.start = time.monotonic()
        self.interactive = sys.stderr.isatty()

    def face(self) -> None:
        self.faces += 1
        self._draw()

    def image_done(self) -> None:
        self.done += 1
        self._draw(force=True)

    def finish(self) -> None:
        if self.interactive:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def _draw(self, force: bool = False) -> None:
        filled = round(self.WIDTH * self.done / max(self.images, 1))
        line = (f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {self.done}/{self.images} images, "
                f"{self.faces} faces, {time.monotonic() - self.start:.1f}s")
        if self.interactive:
            sys.stderr.write("\r" + line)
        elif force:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
