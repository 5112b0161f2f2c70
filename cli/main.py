"""The command line's options and entry point: restore every face in image files, folders, videos and frame
sequences, through the same pipeline as the ComfyUI nodes.

Run it with the script at the pack's root: `python restore_faces.py --input photo.jpg --output out/`. Each kind of
job runs in `restore`; videos and `--sequence` folders go through `frame_jobs` (faces tracked and smoothed over all
frames, as in the nodes).

torch and OpenCV take seconds to import, so this module and the ones it imports at the top (parsing and planning
the command line) need neither: `--help` and a mistyped option or path are answered at once, and the pipeline's
modules are imported by the functions that use them, once there is work to do.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..face_utils.choices import DEFAULT_DAMAGE_FEATHER, DEFAULT_DAMAGE_GROW, DEFAULT_EROSION, DEFAULT_FEATHER
from ..face_utils.choices import DEFAULT_MAX_GAP, DEFAULT_TEMPORAL_CONSISTENCY, DETECTORS, MASK_SHAPES, ORDERS
from ..face_utils.choices import TEMPLATES
from ..gpen_arch.choices import DEFAULT_STRENGTH, LUMINANCES, PRECISIONS, TASKS
from ..model_files.errors import MissingDependencyError, UnsupportedCheckpointError
from ..model_files.folders import DETECTION_FOLDER, DOWNLOAD_HINT, GPEN_EXTENSIONS, RESTORE_FOLDER, find_models
from ..model_files.folders import folder_with_file, preferred_model
from .frame_jobs import SequenceJob, VideoJob
from .jobs import CommandLineError, Job, plan_all
from .progress import ProgressLine
from .video_files import VIDEO_SUFFIXES, import_av

if TYPE_CHECKING:
    import numpy as np
    import torch

logger = logging.getLogger(__name__)

PACK_DIR = Path(__file__).resolve().parents[1]  # the pack's folder: custom_nodes/<pack> inside a ComfyUI

DEVICE_NAMES = "auto, cpu, cuda, cuda:N (N counted from 0) or mps"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every default; options whose default is found at run time (None) say it in their own text."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


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
        description="Restore every face in images and videos with GPEN (the same pipeline as the ComfyUI nodes). "
        "The face size (256, 512, 1024 or 2048) is read from the model's weights, never from its file name.",
        epilog="Examples: python restore_faces.py --input photos/ --output restored/ "
        "--model models/facerestore_models/GPEN-BFR-2048.pth; python restore_faces.py --input clip.mp4 "
        "--output restored/ --faces-json faces.json",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--input", "-i", nargs="+", required=True, type=Path,
                        help=f"image files, video files ({', '.join(VIDEO_SUFFIXES)}; needs PyAV: pip install av) "
                        "and/or folders (searched recursively for images)")
    parser.add_argument("--output", "-o", type=Path, default=Path("restored"),
                        help="output folder (a video is written there as <name>.mp4); a file name if there is "
                        "exactly one input image or video")
    parser.add_argument("--sequence", action="store_true",
                        help="the one --input folder holds the frames of one video (played in name order, frame2 "
                        "before frame10): faces are tracked and smoothed over them as in a video file")
    parser.add_argument("--faces-json", type=Path, metavar="PATH",
                        help="also write the faces found to this JSON file: one entry per frame (an image is frame "
                        "0) with each face's track id, score, box, the 5 landmarks alignment used and the "
                        "image-to-crop affine")
    parser.add_argument("--no-smoothing", action="store_true",
                        help="videos and --sequence: align each frame on its own landmarks (no temporal smoothing)")
    parser.add_argument("--max-gap", type=int, default=DEFAULT_MAX_GAP,
                        help="videos and --sequence: frames a face may go undetected and keep its track (the gap "
                        "is filled in)")
    parser.add_argument("--temporal-consistency", action=argparse.BooleanOptionalAction,
                        default=DEFAULT_TEMPORAL_CONSISTENCY,
                        help="videos and --sequence: steady the detail GPEN invents, averaging each restored face "
                        "with the same person's in the neighbouring frames where their inputs agree (--no-... "
                        "restores each frame on its own)")
    parser.add_argument("--detection-size", type=int, default=0,
                        help="long side in pixels of the copy the detector sees; 0 = full resolution, in tiles "
                        "above 1920x1088 (finds small faces); 1024 is faster on large images")
    parser.add_argument("--model", "-m", type=Path, nargs="+", metavar="PATH",
                        help="GPEN weights (.pth/.pt/.safetensors/.onnx; the size is read from the weights); "
                        "default: the largest GPEN found in ./models/facerestore_models, the ComfyUI this pack is "
                        "in, or ~/ComfyUI/models. Several run one after another on each face, e.g. GPEN-BFR-2048 "
                        "then GPEN-Colorization-1024 to restore an old portrait and colourise it")
    parser.add_argument("--task", nargs="+", choices=("auto", *TASKS), default=["auto"],
                        help="what each --model does (one per model): restore, colourise or repair; auto guesses "
                        "from the file name ('color'/'colour' colourises, 'inpaint'/'repair' repairs)")
    parser.add_argument("--mask", type=Path, metavar="PATH",
                        help="for a repairing model (GPEN-Inpainting): where the picture is damaged, an image the "
                        "size of the input(s), white = damaged; one mask for all inputs and frames. Only the damage "
                        "is changed")
    parser.add_argument("--damage-grow", type=float, default=DEFAULT_DAMAGE_GROW,
                        help="with --mask: also paste this much around the damage, as a fraction of the face")
    parser.add_argument("--damage-feather", type=float, default=DEFAULT_DAMAGE_FEATHER,
                        help="with --mask: width of the soft edge beyond it, as a fraction of the face")
    parser.add_argument("--background-upscale", type=Path, metavar="PATH",
                        help="upstream GPEN's selfie mode: enlarge the whole photo with this upscale model (e.g. "
                        "upstream's realesrnet_x2.pth; any model spandrel reads) and paste the restored faces onto "
                        "it. Photos only; needs spandrel (pip install spandrel)")
    parser.add_argument("--luminance", choices=LUMINANCES, default="keep",
                        help="colourised faces: keep their own luminance (they gain colour, never lose detail) or "
                        "take the model's whole output")
    parser.add_argument("--aligned", action="store_true",
                        help="inputs are already aligned face crops: restore each whole image, no detection; each "
                        "is written at the model's size (for example 512x512 for GPEN-BFR-512)")
    parser.add_argument("--strength", type=float, default=DEFAULT_STRENGTH,
                        help="blend of restored and original face, 0..1 (0.8 is upstream GPEN's)")
    parser.add_argument("--detector", choices=DETECTORS, default=DETECTORS[0], help="face detector")
    parser.add_argument("--detector-dir", type=Path,
                        help="folder with detector/parser weights (downloaded there if missing); default: a "
                        "facedetection folder next to the model folder")
    parser.add_argument("--threshold", type=float, default=0.9, help="detection score threshold")
    parser.add_argument("--order", choices=ORDERS, default="largest", help="face order for --face-index")
    parser.add_argument("--face-index", default="all", help="'all' or positions such as '0' or '0,2'")
    parser.add_argument("--max-faces", type=int, default=0, help="at most this many faces per image (0 = all)")
    parser.add_argument("--template", choices=TEMPLATES, default="gpen", help="alignment template")
    parser.add_argument("--mask-shape", choices=MASK_SHAPES, default="ellipse", help="paste mask shape")
    parser.add_argument("--erosion", type=float, default=DEFAULT_EROSION,
                        help="mask erosion, fraction of the crop")
    parser.add_argument("--feather", type=float, default=DEFAULT_FEATHER,
                        help="mask feather, fraction of the crop")
    parser.add_argument("--no-color-correction", action="store_true", help="do not match the original colours")
    parser.add_argument("--device", default="auto", help=f"{DEVICE_NAMES}; auto is CUDA if available, else cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: fp16 (or bf16) on CUDA GPUs that run it well, bf16 on CPUs that compute it "
                        "natively (AVX-512 BF16, AMX), fp32 elsewhere")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the network (slow first image, faster after; not for .onnx)")
    parser.add_argument("--verbose", "-v", action="store_true", help="log each step")
    return parser


def main(argv: Sequence[str] | None = None, *, script_dir: Path | None = None) -> int:
    """Entry point; returns the process exit code (0 ok, 1 some images failed, 2 usage or setup error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args, script_dir or PACK_DIR)
    except CommandLineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, script_dir: Path) -> int:
    """Plan the jobs, then restore them. The setup errors a user fixes (a model or weights file missing or not
    GPEN's, a library not installed) become `CommandLineError`s."""
    tasks = model_tasks(args)  # the options first, then the paths, all before any heavy import
    if args.background_upscale is not None:
        if args.aligned or args.mask is not None or args.sequence:
            raise CommandLineError("--background-upscale enlarges whole photos: it does not go with --aligned, "
                                   "--sequence or --mask")
        if not args.background_upscale.is_file():
            raise CommandLineError(f"--background-upscale {args.background_upscale}: no such file")
    if args.mask is not None and args.aligned:
        raise CommandLineError("--mask marks damage in whole pictures; --aligned crops have no picture to place it "
                               "in: leave out --aligned")
    jobs, sequences = plan_all(args)  # a wrong path is reported at once
    if args.background_upscale is not None and sequences:
        raise CommandLineError("--background-upscale enlarges photos; videos and --sequence folders are not "
                               "upscaled: give it photos only")
    # Imports torch: deferred until the paths are known to be good.
    from ..face_utils.weights import WeightsUnavailableError

    try:
        return _restore(args, tasks, jobs, sequences, script_dir)
    except (UnsupportedCheckpointError, MissingDependencyError, WeightsUnavailableError, FileNotFoundError) as exc:
        raise CommandLineError(str(exc)) from exc


def read_damage(path: Path) -> np.ndarray:
    """The --mask file as a damage mask [H, W] in 0..1 (its luma; white = damaged)."""
    from ..face_utils.images import convert_channels
    from .image_files import ImageFileError, read_image

    try:
        image, _depth = read_image(path)
    except ImageFileError as exc:
        raise CommandLineError(f"--mask: {exc}") from exc
    return convert_channels(image, 1)[:, :, 0]


def model_tasks(args: argparse.Namespace) -> list[str]:
    """The --task of each --model (one --task auto stands for all)."""
    models = len(args.model) if args.model else 1
    tasks = args.task * models if args.task == ["auto"] else args.task
    if len(tasks) != models:
        raise CommandLineError(f"--task names {len(tasks)} task(s) for {models} --model file(s): give one per "
                               "model, in the same order, or leave it out (auto)")
    return tasks


def _restore(args: argparse.Namespace, tasks: list[str], jobs: list[Job],
             sequences: list[VideoJob | SequenceJob], script_dir: Path) -> int:
    # The pipeline and the model need torch and OpenCV: imported only now that the command line has been checked.
    from ..face_utils.face_set import DetectSettings
    from ..face_utils.paste import PasteSettings
    from ..face_utils.repair import RepairSettings
    from ..gpen_arch.runner import check_strength
    from . import restore

    try:
        check_strength(args.strength)
        # The model's size replaces the crop size once it is loaded; every other setting is checked now.
        detect_settings = DetectSettings(
            template=args.template, score_threshold=args.threshold, order=args.order, index=args.face_index,
            max_faces=args.max_faces, smoothing=0.0 if args.no_smoothing else 1.0, max_gap=args.max_gap,
            detection_size=args.detection_size,
        )
        paste_settings = PasteSettings(mask_shape=args.mask_shape, erosion=args.erosion, feather=args.feather,
                                       color_correction=not args.no_color_correction)
        repair_settings = RepairSettings(grow=args.damage_grow, feather=args.damage_feather)
    except ValueError as exc:
        raise CommandLineError(_with_option_names(str(exc))) from exc
    device = resolve_device(args.device)
    if any(isinstance(job, VideoJob) for job in sequences):
        import_av()  # a missing PyAV is a setup error, found before anything is loaded
    roots = model_roots(script_dir)
    model_paths = args.model or [default_model(roots)]
    for model_path in model_paths:
        check_model_path(model_path)
    # Where gpen_arch would name ComfyUI's folder: the user gave a file, not a folder.
    model_advice = f"Expected a GPEN-BFR model file ({', '.join(GPEN_EXTENSIONS)}). {DOWNLOAD_HINT}"
    progress = ProgressLine(len(jobs))
    damage = None if args.mask is None else read_damage(args.mask)
    session = restore.Session.start(args, list(zip(model_paths, tasks)), device, model_advice, detect_settings,
                                    paste_settings, progress, damage, repair_settings)
    if args.background_upscale is not None:
        from .background import Upscaler

        session.upscaler = Upscaler(args.background_upscale, device)
        progress.report(f"{args.background_upscale.name}: the background is upscaled {session.upscaler.scale}x")
    if args.aligned:
        failures = restore.restore_aligned(session, jobs)
    else:
        def weights_dir(weights: str) -> Path:
            return args.detector_dir or default_detector_dir(roots, model_paths[0], weights)

        faces = restore.Faces.load(session, args.detector, weights_dir(args.detector),
                                   weights_dir("parsenet") if args.mask_shape == "parsing" else None)
        found: list[dict] = []  # the --faces-json entries
        failures = restore.restore_photos(session, faces, jobs, found)
        failures += restore.restore_sequences(session, faces, sequences, found)
        if args.faces_json is not None:
            failures += restore.write_faces(args.faces_json, found, progress)
    progress.finish()
    if failures:
        noun = "input(s)" if sequences else "image(s)"
        print(f"error: {len(failures)} of {len(jobs) + len(sequences)} {noun} could not be restored; the others were "
              "written:", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    return 0


# The settings' own names in their checks' messages, and the options that set them.
OPTION_NAMES = {"score_threshold": "--threshold", "Face index": "--face-index", "max_faces": "--max-faces",
                "strength": "--strength", "erosion": "--erosion", "feather": "--feather",
                "max_gap": "--max-gap", "detection_size": "--detection-size", "damage_grow": "--damage-grow",
                "damage_feather": "--damage-feather"}


def _with_option_names(message: str) -> str:
    for name, option in OPTION_NAMES.items():
        if message.startswith(name):
            return option + message[len(name):]
    return message


def resolve_device(name: str) -> torch.device:
    """The torch device `--device` names, checked before anything is loaded: "auto" is CUDA when torch sees a
    GPU, else the CPU; an unknown name or a device this machine lacks is a `CommandLineError`."""
    import torch  # deferred: see the module's docstring

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise CommandLineError(f"--device {name}: not a device name; expected {DEVICE_NAMES}") from exc
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            build = "built without CUDA" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise CommandLineError(f"--device {name}: torch {torch.__version__} ({build}) finds no CUDA GPU on this "
                                   "machine; use --device cpu, or auto to use a GPU only when there is one")
        if device.index is not None and device.index >= count:
            raise CommandLineError(f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0 to "
                                   f"cuda:{count - 1}; pick one of those")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise CommandLineError(f"--device {name}: Apple's Metal (MPS) is not available on this machine; use "
                                   "--device cpu or auto")
    elif device.type != "cpu":
        raise CommandLineError(f"--device {name}: {device.type} is not supported here; expected {DEVICE_NAMES}")
    return device


def check_model_path(path: Path) -> None:
    """Refuse a folder given as the model, listing the GPEN files inside it (a missing file is left to
    `load_gpen`, whose message says where to download one)."""
    if not path.is_dir():
        return
    inside = find_models([path])
    if inside:
        listed = ", ".join(str(p) for p in inside[:5]) + (f" and {len(inside) - 5} more" if len(inside) > 5 else "")
        raise CommandLineError(f"--model {path} is a folder, expected a GPEN model file; GPEN files in it: {listed}. "
                               "Pass one of them as --model")
    raise CommandLineError(f"--model {path} is a folder, expected a GPEN model file, and it holds no "
                           f"{', '.join(GPEN_EXTENSIONS)} file. {DOWNLOAD_HINT}")


def default_model(roots: Sequence[Path]) -> Path:
    """The preferred GPEN file (GPEN-BFR-2048 first) in the `facerestore_models` folder of `roots`."""
    from ..gpen_arch.loader import model_size  # deferred: imports torch

    folders = [root / RESTORE_FOLDER for root in roots]
    models = find_models(folders)
    if not models:
        raise CommandLineError(
            f"No GPEN model given (--model) and none found in {', '.join(str(f) for f in folders)}. "
            f"{DOWNLOAD_HINT}. Put it in one of those folders or pass --model PATH."
        )
    by_name = {str(p): p for p in models}
    return by_name[preferred_model(by_name, model_size)]


def default_detector_dir(roots: Sequence[Path], model_path: Path, weights: str) -> Path:
    """Where detector (or parser) weights `weights` are: a `facedetection` folder holding the file, beside the
    model's folder when that is a `facerestore_models` folder (a ComfyUI layout), else under `roots`. When none
    holds it, the first of those, where it is then downloaded."""
    from ..face_utils.weights import KNOWN_WEIGHTS  # deferred: imports torch

    model_folder = model_path.resolve().parent
    candidates = [root / DETECTION_FOLDER for root in roots]
    if model_folder.name == RESTORE_FOLDER:
        candidates.insert(0, model_folder.parent / DETECTION_FOLDER)
    return folder_with_file(KNOWN_WEIGHTS[weights].filename, candidates) or candidates[0]
