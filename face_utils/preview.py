"""The preview Detect shows: each kept face's box, landmarks, id and score drawn on its frame."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .records import FaceRecord


def draw_faces(frame: np.ndarray, faces: Sequence[FaceRecord]) -> np.ndarray:
    """A copy of `frame` (`[H, W, C]` float32 [0, 1]) as RGB with each face's box, landmarks, track id (else its
    position in `faces`) and score drawn; labels stay inside the picture and do not overlap one another where there
    is room
    (drawn in 8 bits, which OpenCV's text rendering requires; it is only a preview)."""
    rgb = frame[..., :3] if frame.shape[-1] >= 3 else np.repeat(frame, 3, axis=-1)
    canvas = np.ascontiguousarray(np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8))
    height, width = canvas.shape[:2]
    thickness = max(1, round(max(height, width) / 400))
    scale = 0.4 * thickness
    box_rgb, point_rgb = (0, 255, 0), (255, 50, 50)  # green boxes, red points: readable on skin tones
    placed: list[tuple[int, int, int, int]] = []
    for order, face in enumerate(faces):
        x0, y0, x1, y1 = (round(v) for v in face.box_xyxy)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), box_rgb, thickness, cv2.LINE_AA)
        for x, y in face.landmarks_xy:
            cv2.circle(canvas, (round(x), round(y)), 2 * thickness, point_rgb, -1, cv2.LINE_AA)
        text = f"{order if face.track_id is None else face.track_id}: {face.score:.2f}"
        (text_w, text_h), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        rect = _label_place((x0, y0, x1, y1), (text_w, text_h + baseline), (width, height), placed)
        placed.append(rect)
        cv2.putText(canvas, text, (rect[0], rect[3] - baseline), cv2.FONT_HERSHEY_SIMPLEX, scale, box_rgb,
                    thickness, cv2.LINE_AA)
    return canvas.astype(np.float32) / 255.0


def _label_place(
    box: tuple[int, int, int, int], size_wh: tuple[int, int], canvas_wh: tuple[int, int],
    placed: Sequence[tuple[int, int, int, int]],
) -> tuple[int, int, int, int]:
    """Rectangle (x0, y0, x1, y1) for a label of `size_wh` near `box`: above it, below it, or inside its top,
    the first that lies inside the canvas and overlaps no label placed before (else the first candidate)."""
    (w, h), (canvas_w, canvas_h) = size_wh, canvas_wh
    x0, y0, x1, y1 = box
    gap = 2
    candidates = [(x0, y0 - gap - h), (x0, y1 + gap), (x0 + gap, y0 + gap), (x0 + gap, y1 - gap - h)]
    rects = []
    for left, top in candidates:
        left = min(max(left, 0), max(canvas_w - w, 0))
        top = min(max(top, 0), max(canvas_h - h, 0))
        rects.append((left, top, left + w, top + h))
    for rect in rects:
        if not any(_overlap(rect, other) for other in placed):
            return rect
    return rects[0]


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
