"""Faces found by someone else: core ComfyUI's face landmarks (`FACE_LANDMARKS`, from its MediaPipe Face Landmarker
node, 0.33 and later) as a face source, so users of core's face nodes restore with GPEN without a second detector.

The landmarks become `FaceRecord`s, frame by frame, behind the `FaceDetector` interface; tracking, selection,
smoothing, alignment and paste-back then treat them as any detection. The payload is plain data (no ComfyUI import):
`{"frames": [[face, ...] per frame], "image_size": (H, W), ...}`, each face a dict with `landmarks_xy` (478 x 2,
image pixels with the image's edge at 0, MediaPipe Face Mesh with irises), `bbox_xyxy` and `score`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .detection import DEFAULT_DETECTION_SIZE, DEFAULT_SCORE_THRESHOLD, FaceDetector
from .images import check_image
from .records import FaceRecord

# The Face Mesh points that play the parts of our five (LANDMARK_NAMES): the iris centres (what RetinaFace's eye
# points mark), the nose tip and the mouth corners. Which of each pair is left in the image is decided from the
# face's own geometry (see `five_points`), not from MediaPipe's naming, so mirrored and rotated faces come right.
EYES = (468, 473)
NOSE_TIP = 1
MOUTH_CORNERS = (61, 291)
MESH_POINTS = 478
SOURCE_NAME = "core ComfyUI's face landmarks"


class LandmarkFaces(FaceDetector):
    """The faces of a `FACE_LANDMARKS` payload, one frame at a time, as detections.

    The faces are taken as core's node chose them (its `min_confidence` and `num_faces`): `score_threshold` and
    `detection_size` do not apply. Raises ValueError naming the mismatch when the payload is malformed or was
    found on other pictures than the ones it is asked about."""

    def __init__(self, payload: Mapping) -> None:
        super().__init__(SOURCE_NAME)
        if not isinstance(payload, Mapping) or not isinstance(payload.get("frames"), Sequence):
            raise ValueError(f"expected {SOURCE_NAME} (a FACE_LANDMARKS dict with 'frames' and 'image_size'), got "
                             f"{type(payload).__name__}: connect the 'face_landmarks' output of core's 'Detect Face "
                             "Landmarks (MediaPipe)' node")
        self.frames = payload["frames"]
        self.image_size_hw = tuple(int(v) for v in payload["image_size"])

    def detect(self, image: np.ndarray, *, frame_index: int = 0, score_threshold: float = DEFAULT_SCORE_THRESHOLD,
               detection_size: int = DEFAULT_DETECTION_SIZE, min_face_size: float = 0.0) -> list[FaceRecord]:
        height, width = check_image(image).shape[:2]
        if (height, width) != self.image_size_hw:
            raise ValueError(f"the face landmarks were found on {self.image_size_hw[1]}x{self.image_size_hw[0]} "
                             f"pictures, this image is {width}x{height}: give both nodes the same image")
        if frame_index >= len(self.frames):
            raise ValueError(f"the face landmarks hold {len(self.frames)} frame(s), the image batch has more (frame "
                             f"{frame_index}): give both nodes the same image batch")
        faces = [_record(face, frame_index, (height, width)) for face in self.frames[frame_index]]
        return sorted((f for f in faces if f.box_size >= min_face_size), key=lambda f: -f.score)


def five_points(mesh_xy: np.ndarray) -> np.ndarray:
    """Our five landmarks [5, 2] from a Face Mesh [478, 2], in `LANDMARK_NAMES` order: left eye, right eye, nose,
    left and right mouth corner as seen in the image."""
    eyes, nose, mouth = mesh_xy[list(EYES)], mesh_xy[NOSE_TIP], mesh_xy[list(MOUTH_CORNERS)]
    # Seen from the front, going from the image-left eye to the image-right one turns clockwise (y down) towards
    # the mouth, whatever the face's tilt: the sign of that turn puts each pair in image order.
    down = mouth.mean(axis=0) - eyes.mean(axis=0)

    def image_order(pair: np.ndarray) -> np.ndarray:
        across = pair[1] - pair[0]
        return pair if across[0] * down[1] - across[1] * down[0] >= 0 else pair[::-1]

    eyes, mouth = image_order(eyes), image_order(mouth)
    return np.stack([eyes[0], eyes[1], nose, mouth[0], mouth[1]])


def _record(face: Mapping, frame_index: int, image_size_hw: tuple[int, int]) -> FaceRecord:
    mesh = np.asarray(face["landmarks_xy"], dtype=np.float64)
    if mesh.shape != (MESH_POINTS, 2):
        raise ValueError(f"expected {MESH_POINTS} face-mesh landmarks (x, y) per face, got shape {mesh.shape}")
    # MediaPipe's pixels have the image's edge at 0; ours have the first pixel's centre there.
    mesh = mesh - 0.5
    box = np.asarray(face["bbox_xyxy"], dtype=np.float64) - 0.5
    return FaceRecord(frame_index=frame_index, image_size_hw=image_size_hw, box_xyxy=tuple(box.tolist()),
                      score=float(min(max(face["score"], 0.0), 1.0)),
                      landmarks_xy=tuple(map(tuple, five_points(mesh).tolist())))
