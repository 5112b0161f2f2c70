"""The face-restoration pipeline shared by the ComfyUI nodes and the command line (no ComfyUI imports here).

Steps: detect and align faces per frame (`detect_faces`), cut the aligned crops (`warp_crops`), run GPEN on the
crops in memory-sized batches (`restore_crops`), paste them back (`paste_back`). `restore_frames` chains them
frame by frame so a long video batch never holds more than one frame's crops.

Callers own the model's placement: they move it to `device`/`dtype` (ComfyUI through its model management, the
command line with `.to()`), pass progress and interruption callbacks, and get CPU float32 results back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn

from .conversion import (
    crops_to_model_input,
    frame_to_numpy,
    frames_to_image,
    model_output_to_crops,
    resize_crops,
    rgb_crops,
)
from . import (
    CanvasMismatchError,
    FaceDetector,
    FaceRecord,
    PasteSettings,
    align_face,
    canvas_scale_xy,
    paste_faces,
    select_faces,
    warp_face,
)
from ..gpen_arch import GPEN
from ..gpen_arch.model import channel_table

logger = logging.getLogger(__name__)

OnProgress = Callable[[int, int], None]
"""Called as on_progress(done, total) after each face (total may grow as later frames reveal more faces)."""
CheckInterrupted = Callable[[], None]
"""Raises (ComfyUI's InterruptProcessingException, KeyboardInterrupt) when the user asked to stop."""
RestoreFn = Callable[[torch.Tensor, Callable[[], None]], torch.Tensor]
"""restore(crops [n, S, S, C] in [0, 1], on_face) -> restored crops [n, S', S', 3]; calls on_face() per face."""

# Upstream GPEN blends the restored face 80/20 with the aligned input (`--alpha 0.8`).
DEFAULT_STRENGTH = 0.8
# Peak activation memory of one face is about 3.5x the encoder's feature elements times the element size
# (measured here on GPEN-512 and GPEN-1024, fp32, CPU peak RSS); 4 leaves headroom for allocator slack.
ACTIVATION_BYTES_FACTOR = 4.0
# Share of the free memory a restore batch may take; the rest stays for other nodes and fragmentation.
FREE_MEMORY_SHARE = 0.8
MAX_BATCH_SIZE = 16  # a cap, so one batch's latency (and the gap between progress updates) stays bounded


class FaceInputError(ValueError):
    """Inputs that do not fit together (crop and face counts, image sizes); the message names the fix."""


@dataclass(frozen=True)
class DetectSettings:
    """How faces are found and cut out.

    `score_threshold` in 0..1; `order`/`index`/`max_faces` as in `face_utils.select_faces`; `crop_size` is the
    aligned crop side in pixels (the GPEN model's size); `template` one of `face_utils.TEMPLATES`;
    `min_face_size` in frame pixels (0 keeps every face).
    """

    crop_size: int = 512
    template: str = "gpen"
    score_threshold: float = 0.9
    order: str = "largest"
    index: str = "all"
    max_faces: int = 0
    min_face_size: float = 0.0


def model_size(model: nn.Module) -> int:
    """Crop side S a GPEN model (torch or ONNX-backed) takes and returns."""
    return int(model.size)


def is_torch_gpen(model: nn.Module) -> bool:
    """True for the native PyTorch GPEN (placed by the caller); False for an ONNX-backed one (runs itself)."""
    return isinstance(model, GPEN)


def face_memory_bytes(size: int, dtype: torch.dtype) -> int:
    """Estimated peak activation memory for restoring one face with GPEN-`size` in `dtype` (published channel
    widths: channel_multiplier 2, narrow 1, the largest of the released models at every size)."""
    channels = channel_table(2, 1)
    elements = sum(res * res * c for res, c in channels.items() if res <= size)
    itemsize = torch.empty((), dtype=dtype).element_size()
    return int(ACTIVATION_BYTES_FACTOR * elements * itemsize)


def batch_size_for(size: int, dtype: torch.dtype, free_bytes: int, faces: int, *, device: torch.device) -> int:
    """How many faces to restore at once: what fits in `FREE_MEMORY_SHARE` of `free_bytes`, 1 to
    `MAX_BATCH_SIZE`, never more than `faces`; always 1 on the CPU, where batches are no faster per face and
    would only delay progress and interruption."""
    if device.type == "cpu":
        return 1
    fits = int(free_bytes * FREE_MEMORY_SHARE) // max(face_memory_bytes(size, dtype), 1)
    return max(1, min(fits, MAX_BATCH_SIZE, max(faces, 1)))


def restore_crops(
    model: nn.Module,
    crops: torch.Tensor,
    *,
    device: torch.device,
    dtype: torch.dtype,
    strength: float = DEFAULT_STRENGTH,
    batch_size: int = 1,
    on_face: Callable[[], None] | None = None,
    check_interrupted: CheckInterrupted | None = None,
) -> torch.Tensor:
    """Restore aligned face crops with GPEN.

    Args:
        model: a loaded GPEN (already on `device` as `dtype` if it is a torch model; an ONNX-backed one takes
            CPU float32 and converts itself).
        crops: `[N, H, W, C]` float in [0, 1], RGB(A) or grey, any square size (resized to the model's).
        strength: 1 = the restored face, 0 = the input crop; in between a linear blend (upstream uses 0.8).
        batch_size: faces per forward pass; halved and retried when the device runs out of memory.
        on_face: called once per restored face (progress).
        check_interrupted: called before every batch; raises to stop.

    Returns:
        `[N, S, S, 3]` float32 RGB in [0, 1] on the CPU, S = the model's size. Inference errors propagate:
        nothing unrestored is ever returned as restored.
    """
    if crops.ndim != 4 or crops.shape[1] != crops.shape[2]:
        raise FaceInputError(f"Face crops must be square, [N, S, S, C]; got {list(crops.shape)}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in 0..1, got {strength}")
    size = model_size(model)
    if not is_torch_gpen(model):
        dtype = torch.float32  # onnxruntime runs the graph's fp32; on CUDA when the input is there
    results: list[torch.Tensor] = []
    start = 0
    batch_size = max(1, batch_size)
    with torch.inference_mode():
        while start < crops.shape[0]:
            if check_interrupted is not None:
                check_interrupted()
            chunk = resize_crops(crops[start : start + batch_size].float().cpu(), size)
            try:
                output = model(crops_to_model_input(chunk, device=device, dtype=dtype))
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                batch_size //= 2
                logger.warning("Out of memory restoring faces; retrying with %d face(s) per batch", batch_size)
                continue
            if not torch.isfinite(output).all():
                raise FloatingPointError(
                    f"GPEN produced NaN or infinite values in {dtype} on {device}: the model overflowed in this "
                    "precision. Load it with precision fp32 (or bf16 on GPUs that support it)."
                )
            restored = model_output_to_crops(output)
            del output
            if strength < 1.0:
                restored = torch.lerp(rgb_crops(chunk).float(), restored, strength)
            results.append(restored)
            start += chunk.shape[0]
            if on_face is not None:
                for _ in range(chunk.shape[0]):
                    on_face()
    if not results:
        return torch.zeros((0, size, size, 3), dtype=torch.float32)
    return torch.cat(results)


def detect_faces(
    image: torch.Tensor,
    detector: FaceDetector,
    settings: DetectSettings,
    *,
    check_interrupted: CheckInterrupted | None = None,
) -> list[FaceRecord]:
    """Detect, select and align the faces of every frame of `image` (`[B, H, W, C]` IMAGE).

    Returns aligned `FaceRecord`s (frame by frame, each frame's faces in the selection order), every one with
    its `frame_index`. Frames without faces contribute none (logged, not an error).
    """
    faces: list[FaceRecord] = []
    for frame_index in range(image.shape[0]):
        if check_interrupted is not None:
            check_interrupted()
        faces.extend(_faces_in_frame(frame_to_numpy(image, frame_index), frame_index, detector, settings))
    return faces


def warp_crops(image: torch.Tensor, faces: Sequence[FaceRecord]) -> torch.Tensor:
    """The aligned crops of `faces` cut from `image` (`[B, H, W, C]`): `[N, S, S, C]` float32 on the CPU.

    All faces must be aligned at the same crop size S."""
    sizes = {face.crop_size for face in faces}
    if len(sizes) > 1:
        raise FaceInputError(f"Faces are aligned at different crop sizes {sorted(sizes)}; align them at one size")
    check_faces_fit_image(image, faces)
    frames: dict[int, np.ndarray] = {}
    crops = []
    for face in faces:
        if face.frame_index not in frames:
            frames = {face.frame_index: frame_to_numpy(image, face.frame_index)}  # keep one frame alive
        crops.append(warp_face(frames[face.frame_index], face))
    if not crops:
        size = sizes.pop() if sizes else 0
        return torch.zeros((0, size, size, image.shape[-1]), dtype=torch.float32)
    return frames_to_image(crops)


def paste_back(
    image: torch.Tensor,
    crops: torch.Tensor,
    faces: Sequence[FaceRecord],
    settings: PasteSettings,
    *,
    parser: object | None = None,
    check_interrupted: CheckInterrupted | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste `crops` (`[N, S, S, C]`, one per face record, same order) back into `image` (`[B, H, W, C]`, the
    frames the faces were found on or a uniformly scaled copy of them).

    Returns the IMAGE `[B, H, W, C]` and the MASK `[B, H, W]` of where faces were pasted (zeros on frames
    without faces, which pass through unchanged).
    """
    if crops.shape[0] != len(faces):
        raise FaceInputError(
            f"Got {crops.shape[0]} face crop(s) but {len(faces)} face record(s); they must come from the same "
            "'Detect and align faces' node, with nodes in between keeping the batch size and order"
        )
    check_faces_fit_image(image, faces)
    by_frame: dict[int, list[int]] = {}
    for position, face in enumerate(faces):
        by_frame.setdefault(face.frame_index, []).append(position)
    out_image, out_mask = _empty_results(image)
    for frame_index in range(image.shape[0]):
        if check_interrupted is not None:
            check_interrupted()
        frame = frame_to_numpy(image, frame_index)
        positions = by_frame.get(frame_index, [])
        if positions:
            frame_crops = [crops[p].float().cpu().numpy() for p in positions]
            frame, mask = paste_faces(frame, frame_crops, [faces[p] for p in positions], settings, parser=parser)
            out_mask[frame_index] = torch.from_numpy(mask)
        out_image[frame_index] = torch.from_numpy(frame)
    return out_image, out_mask


def restore_frames(
    image: torch.Tensor,
    detector: FaceDetector,
    restore: RestoreFn,
    detect_settings: DetectSettings,
    paste_settings: PasteSettings,
    *,
    parser: object | None = None,
    on_progress: OnProgress | None = None,
    check_interrupted: CheckInterrupted | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Detect, restore and paste back frame by frame (only one frame's crops are alive at a time).

    `restore(crops, on_face)` restores one frame's crops `[n, S, S, C]` to `[n, S, S, 3]`, calling `on_face()`
    after each face (`restore_crops` with the model bound). Progress counts faces; a frame without faces counts
    as one, and frames not seen yet are counted as one face each. Returns the IMAGE `[B, H, W, C]`, the MASK
    `[B, H, W]` and the number of faces restored.
    """
    frames_total = image.shape[0]
    out_image, out_mask = _empty_results(image)
    done = restored_faces = 0
    frame_end_estimate = frames_total

    def face_done() -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done, max(done, frame_end_estimate))

    for frame_index in range(frames_total):
        if check_interrupted is not None:
            check_interrupted()
        frame = frame_to_numpy(image, frame_index)
        faces = _faces_in_frame(frame, frame_index, detector, detect_settings)
        frame_end_estimate = done + max(len(faces), 1) + frames_total - frame_index - 1
        if faces:
            crops = frames_to_image([warp_face(frame, face) for face in faces])
            restored = restore(crops, face_done)
            frame, mask = paste_faces(frame, list(restored.numpy()), faces, paste_settings, parser=parser)
            out_mask[frame_index] = torch.from_numpy(mask)
            restored_faces += len(faces)
        else:
            face_done()
        out_image[frame_index] = torch.from_numpy(frame)
    return out_image, out_mask, restored_faces


def check_faces_fit_image(image: torch.Tensor, faces: Sequence[FaceRecord]) -> None:
    """Raise `FaceInputError` unless every face belongs to a frame of `image` and `image` has the size the faces
    were found at, or that size uniformly scaled (an upscaled copy)."""
    frames = image.shape[0]
    for face in faces:
        if face.frame_index >= frames:
            raise FaceInputError(
                f"A face comes from frame {face.frame_index} but the image has {frames} frame(s); connect the "
                "image batch the faces were detected on (or an upscaled copy of it)"
            )
        try:
            canvas_scale_xy((image.shape[1], image.shape[2]), face.image_size_hw)
        except CanvasMismatchError as exc:
            raise FaceInputError(str(exc)) from exc


def draw_faces(frame: np.ndarray, faces: Sequence[FaceRecord]) -> np.ndarray:
    """A copy of `frame` (`[H, W, C]` float32 [0, 1]) as RGB with each face's box, landmarks, position in the
    selection and score drawn (drawn in 8 bits, which OpenCV's text rendering requires; it is only a preview)."""
    rgb = frame[..., :3] if frame.shape[-1] >= 3 else np.repeat(frame, 3, axis=-1)
    canvas = np.ascontiguousarray(np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8))
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    box_rgb, point_rgb = (0, 255, 0), (255, 50, 50)  # green boxes, red points: readable on skin tones
    for order, face in enumerate(faces):
        x0, y0, x1, y1 = (round(v) for v in face.box_xyxy)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), box_rgb, thickness, cv2.LINE_AA)
        for x, y in face.landmarks_xy:
            cv2.circle(canvas, (round(x), round(y)), 2 * thickness, point_rgb, -1, cv2.LINE_AA)
        cv2.putText(canvas, f"{order}: {face.score:.2f}", (x0, max(y0 - 4 * thickness, 10)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, box_rgb, thickness, cv2.LINE_AA)
    return canvas.astype(np.float32) / 255.0


def _empty_results(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The IMAGE and (all-zero) MASK a pass over `image` fills frame by frame, on the CPU: written in place, so a
    long video is held once more, not twice."""
    return torch.empty(image.shape, dtype=torch.float32), torch.zeros(image.shape[:3], dtype=torch.float32)


def _faces_in_frame(
    frame: np.ndarray, frame_index: int, detector: FaceDetector, settings: DetectSettings
) -> list[FaceRecord]:
    found = detector.detect(
        frame,
        frame_index=frame_index,
        score_threshold=settings.score_threshold,
        min_face_size=settings.min_face_size,
    )
    chosen = select_faces(found, order=settings.order, index=settings.index, max_faces=settings.max_faces)
    return [align_face(face, crop_size=settings.crop_size, template=settings.template) for face in chosen]
