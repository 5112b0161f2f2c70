"""The command line's frame-by-frame jobs: a video file, or a folder of frames taken as one sequence, restored
through `pipeline.restore_frames` (faces found and tracked over all frames first, then restored and pasted frame
by frame) with each finished frame written as it comes, and the `--faces-json` record of what was found.

Only a few frames (those paste-back's colour smoothing looks ahead over) and their crops are alive at a time,
however long the input: frames are read again for the second pass instead of being kept. PyAV is needed only for
videos (`video_files` imports it when one is opened).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .image_files import ImageFileError, read_image, write_image
from .video_files import VideoFrames, VideoWriter

if TYPE_CHECKING:  # annotations only: the command line plans its jobs with this module before it needs torch
    import numpy as np

    from ..face_utils.face_set import FaceSet


@dataclass(frozen=True)
class VideoJob:
    source: Path
    target: Path


@dataclass(frozen=True)
class SequenceJob:
    """A folder of frames (image files, in playing order) and where each result goes, under `output`."""

    folder: Path
    output: Path
    frames: tuple[Path, ...]
    targets: tuple[Path, ...]


def frame_order_key(path: Path) -> list[Any]:
    """Sort key putting `frame2.png` before `frame10.png` (numbers compared as numbers), as video tools number
    frames without always padding them."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.as_posix())]


class ImageSequence:
    """Image files as a `pipeline.FrameSource`: each iteration reads them again, in order, as float32 `[H, W, C]`
    in 0..1 (see `read_image`). The bit depth of each file (8 or 16) is kept in `depths` as it is read, so each
    result can be written in its own file's depth."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = tuple(paths)
        self.depths: list[int] = []

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[np.ndarray]:
        for index, path in enumerate(self.paths):
            image, depth = read_image(path)
            if index == len(self.depths):
                self.depths.append(depth)
            yield image


def restore_video(
    job: VideoJob, run: Callable[..., FaceSet], frames_done: Callable[[], None],
) -> tuple[FaceSet, str]:
    """Restore `job.source` into `job.target`; `run(frames, on_frame)` is `pipeline.restore_frames` with the
    model, detector and settings bound. Returns the faces and what became of the audio."""
    source = VideoFrames(job.source)
    with VideoWriter(job.target, source) as writer:
        def write(index: int, frame: np.ndarray, mask: np.ndarray | None) -> None:
            writer.write(index, frame)
            frames_done()

        faces = run(source, write)
    return faces, writer.audio


def restore_sequence(
    job: SequenceJob, run: Callable[..., FaceSet], frames_done: Callable[[], None],
) -> FaceSet:
    """Restore the frames of `job` as one shot-tracked sequence, writing each result as it is finished."""
    source = ImageSequence(job.frames)

    def write(index: int, frame: np.ndarray, mask: np.ndarray | None) -> None:
        write_image(job.targets[index], frame, source.depths[index])
        frames_done()

    return run(source, write)


def faces_entries(faces: FaceSet, images: Sequence[Path] | None = None) -> list[dict[str, Any]]:
    """One JSON-ready entry per frame of `faces`: `{"frame": i, "image": path, "faces": [...]}` (`"image"` only
    when `images`, the file of each frame, is given), each face with its track id, detector score, box
    `[x0, y0, x1, y1]`, five landmarks `[x, y]` (frame pixels, the smoothed ones alignment used) and `affine`, the
    2x3 matrix mapping frame to crop coordinates. Frames without faces have an empty list."""
    by_frame = faces.positions_by_frame()
    entries = []
    for frame_index in range(faces.frame_count):
        entry: dict[str, Any] = {"frame": frame_index}
        if images is not None:
            entry["image"] = str(images[frame_index])
        entry["faces"] = [
            {"track": face.track_id, "score": face.score, "box_xyxy": list(face.box_xyxy),
             "landmarks_xy": [list(point) for point in face.landmarks_xy],
             "affine": [list(row) for row in face.affine_crop_from_image]}
            for face in (faces.faces[p] for p in by_frame.get(frame_index, []))
        ]
        entries.append(entry)
    return entries


def write_faces_json(path: Path, entries: list[dict[str, Any]]) -> None:
    """Write `entries` as JSON to `path`, whole or not at all (written beside it, then renamed); raises
    `ImageFileError` naming the file and the system's reason."""
    temp_path = path.parent / f".restore_faces-{os.getpid()}.json.part"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            temp_path.write_text(json.dumps(entries, indent=1) + "\n", encoding="utf-8")
            os.replace(temp_path, path)
        finally:
            temp_path.unlink(missing_ok=True)
    except OSError as exc:
        raise ImageFileError(f"{path}: cannot write the faces JSON ({exc.strerror or exc})") from exc

