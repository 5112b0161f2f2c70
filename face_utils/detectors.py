"""The face detectors behind `detection.FaceDetector`: facexlib's RetinaFace (ResNet-50, MobileNet-0.25) on a torch
device, OpenCV's YuNet on the CPU, and `load_detector`, which finds (or downloads) their weights."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from ..model_files.errors import UnsupportedCheckpointError
from .choices import DETECTORS
from .detection import DEFAULT_SCORE_THRESHOLD, NMS_IOU_THRESHOLD, FaceDetector
from .weights import KNOWN_WEIGHTS, WeightsUnavailableError, load_state_dict_into, resolve_known_weights

# facexlib's network names for our detector names.
RETINAFACE_NETWORKS = {"retinaface_resnet50": "resnet50", "retinaface_mobile0.25": "mobile0.25"}
# Channels of an RGB image in RetinaFace's (OpenCV's) BGR order.
BGR_FROM_RGB = [2, 1, 0]
# Input sizes whose RetinaFace anchors are kept (`RetinaFaceDetector._priors_for`; 1.4 MB for a 1920 x 1088 pass
# with facexlib's cfg, the same for both networks): a video's frames share one size, a 4000x3000 photo needs 4
# (its full tiles, last column, last row and corner tile) and one more for its shrunk pass.
PRIOR_CACHE_SIZE = 16
# Candidates YuNet keeps before non-maximum suppression (OpenCV's default).
YUNET_TOP_K = 5000


class RetinaFaceDetector(FaceDetector):
    """facexlib's RetinaFace (ResNet-50 or MobileNet-0.25) on a torch device.

    facexlib's network computes the outputs; the steps around it are ours, with the semantics of facexlib's
    `RetinaFace.detect_faces(use_origin_size=True)` (same preprocessing, decoding, threshold and NMS, so the same
    detections) but cheaper: anchors are built vectorised and cached per input size (facexlib rebuilds them in
    Python loops on every call: 0.14 s at 910x1137), only the anchors scoring above the threshold are decoded,
    and everything stays on the network's device until the few kept rows come back.
    """

    def __init__(self, name: str, net: torch.nn.Module) -> None:
        super().__init__(name)
        self.net = net
        self._priors: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device: torch.device | str) -> RetinaFaceDetector:
        device = torch.device(device)
        # facexlib keeps its own device and the BGR channel means as plain attributes, which nn.Module.to does
        # not move.
        self.net.to(device)
        self.net.device = device
        self.net.mean_tensor = self.net.mean_tensor.to(device)
        self._priors.clear()  # cached on the former device
        return self

    def _detect_rgb(
        self, rgb: np.ndarray, score_threshold: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Imported here, as in `_load_retinaface`: this module loads without facexlib and torchvision (YuNet).
        from facexlib.detection.retinaface_utils import decode, decode_landm
        from torchvision.ops import nms

        height, width = rgb.shape[:2]
        variances = self.net.cfg["variance"]
        with torch.inference_mode():
            loc, conf, landmarks = self.net(self._network_input(rgb))
            scores = conf[0, :, 1]
            # Strictly above, as facexlib's detect_faces; only those anchors are decoded.
            rows = torch.nonzero(scores > score_threshold).squeeze(1)
            priors = self._priors_for(height, width)[rows]
            # The network regresses in units of the input size; x, y alternate in both outputs.
            size_xy = torch.tensor([width, height], dtype=torch.float32, device=scores.device)
            boxes = decode(loc[0, rows], priors, variances) * size_xy.repeat(2)
            points = decode_landm(landmarks[0, rows], priors, variances) * size_xy.repeat(5)
            scores = scores[rows]
            keep = nms(boxes, scores, NMS_IOU_THRESHOLD)  # kept rows by descending score, as facexlib's
            found = torch.cat([boxes[keep], scores[keep, None], points[keep]], dim=1).cpu().double().numpy()
        return found[:, :4], found[:, 4], found[:, 5:15].reshape(-1, 5, 2)

    def _network_input(self, rgb: np.ndarray) -> torch.Tensor:
        """RetinaFace's input for an RGB float32 0..1 image: [1, 3, H, W] BGR in 0..255 minus facexlib's training
        channel means (`net.mean_tensor`), on the network's device. The pixels cross to the device once, as they
        are; the channel order and layout change there (on the GPU when the network is there). Same operations
        in the same order as facexlib (x * 255, then minus the mean, in float32), so the same values."""
        if min(rgb.strides) < 0:
            rgb = np.ascontiguousarray(rgb)  # torch takes no negative strides (a flipped view)
        pixels = torch.from_numpy(rgb).to(self.net.mean_tensor.device)
        bgr = pixels.permute(2, 0, 1)[BGR_FROM_RGB].unsqueeze(0)  # one gather: a new contiguous tensor
        return bgr.mul_(255.0).sub_(self.net.mean_tensor).contiguous(memory_format=torch.channels_last)

    def _priors_for(self, height: int, width: int) -> torch.Tensor:
        """RetinaFace's anchors for an input of `height` x `width` on the network's device, cached: a video's
        frames share one size, a tiled image has a few (full tiles, the last column and row, the pyramid pass)."""
        key = (height, width)
        priors = self._priors.get(key)
        if priors is None:
            if len(self._priors) >= PRIOR_CACHE_SIZE:
                del self._priors[next(iter(self._priors))]  # the oldest
            cfg = self.net.cfg
            priors = retinaface_priors(height, width, cfg["min_sizes"], cfg["steps"])
            priors = self._priors[key] = torch.from_numpy(priors).to(self.net.mean_tensor.device)
        return priors


def retinaface_priors(
    height: int, width: int, min_sizes: Sequence[Sequence[int]], steps: Sequence[int]
) -> np.ndarray:
    """RetinaFace's anchors for an input of `height` x `width` px, as facexlib's `PriorBox(cfg, (height,
    width)).forward()` builds them (in Python loops, 0.14 s at 910x1137), vectorised: float32 [N, 4] rows
    (cx, cy, w, h) in units of the input's width and height. Per feature level (stride `steps[k]`, a cell per
    started stride), cells row by row, and per cell one anchor per size in `min_sizes[k]`, centred on the cell.
    Computed in float64 with facexlib's operations in its order (centre = (index + 0.5) * stride / side), then
    rounded once to float32, so the values are the same to the bit."""
    levels = []
    for step, sizes in zip(steps, min_sizes):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        centre_x = (np.arange(cols) + 0.5) * step / width
        centre_y = (np.arange(rows) + 0.5) * step / height
        sizes = np.asarray(sizes, dtype=np.float64)
        level = np.empty((rows, cols, len(sizes), 4))
        level[..., 0] = centre_x[None, :, None]
        level[..., 1] = centre_y[:, None, None]
        level[..., 2] = sizes / width
        level[..., 3] = sizes / height
        levels.append(level.reshape(-1, 4))
    return np.concatenate(levels).astype(np.float32)


class YuNetDetector(FaceDetector):
    """OpenCV's YuNet (`cv2.FaceDetectorYN`), a 230 kB ONNX network that needs neither torch nor torchvision."""

    def __init__(self, name: str, model_path: Path) -> None:
        super().__init__(name)
        self.model_path = model_path
        self._net = cv2.FaceDetectorYN.create(
            str(model_path), "", (320, 320), DEFAULT_SCORE_THRESHOLD, NMS_IOU_THRESHOLD, YUNET_TOP_K
        )

    def _detect_rgb(self, rgb, score_threshold):
        height, width = rgb.shape[:2]
        # OpenCV's boundary: YuNet takes BGR uint8-range pixels.
        # One new contiguous array, then rounded and clipped in place.
        bgr_255 = rgb[:, :, ::-1] * np.float32(255.0)
        bgr_u8 = np.clip(np.rint(bgr_255, out=bgr_255), 0, 255, out=bgr_255).astype(np.uint8)
        self._net.setInputSize((width, height))
        self._net.setScoreThreshold(float(score_threshold))
        _, rows = self._net.detect(bgr_u8)
        if rows is None:
            empty = np.zeros((0,))
            return empty.reshape(0, 4), empty, empty.reshape(0, 5, 2)
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, 15)
        boxes = np.concatenate([rows[:, 0:2], rows[:, 0:2] + rows[:, 2:4]], axis=1)
        # YuNet names the points from the subject's side ("right eye" first), which is the image-left eye, so its
        # order is already ours: left eye, right eye, nose, left and right mouth corner as seen in the image.
        return boxes, rows[:, 14], rows[:, 4:14].reshape(-1, 5, 2)


def load_detector(name: str, model_dir: str | Path, *, device: torch.device | str = "cpu") -> FaceDetector:
    """Load detector `name` (one of `DETECTORS`) with weights from `model_dir`.

    The weights file (`KNOWN_WEIGHTS[name].filename`) is used if present there, else downloaded into it first
    (see `face_utils.weights.resolve_weights`). RetinaFace runs on `device`; YuNet always runs on the CPU through
    OpenCV.

    Raises `WeightsUnavailableError` when the file is missing and cannot be downloaded (the message names the
    other detectors, and which of them are already in `model_dir`), `UnsupportedCheckpointError` (a ValueError)
    when the file there is not usable.
    """
    if name not in DETECTORS:
        raise ValueError(f"Unknown face detector {name!r}; expected one of {DETECTORS}")
    try:
        path = resolve_known_weights(name, model_dir)
    except WeightsUnavailableError as exc:
        raise type(exc)(f"{exc} {_other_detectors(name, Path(model_dir))}") from exc
    if name == "yunet":
        try:
            return YuNetDetector(name, path)
        except cv2.error as exc:
            raise UnsupportedCheckpointError(
                f"OpenCV could not load {path} as YuNet ({exc}). Expected {KNOWN_WEIGHTS[name].filename} from "
                f"{KNOWN_WEIGHTS[name].url}; delete the file to have it downloaded again."
            ) from exc
    return RetinaFaceDetector(name, _load_retinaface(name, path, torch.device(device)))


def _other_detectors(name: str, model_dir: Path) -> str:
    """A sentence naming the detectors other than `name`, marking those whose file is already in `model_dir`."""
    others = []
    for other in DETECTORS:
        if other != name:
            present = (model_dir.expanduser() / KNOWN_WEIGHTS[other].filename).is_file()
            others.append(f"{other} ({KNOWN_WEIGHTS[other].filename}{', already in that folder' if present else ''})")
    return f"Or choose another detector: {'; '.join(others)}."


def _load_retinaface(name: str, path: Path, device: torch.device) -> torch.nn.Module:
    # Imported here: facexlib pulls in torchvision, which YuNet users need not load.
    from facexlib.detection.retinaface import RetinaFace

    with warnings.catch_warnings():
        # facexlib builds its ResNet-50 with torchvision's deprecated `pretrained=False` (no download happens).
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torchvision\.")
        net = RetinaFace(network_name=RETINAFACE_NETWORKS[name], half=False, device=device)
    load_state_dict_into(net, path, name)
    net.eval()
    _fold_batch_norms(net)
    # Channels-last with the batch norms folded: MobileNet-0.25 on a 970x1137 photo 178 -> 83 ms on 2 CPU cores
    # (channels-last alone 118 ms); the outputs move by about 3e-5.
    return net.to(device, memory_format=torch.channels_last)


def _fold_batch_norms(net: torch.nn.Module) -> None:
    """Fold each inference-mode BatchNorm2d into the convolution before it, in place: in sequences (facexlib's
    conv_bn blocks, ResNet's downsample) and in torchvision's `convK`/`bnK` pairs. The network keeps its class
    and methods; its state dict changes, so weights are loaded before."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for module in list(net.modules()):
        if isinstance(module, torch.nn.Sequential):
            pairs = [(str(i), str(i + 1)) for i in range(len(module) - 1)]
        else:
            pairs = [(f"conv{k}", f"bn{k}") for k in range(1, 4)]
        for conv_name, bn_name in pairs:
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, torch.nn.Identity())
