"""The face-restoration pipeline shared by the ComfyUI nodes and the command line (no ComfyUI imports here).

One frame loop, two ways through it. First the faces of the whole batch are found, tracked through each shot,
chosen and aligned (`detect_faces`, which gives a `FaceSet`: the `GPEN_FACES` socket); then, per frame, their
crops are cut (`Pixels.crops`), restored (a `RestoreFn` the caller binds to its model) and pasted back (a
`PasteStream`, which smooths each person's colour correction over time). The separate nodes run each step over
the whole batch (`detect_faces`, `warp_crops`, `paste_back`); `restore_frames` runs the per-frame steps frame by
frame on any `FrameSource` (an IMAGE batch, a video file), so a long video never holds more than a few frames and
their crops.

Callers own the model's placement and pass progress and interruption callbacks; results are CPU float32. The pixel
work (crop warps, masks, colour correction, blending) runs on the `pixels` backend the caller chose once with
`pixels.choose_pixels` (OpenCV on the CPU, torch on a CUDA device; OpenCV when none is given).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import numpy as np
import torch

from ..gpen_arch.runner import resize_crops
from .alignment import align_face
from .conversion import frame_to_numpy
from .detection import FaceDetector
from .face_set import DetectSettings, FaceInputError, FaceSet
from .images import picture_fingerprint, same_picture
from .paste import CanvasMismatchError, PasteSettings, canvas_scale_xy
from .paste_stream import FrameSink, PasteStream
from .pixels import OPENCV_PIXELS, Pixels
from .records import FaceRecord
from .repair import RepairSettings, check_damage, painted, paste_weight, with_damage
from .selection import select_tracks
from .temporal import TemporalConsistency
from .tracking import assign_tracks, faces_by_frame, smooth_tracks

logger = logging.getLogger(__name__)

OnProgress = Callable[[int, int], None]
"""Called as on_progress(done, total) after each face (total may grow as later frames reveal more faces)."""
CheckInterrupted = Callable[[], None]
"""Raises (ComfyUI's InterruptProcessingException, KeyboardInterrupt) when the user asked to stop."""
RestoreFn = Callable[[torch.Tensor, Callable[[], None]], torch.Tensor]
"""restore(crops [n, S, S, C] in [0, 1], on_face) -> restored crops [n, S', S', 3]; calls on_face() per face."""
DamageSource = Callable[[int], np.ndarray]
"""damage(frame_index) -> the frame's damage mask [H, W] in 0..1 (1 = damaged; see face_utils.repair); a mask of
another size than its frame raises FaceInputError."""


class FrameSource(Protocol):
    """Frames of a batch or a video, in order, that can be read more than once (faces are found in a first pass,
    restored in a second): `len()` and iteration over float32 numpy frames `[H, W, C]` in 0..1. An IMAGE tensor
    `[B, H, W, C]` serves as one directly."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[np.ndarray]: ...


def crop_bytes(count: int, size: int, channels: int) -> int:
    """Bytes of `count` float32 crops of `size`x`size` with `channels` channels."""
    return count * size * size * channels * 4


def detect_faces(
    image: torch.Tensor | FrameSource,
    detector: FaceDetector,
    settings: DetectSettings,
    *,
    check_interrupted: CheckInterrupted | None = None,
    on_frame: Callable[[], None] | None = None,
) -> FaceSet:
    """Find, track, select, smooth and align the faces of every frame of `image` (an IMAGE `[B, H, W, C]` or any
    `FrameSource`).

    Shots are runs of frames showing the same picture (by `picture_fingerprint`: a video between cuts; every
    image of a batch of unrelated photos is a shot of its own). Tracks never cross a shot boundary and their ids
    restart at 0 in every shot, so for single images `face_index` means what it always did: positions in
    `order`. Frames without faces contribute none (not an error). `on_frame()` is called after each frame."""
    found: list[list[FaceRecord]] = []
    fingerprints: list[str] = []
    for frame_index, frame in _frames(image, check_interrupted):
        found.append(detector.detect(frame, frame_index=frame_index, score_threshold=settings.score_threshold,
                                     detection_size=settings.detection_size))
        fingerprints.append(picture_fingerprint(frame))
        if on_frame is not None:
            on_frame()
    chosen: list[FaceRecord] = []
    shots = _shots(fingerprints)
    for start, stop in shots:
        in_shot = [faces if start <= t < stop else [] for t, faces in enumerate(found)]
        tracks = assign_tracks(in_shot, order=settings.order, max_gap=settings.max_gap)
        tracks = select_tracks(tracks, index=settings.index, max_faces=settings.max_faces,
                               min_face_size=settings.min_face_size)
        tracks = smooth_tracks(tracks, smoothing=settings.smoothing)
        for frame_index, frame_faces in enumerate(faces_by_frame(tracks, len(found))[start:stop], start):
            chosen += [
                dataclasses.replace(align_face(face, crop_size=settings.crop_size, template=settings.template),
                                    track_id=track_id, frame_fingerprint=fingerprints[frame_index])
                for track_id, face in frame_faces
            ]
    return FaceSet(tuple(chosen), len(found), settings.crop_size, detector.name, sum(map(len, found)),
                   tuple(shots), settings.smoothing)


def restore_crop_batch(
    crops: torch.Tensor,
    bind_restore: Callable[[int], RestoreFn],
    *,
    size: int,
    free_bytes: int | None = None,
    none_found: bool = False,
    on_face: Callable[[], None] | None = None,
    chunk: int = 16,
    channels: int = 3,
) -> tuple[torch.Tensor, int]:
    """Restore a batch of crops `[N, S', S', C]` into one preallocated `[N, size, size, channels]` batch on the
    crops' device (4 channels for repaired crops, whose alpha is their paste weight); returns it and how many crops
    were restored.

    Black crops (the detect step's placeholder when it found no face) and, with `none_found`, all crops pass
    through black and unrestored. `bind_restore(count)` gives the `RestoreFn` once it is known how many faces
    run; they run `chunk` at a time, each chunk resized to `size` at once, so crops at the model's size exist for
    one chunk only. Raises `FaceInputError` before allocating when the result would not fit in `free_bytes`."""
    needed = crop_bytes(crops.shape[0], size, channels)
    if free_bytes is not None and needed > free_bytes:
        raise FaceInputError(
            f"{crops.shape[0]} restored crop(s) at {size}x{size} need {needed / 2**30:.1f} GiB, but only "
            f"{free_bytes / 2**30:.1f} GiB is free. Keep the restored crops at their input size (output_size "
            "'input') with smaller crops, restore fewer faces, or restore in one pass (the one-node restore holds "
            "one frame's crops at a time)"
        )
    # On the crops' device (the GPU with --gpu-only, where ComfyUI keeps its intermediates), so the indices below
    # and the restored chunks live where `out` does.
    out = torch.zeros((crops.shape[0], size, size, channels), dtype=torch.float32, device=crops.device)
    todo = (crops.flatten(1).amax(dim=1) > 0).nonzero().flatten()
    if none_found:
        todo = todo[:0]
    if len(todo):
        restore = bind_restore(len(todo))
        for start in range(0, len(todo), chunk):
            part = todo[start : start + chunk]
            restored = resize_crops(restore(crops[part], on_face or (lambda: None)), size)
            out[part] = restored.to(out.device, torch.float32)
    return out, len(todo)


def warp_crops(
    image: torch.Tensor, faces: FaceSet, *, free_bytes: int | None = None, pixels: Pixels = OPENCV_PIXELS
) -> torch.Tensor:
    """The aligned crops of `faces` cut from `image` (by `pixels`): `[N, S, S, C]` float32 on the CPU, written
    into one preallocated tensor. Raises `FaceInputError` before allocating when they would not
    fit in `free_bytes`."""
    check_faces_fit_image(image, faces)
    size, channels = faces.crop_size, image.shape[-1]
    needed = crop_bytes(len(faces), size, channels)
    if free_bytes is not None and needed > free_bytes:
        raise FaceInputError(
            f"{len(faces)} face(s) at {size}x{size} need {needed / 2**30:.1f} GiB for their crops, but only "
            f"{free_bytes / 2**30:.1f} GiB of memory is free. Set max_faces (or face_index) to restore fewer faces, "
            "use a smaller face size (or a smaller GPEN model), or restore in one pass (the one-node restore holds "
            "one frame's crops at a time)"
        )
    crops = torch.empty((len(faces), size, size, channels), dtype=torch.float32)
    positions = faces.positions_by_frame()
    for frame_index, frame in _frames(image, None, only=sorted(positions)):
        frame_faces = [faces.faces[p] for p in positions[frame_index]]
        crops[positions[frame_index]] = pixels.crops(pixels.upload(frame), frame_faces).cpu()
    return crops


def paste_back(
    image: torch.Tensor,
    crops: torch.Tensor,
    faces: FaceSet,
    settings: PasteSettings,
    *,
    parser: object | None = None,
    check_interrupted: CheckInterrupted | None = None,
    pixels: Pixels = OPENCV_PIXELS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste `crops` (`[N, S, S, C]`, one per face, same order) back into `image` (`[B, H, W, C]`: the frames the
    faces were found in, or a uniformly scaled copy of them), by `pixels`.

    Returns the IMAGE `[B, H, W, C]` and the MASK `[B, H, W]` of where faces were pasted (zeros on frames
    without faces, which pass through unchanged).
    """
    if crops.shape[0] != len(faces):
        raise FaceInputError(
            f"got {crops.shape[0]} face crop(s) but {len(faces)} face record(s); they must come from the same "
            "detection, with nodes in between keeping the batch size and order"
        )
    check_faces_fit_image(image, faces)
    out_image, out_mask = _empty_results(image)
    stream = _paste_stream(faces, settings, parser, pixels, _store_into(out_image, out_mask))
    positions = faces.positions_by_frame()
    for frame_index, frame in _frames(image, check_interrupted):
        frame_faces = [faces.faces[p] for p in positions.get(frame_index, [])]
        if frame_faces:
            check_same_picture(frame, frame_faces, frame_index)
            frame = pixels.upload(frame)
        stream.push(frame_index, frame, pixels.for_paste(crops[positions.get(frame_index, [])]), frame_faces)
    stream.finish()
    return out_image, out_mask


def restore_frames(
    frames: torch.Tensor | FrameSource,
    detector: FaceDetector,
    restore: RestoreFn,
    detect_settings: DetectSettings,
    paste_settings: PasteSettings,
    on_frame: FrameSink,
    *,
    parser: object | None = None,
    on_progress: OnProgress | None = None,
    check_interrupted: CheckInterrupted | None = None,
    pixels: Pixels = OPENCV_PIXELS,
    damage: DamageSource | None = None,
    repair: RepairSettings = RepairSettings(),
    canvas: torch.Tensor | FrameSource | None = None,
    temporal_consistency: bool = False,
) -> FaceSet:
    """Find the faces of all frames (`detect_faces`: records only, a few hundred bytes per face), then restore
    and paste frame by frame, handing each finished frame to `on_frame`: only one frame and its crops are alive
    at a time, however long the video. Crops, restoration and paste-back of a frame stay on the `pixels` backend's
    device: `restore` gets the crops there and should return its result there.

    With `damage` (frame index -> its damage mask [H, W], 1 = damaged) the faces are repaired (see
    `face_utils.repair`): crops are painted white where damaged and only the damage, grown and feathered by
    `repair`, is pasted back.

    With `canvas` (the same frames uniformly scaled, e.g. upscaled 2x: upstream's selfie mode) the faces found and
    restored on `frames` are pasted onto its frames instead, and those reach `on_frame`.

    With `temporal_consistency` each restored face is combined with its track's neighbours where their inputs agree
    (see `face_utils.temporal`), so restored detail does not flicker; frames are pasted a few frames later.

    Progress counts one step per frame for finding the faces, then one per face restored (one per faceless
    frame). Returns the `FaceSet` of the faces restored.
    """
    frames_total = len(frames)
    done, total = 0, 2 * frames_total

    def step() -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done, max(done, total))

    faces = detect_faces(frames, detector, detect_settings, check_interrupted=check_interrupted, on_frame=step)
    positions = faces.positions_by_frame()
    total = frames_total + sum(len(positions.get(i, [None])) for i in range(frames_total))
    stream = _paste_stream(faces, paste_settings, parser, pixels, on_frame)
    damaged_faces = 0
    if canvas is not None and len(canvas) != frames_total:
        raise FaceInputError(f"the canvas has {len(canvas)} frame(s), the image {frames_total}: give it the image "
                             "batch upscaled, frame for frame")
    canvases = None if canvas is None else _frames(canvas, None)
    steady = None
    if temporal_consistency:
        steady = TemporalConsistency(lambda index, target, restored, faces_: stream.push(
            index, target, [] if restored is None else pixels.for_paste(restored), faces_), faces.shots)
    for frame_index, frame in _frames(frames, check_interrupted):
        frame_faces = [faces.faces[p] for p in positions.get(frame_index, [])]
        target = None if canvases is None else next(canvases)[1]
        if target is not None:
            _check_canvas(target, frame_faces, frame_index)
        crops = []
        if frame_faces and damage is not None:
            damaged = with_damage(frame, check_damage(damage(frame_index), frame.shape[:2]))
            cut = painted(pixels.crops(pixels.upload(damaged), frame_faces))
            damaged_faces += int((cut[..., 3].flatten(1).amax(dim=1) > 0).sum())
            repaired = paste_weight(restore(cut, step), cut[..., 3], repair)
            frame = pixels.upload(frame)
            if steady is not None:  # a repair is not steadied: it fills what no neighbour shows either
                steady.push(frame_index, frame if target is None else pixels.upload(target), frame_faces, None,
                            repaired)
                continue
            crops = pixels.for_paste(repaired)
        elif frame_faces and steady is not None:
            frame = pixels.upload(frame)
            cut = pixels.crops(frame, frame_faces)
            steady.push(frame_index, frame if target is None else pixels.upload(target), frame_faces, cut,
                        restore(cut, step))
            continue
        elif frame_faces:
            frame = pixels.upload(frame)
            crops = pixels.for_paste(restore(pixels.crops(frame, frame_faces), step))
        else:
            step()
        target = frame if target is None else pixels.upload(target)
        if steady is not None:
            steady.push(frame_index, target, frame_faces, None, None)
        else:
            stream.push(frame_index, target, crops, frame_faces)
    if steady is not None:
        steady.finish()
    stream.finish()
    if damage is not None and len(faces) and not damaged_faces:
        logger.warning("The damage mask covers none of the %d face(s) found: nothing to repair, the picture passes "
                       "through unchanged", len(faces))
    return faces


def restore_image(
    image: torch.Tensor,
    detector: FaceDetector,
    restore: RestoreFn,
    detect_settings: DetectSettings,
    paste_settings: PasteSettings,
    *,
    canvas: torch.Tensor | None = None,
    **options,
) -> tuple[torch.Tensor, torch.Tensor, FaceSet]:
    """`restore_frames` on an IMAGE batch: returns the IMAGE `[B, H, W, C]` (of the `canvas` option, when given),
    the MASK `[B, H, W]` (zeros where no face was pasted) and the faces, written frame by frame into one
    preallocated batch each."""
    out_image, out_mask = _empty_results(image if canvas is None else canvas)
    faces = restore_frames(image, detector, restore, detect_settings, paste_settings,
                           _store_into(out_image, out_mask), canvas=canvas, **options)
    return out_image, out_mask, faces


def check_faces_fit_image(image: torch.Tensor, faces: Sequence[FaceRecord]) -> None:
    """Raise `FaceInputError` unless every face belongs to a frame of `image` and `image` has the size the faces
    were found at, or that size uniformly scaled (an upscaled copy)."""
    frames = image.shape[0]
    for face in faces:
        if face.frame_index >= frames:
            raise FaceInputError(
                f"a face comes from frame {face.frame_index} but the image has {frames} frame(s); connect the "
                "image batch the faces were detected on (or an upscaled copy of it)"
            )
        try:
            canvas_scale_xy((image.shape[1], image.shape[2]), face.image_size_hw)
        except CanvasMismatchError as exc:
            raise FaceInputError(str(exc)) from exc


def _check_canvas(canvas: np.ndarray, faces: Sequence[FaceRecord], frame_index: int) -> None:
    """Raise `FaceInputError` unless the canvas frame is the picture `faces` were found in, uniformly scaled."""
    for face in faces:
        try:
            canvas_scale_xy(canvas.shape[:2], face.image_size_hw)
        except CanvasMismatchError as exc:
            raise FaceInputError(f"canvas frame {frame_index}: {exc}") from exc
    check_same_picture(canvas, faces, frame_index)


def check_same_picture(frame: np.ndarray, faces: Sequence[FaceRecord], frame_index: int) -> None:
    """Raise `FaceInputError` when `frame` is neither the picture `faces` were found in nor a scaled copy."""
    fingerprint = picture_fingerprint(frame)
    for face in faces:
        if face.frame_fingerprint is not None and not same_picture(fingerprint, face.frame_fingerprint):
            raise FaceInputError(
                f"frame {frame_index} of the image is not the picture its faces were found in (nor a scaled copy "
                "of it); connect the image the faces were detected on (or an upscaled copy of it)"
            )


def _frames(
    frames: torch.Tensor | FrameSource, check_interrupted: CheckInterrupted | None, *,
    only: Sequence[int] | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """The loop every path shares: (index, frame as numpy) for each frame (or those in `only`), checking for
    interruption before each; one frame's copy alive at a time."""
    wanted = None if only is None else set(only)
    if isinstance(frames, torch.Tensor):
        for frame_index in range(frames.shape[0]) if only is None else sorted(wanted):
            if check_interrupted is not None:
                check_interrupted()
            yield frame_index, frame_to_numpy(frames, frame_index)
        return
    for frame_index, frame in enumerate(frames):
        if wanted is None or frame_index in wanted:
            if check_interrupted is not None:
                check_interrupted()
            yield frame_index, frame


def _shots(fingerprints: Sequence[str]) -> list[tuple[int, int]]:
    """Half-open frame ranges (start, stop) of consecutive frames showing the same picture."""
    starts = [0] + [i for i in range(1, len(fingerprints)) if not same_picture(fingerprints[i - 1], fingerprints[i])]
    return list(zip(starts, starts[1:] + [len(fingerprints)]))


def _paste_stream(faces: FaceSet, settings: PasteSettings, parser: object | None, pixels: Pixels,
                  sink: FrameSink) -> PasteStream:
    """Paste-back frame by frame, colour correction smoothed over time as the faces were (see paste_stream)."""
    return PasteStream(settings, sink, shots=faces.shots, smooth=faces.smoothing > 0, parser=parser, pixels=pixels)


def _store_into(out_image: torch.Tensor, out_mask: torch.Tensor) -> FrameSink:
    """A frame sink writing each finished frame (and its mask, if any) into preallocated IMAGE and MASK batches."""

    def store(index: int, frame: np.ndarray, mask: np.ndarray | None) -> None:
        out_image[index] = torch.from_numpy(frame)
        if mask is not None:
            out_mask[index] = torch.from_numpy(mask)

    return store


def _empty_results(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The IMAGE and (all-zero) MASK a pass over `image` fills frame by frame, on the CPU: written in place, so a
    long video is held once more, not twice."""
    return torch.empty(image.shape, dtype=torch.float32), torch.zeros(image.shape[:3], dtype=torch.float32)
