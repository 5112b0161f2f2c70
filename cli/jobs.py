"""What the command line will read and write, planned and checked before any model is loaded: image jobs (one
file in, one file out), video jobs and `--sequence` folders (many frames, tracked together), and the
`--faces-json` file."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .frame_jobs import SequenceJob, VideoJob, frame_order_key
from .image_files import IMAGE_SUFFIXES, output_problem
from .video_files import DEFAULT_VIDEO_SUFFIX, VIDEO_SUFFIXES, is_video

DEFAULT_OUTPUT_SUFFIX = ".png"  # lossless, so restoring never adds compression artefacts


class CommandLineError(Exception):
    """A problem the user can fix (missing model, bad path); printed without a traceback."""


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


def plan_all(args: argparse.Namespace) -> tuple[list[Job], list[VideoJob | SequenceJob]]:
    """The image jobs and the frame jobs (videos, or the one `--sequence` folder) of the command line `args`.

    `--faces-json` records the frames of one input, or the images of a run of images only (one entry each, frame
    0 of its own file, track ids restarting in each: independent photos are one-frame shots, as in the nodes);
    with several videos, or videos and images mixed, frame numbers would be ambiguous, so it is refused."""
    inputs, output = list(args.input), args.output
    videos = [path for path in inputs if is_video(path) and not path.is_dir()]
    if args.aligned and (args.sequence or args.faces_json is not None or videos):
        raise CommandLineError("--aligned restores whole face crops without finding faces, so it takes image files "
                               "only: no video, --sequence or --faces-json; drop --aligned to find the faces")
    if args.sequence:
        images, frame_jobs = [], [plan_sequence(inputs, output)]
    else:
        others = [path for path in inputs if path not in videos]
        if others and output.suffix.lower() in VIDEO_SUFFIXES:
            raise CommandLineError(f"--output {output} is a video file name but the inputs include images; give a "
                                   "folder, or run the images separately")
        frame_jobs = plan_videos(videos, output, alone=not others) if videos else []
        images = plan_jobs(others, output) if others else []
    if args.faces_json is not None:
        if len(frame_jobs) > 1 or (frame_jobs and images):
            raise CommandLineError(
                f"--faces-json records one input's frames, but there are {len(frame_jobs)} video(s) and "
                f"{len(images)} image(s); run once per video (or give only images: one entry each)"
            )
        problem = output_problem(args.faces_json)
        if problem is not None:
            raise CommandLineError(f"--faces-json {args.faces_json}: {problem}; remove what is in the way or choose "
                                   "another --faces-json")
    return images, frame_jobs


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
                raise CommandLineError(f"--input {item}: not an image file (expected {', '.join(IMAGE_SUFFIXES)}) "
                                       f"nor a video ({', '.join(VIDEO_SUFFIXES)})")
            sources.append((item, Path(item.name)))
        else:
            raise CommandLineError(f"--input {item}: no such file or folder")
    if len(sources) == 1 and output.suffix.lower() in IMAGE_SUFFIXES:
        jobs = [Job(sources[0][0], output)]
        check_outputs(jobs, output)
        return jobs
    if output.suffix.lower() in IMAGE_SUFFIXES:
        raise CommandLineError(
            f"--output {output} is a file name but there are {len(sources)} input images; give a folder instead"
        )
    jobs = [Job(source, (output / rel).with_suffix(DEFAULT_OUTPUT_SUFFIX)) for source, rel in sources]
    check_clashes([job.target for job in jobs])
    check_outputs(jobs, output)
    return jobs


def plan_videos(videos: Sequence[Path], output: Path, *, alone: bool) -> list[VideoJob]:
    """Where each video's result goes: `output` itself when it is a video file name (one video, `alone` with no
    other input), else `<output>/<name>.mp4`."""
    for video in videos:
        if not video.is_file():
            raise CommandLineError(f"--input {video}: no such file or folder")
    suffix = output.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        raise CommandLineError(f"--output {output} is an image file name but --input {videos[0]} is a video; give a "
                               f"video file name ({', '.join(VIDEO_SUFFIXES)}) or a folder")
    if suffix in VIDEO_SUFFIXES:
        if len(videos) != 1 or not alone:
            raise CommandLineError(f"--output {output} is a file name but there are several inputs; give a folder "
                                   "instead")
        jobs = [VideoJob(videos[0], output)]
    else:
        jobs = [VideoJob(video, output / (video.stem + DEFAULT_VIDEO_SUFFIX)) for video in videos]
    check_clashes([job.target for job in jobs])
    check_outputs(jobs, output)
    return jobs


def plan_sequence(inputs: Sequence[Path], output: Path) -> SequenceJob:
    """The frames of the one `--sequence` folder in playing order (`frame_order_key`) and their results, mirrored
    under the `output` folder as PNG."""
    if len(inputs) != 1 or not inputs[0].is_dir():
        given = ", ".join(str(p) for p in inputs)
        raise CommandLineError(f"--sequence takes one folder holding the frames of one video, got --input {given}; "
                               "run once per sequence")
    if output.suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
        raise CommandLineError(f"--output {output} is a file name, but --sequence writes one image per frame; give "
                               "a folder")
    folder = inputs[0]
    jobs = sorted(plan_jobs([folder], output), key=lambda job: frame_order_key(job.source.relative_to(folder)))
    return SequenceJob(folder, output, tuple(job.source for job in jobs), tuple(job.target for job in jobs))


def check_clashes(targets: Sequence[Path]) -> None:
    clashes = sorted({str(t) for t in targets if targets.count(t) > 1})
    if clashes:
        raise CommandLineError(f"Several inputs would be written to the same output: {', '.join(clashes)}; "
                               "rename them or run them separately")


def check_outputs(jobs: Sequence[Job | VideoJob], output: Path) -> None:
    """Refuse, before any work, outputs that cannot be written: a target that is a folder, a file where a folder
    must be created, a folder without write permission."""
    for job in jobs:
        problem = output_problem(job.target)
        if problem is not None:
            raise CommandLineError(f"--output {output}: {problem}; remove what is in the way or choose another "
                                   "--output")
