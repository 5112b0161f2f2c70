"""The command line's work, once its options are checked: the model and detector are loaded once (`Session`),
then each kind of job runs through its own function: aligned crops (`restore_aligned`), photos (`restore_photos`),
videos and `--sequence` folders (`restore_sequences`). Each returns the failures of its jobs (one line each); a
failing input never stops the others.

Imported by `main` only once there is work to do: everything here needs torch and OpenCV.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..face_utils import pipeline
from ..face_utils.choices import DEFAULT_TEMPORAL_CONSISTENCY
from ..face_utils.face_set import DetectSettings, FaceInputError, FaceSet
from ..face_utils.conversion import frames_to_image
from ..face_utils.detection import FaceDetector
from ..face_utils.detectors import load_detector
from ..face_utils.parsing import FaceParser, load_face_parser
from ..face_utils.paste import PasteSettings
from ..face_utils.pixels import Pixels, choose_pixels
from ..face_utils.repair import RepairSettings
from ..gpen_arch.choices import guess_task
from ..gpen_arch.runner import CropShapeError, GpenRunner, cpu_has_native_bf16, resize_crops, with_luminance
from . import frame_jobs
from .frame_jobs import SequenceJob, VideoJob, faces_entries, write_faces_json
from .image_files import ImageFileError, read_image, write_image
from .jobs import CommandLineError, Job
from .background import Upscaler
from .progress import ProgressLine
from .video_files import VideoFileError

logger = logging.getLogger(__name__)

@dataclass
class Session:
    """What every job of one run shares: the models on their device (applied in order to each face), the
    settings, the progress line."""

    runners: list[GpenRunner]
    device: torch.device
    strength: float
    luminance: str
    detect_settings: DetectSettings
    paste_settings: PasteSettings
    progress: ProgressLine
    damage: np.ndarray | None = None  # --mask: where every input is damaged (a repairing model's input)
    repair_settings: RepairSettings = RepairSettings()
    upscaler: Upscaler | None = None  # --background-upscale: the canvas photos' faces are pasted onto
    temporal_consistency: bool = DEFAULT_TEMPORAL_CONSISTENCY  # for videos and --sequence

    @classmethod
    def start(cls, args: argparse.Namespace, models: list[tuple[Path, str]], device: torch.device,
              model_advice: str, detect_settings: DetectSettings, paste_settings: PasteSettings,
              progress: ProgressLine, damage: np.ndarray | None = None,
              repair_settings: RepairSettings = RepairSettings()) -> Session:
        tasks = [guess_task(path.name) if task == "auto" else task for path, task in models]
        # Checked before any model loads: the damage is painted white in the crops the first model gets.
        if damage is not None and tasks[0] != "repair":
            raise CommandLineError(f"--mask is the damage a repairing model (GPEN-Inpainting) repairs, but the first "
                                   f"--model, {models[0][0].name}, is to {tasks[0]}: put the repairing model first "
                                   "(or set --task)")
        if damage is None and "repair" in tasks:
            raise CommandLineError("a repairing --model repairs the damage it is shown: give it with --mask PATH (an "
                                   "image the size of the input, white = damaged)")
        runners = []
        for (model_path, task), chosen in zip(models, tasks):
            runner = GpenRunner.load(model_path, precision=args.precision, compile=args.compile,
                                     where_to_get=model_advice, task=chosen, **_half_support(device))
            if not runner.is_onnx:
                runner.module.to(device)
            logger.info("%r from %s on %s", runner, model_path, device)
            # The task is named unless it is the usual one, guessed: restoring.
            job = "" if (task, chosen) == ("auto", "restore") else f" to {chosen}" + (
                " (guessed from the file name; --task to change)," if task == "auto" else ",")
            progress.report(f"{model_path.name}: {runner.label}{job} in {runner.precision} on {device}")
            runners.append(runner)
        # The first model's size replaces the crop size now that it is known: later ones work at that size.
        detect_settings = dataclasses.replace(detect_settings, crop_size=runners[0].size)
        if any(runner.task == "colourise" for runner in runners):
            # The picture's own luminance is kept only when no model before changed it (a restoration's detail).
            keep = args.luminance == "keep" and all(runner.task == "colourise" for runner in runners)
            paste_settings = paste_settings.for_colourised(keep_luminance=keep)
        return cls(runners, device, args.strength, args.luminance, detect_settings, paste_settings, progress, damage,
                   repair_settings, temporal_consistency=args.temporal_consistency)

    def repair(self) -> dict:
        """The pipeline's repair arguments: the --mask for every frame (none without one)."""
        if self.damage is None:
            return {}
        return {"damage": lambda _frame_index: self.damage, "repair": self.repair_settings}

    def restore(self, crops: torch.Tensor, on_face: Callable[[], None]) -> torch.Tensor:
        """The models in turn on crops `[n, S, S, C]`, the result at the first model's output size on the crops'
        device; counts each face on the progress line."""

        def face_done() -> None:
            on_face()
            self.progress.face()

        for position, runner in enumerate(self.runners):
            last = position == len(self.runners) - 1
            restored = runner.restore(crops, device=self.device, strength=self.strength,
                                      on_face=face_done if last else None, output_device=crops.device,
                                      luminance=self.luminance)
            if position and restored.shape[1] != crops.shape[1]:
                # A later model of another size: back to the run's crop size, a colourised face on the luminance
                # of the face it was given (upstream's colouriser does the same when sizes differ).
                restored = resize_crops(restored, crops.shape[1])
                if runner.task == "colourise" and self.luminance == "keep":
                    restored = with_luminance(restored, crops[..., :3])
            crops = restored
        return crops


@dataclass
class Faces:
    """The face-finding half of a session: the detector, the parser for the "parsing" mask (else None), and the
    pixel backend the paste runs on."""

    detector: FaceDetector
    parser: FaceParser | None
    pixels: Pixels

    @classmethod
    def load(cls, session: Session, detector: str, detector_dir: Path, parser_dir: Path | None) -> Faces:
        parser = None if parser_dir is None else load_face_parser(parser_dir, device=session.device)
        return cls(load_detector(detector, detector_dir, device=session.device), parser,
                   choose_pixels(session.device, session.paste_settings.interpolation))


def restore_aligned(session: Session, jobs: Sequence[Job]) -> list[str]:
    """`--aligned`: each image is one face crop, restored whole and written at the model's size."""
    failures = []
    for job in jobs:
        try:
            image, depth = read_image(job.source)
            restored = session.restore(frames_to_image([image]), lambda: None)
            write_image(job.target, restored[0].numpy(), depth)
        except (ImageFileError, CropShapeError) as exc:  # this image fails, the others go on
            failures.append(_failure(job, exc))
        else:
            side = restored.shape[1]
            session.progress.report(f"{job.target}: face crop restored at {side}x{side} (the model's size)")
        session.progress.image_done()
    return failures


def restore_photos(session: Session, faces: Faces, jobs: Sequence[Job], found: list[dict]) -> list[str]:
    """Photos: each image on its own (no tracking across images); their faces are added to `found`."""
    failures = []
    for job in jobs:
        try:
            image, depth = read_image(job.source)
            # Upstream's selfie mode: the faces found and restored on the photo, pasted onto its upscaled copy.
            canvas = None if session.upscaler is None else frames_to_image([session.upscaler.upscale(image)])
            out, _mask, restored = pipeline.restore_image(
                frames_to_image([image]), faces.detector, session.restore, session.detect_settings,
                session.paste_settings, parser=faces.parser, pixels=faces.pixels, canvas=canvas, **session.repair(),
            )
            write_image(job.target, out[0].numpy(), depth)
        except (ImageFileError, FaceInputError) as exc:
            failures.append(_failure(job, exc))
        else:
            found += faces_entries(restored, [job.source])
            count = len(restored)
            session.progress.report(f"{job.target}: {count} face{'s' if count != 1 else ''} restored" if count else
                                    f"{job.target}: no face found, written unchanged")
        session.progress.image_done()
    return failures


def restore_sequences(session: Session, faces: Faces, jobs: Sequence[VideoJob | SequenceJob],
                      found: list[dict]) -> list[str]:
    """Videos and `--sequence` folders: faces tracked and smoothed over all frames; their faces are added to
    `found`."""
    progress = session.progress

    def run_frames(frames: pipeline.FrameSource, on_frame: pipeline.FrameSink) -> FaceSet:
        progress.begin(len(frames), "frames")
        return pipeline.restore_frames(frames, faces.detector, session.restore, session.detect_settings,
                                       session.paste_settings, on_frame, parser=faces.parser,
                                       on_progress=progress.steps, pixels=faces.pixels, **session.repair(),
                                       temporal_consistency=session.temporal_consistency)

    failures = []
    for job in jobs:
        try:
            if isinstance(job, VideoJob):
                restored, audio = frame_jobs.restore_video(job, run_frames, progress.image_done)
                where, images, sound = job.target, None, f"; {audio}"
            else:
                restored = frame_jobs.restore_sequence(job, run_frames, progress.image_done)
                where, images, sound = job.output, job.frames, ""
        except (ImageFileError, VideoFileError, FaceInputError) as exc:
            failures.append(str(exc))
            continue
        frames, with_faces = restored.frame_count, len(restored.positions_by_frame())
        progress.report(f"{where}: {len(restored)} face(s) restored in {with_faces} of {frames} frame(s){sound}"
                        if len(restored) else f"{where}: no face found in its {frames} frame(s), written unchanged"
                        f"{sound}")
        found += faces_entries(restored, images)
    return failures


def write_faces(path: Path, found: list[dict], progress: ProgressLine) -> list[str]:
    """The `--faces-json` file; its failure, if any."""
    try:
        write_faces_json(path, found)
    except ImageFileError as exc:
        return [str(exc)]
    progress.report(f"{path}: the faces of {len(found)} frame(s) recorded")
    return []


def _half_support(device: torch.device) -> dict[str, bool]:
    """What `device` runs well besides fp32, for precision "auto": fp16 on CUDA GPUs with tensor cores (compute
    capability 7.0 and later), bf16 where CUDA supports it and on CPUs that compute it natively; fp32 elsewhere
    (emulated half precision is many times slower)."""
    if device.type == "cpu":
        return {"fp16_ok": False, "bf16_ok": cpu_has_native_bf16()}
    if device.type != "cuda":
        return {"fp16_ok": False, "bf16_ok": False}
    return {"fp16_ok": torch.cuda.get_device_capability(device) >= (7, 0), "bf16_ok": torch.cuda.is_bf16_supported()}


def _failure(job: Job, exc: Exception) -> str:
    """One line on why `job` failed; image-file errors already name their file."""
    return str(exc) if isinstance(exc, ImageFileError) else f"{job.source}: {exc}"
