"""Face-parsing masks from facexlib's ParseNet (`parsing_parsenet.pth`), for pasting back only the face itself."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch

from .images import check_image, to_rgb
from .weights import KNOWN_WEIGHTS, load_state_dict_into, resolve_known_weights

logger = logging.getLogger(__name__)

# ParseNet works on 512x512 RGB crops in -1..1 and predicts 19 CelebAMask-HQ classes.
PARSE_SIZE = 512
PARSE_CLASSES = 19
# Class order of facexlib's ParseNet: 0 background, 1 skin, 2 nose, 3 eyeglasses, 4 left eye, 5 right eye,
# 6 left brow, 7 right brow, 8 left ear, 9 right ear, 10 mouth, 11 upper lip, 12 lower lip, 13 hair, 14 hat,
# 15 earring, 16 necklace, 17 neck, 18 cloth. The face is everything but background, hat, necklace, neck and
# cloth (the same selection facexlib's own paste-back makes); hair is kept because the restorer redraws it
# inside the crop and cutting along the hairline shows.
FACE_CLASSES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15)


class FaceParser:
    """A loaded ParseNet. Use `load_face_parser`."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.net = net

    def __repr__(self) -> str:
        return f"FaceParser(device={self.device})"

    @property
    def device(self) -> torch.device:
        return _first_tensor(self.net).device

    def to(self, device: torch.device | str) -> FaceParser:
        """Move to `device` (for offloading between runs); returns self."""
        self.net.to(torch.device(device))
        return self

    def face_mask(self, crop: np.ndarray, *, size: int | None = None) -> np.ndarray:
        """Soft face mask of an aligned crop.

        Args:
            crop: float32 [S, S, C] in 0..1 (C = 1, 3 or 4; grey is repeated, alpha ignored).
            size: side of the returned mask; default S.

        Returns:
            float32 [size, size] in 0..1: the probability that each pixel belongs to the face (`FACE_CLASSES`).
        """
        crop = check_image(crop, "crop")
        side = crop.shape[0] if size is None else int(size)
        rgb = to_rgb(crop)
        interpolation = cv2.INTER_AREA if rgb.shape[0] > PARSE_SIZE else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (PARSE_SIZE, PARSE_SIZE), interpolation=interpolation)
        batch = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
        mask = self.face_probability(batch).cpu().numpy().astype(np.float32)
        if side != PARSE_SIZE:
            interpolation = cv2.INTER_AREA if side < PARSE_SIZE else cv2.INTER_LINEAR
            mask = cv2.resize(mask, (side, side), interpolation=interpolation)
        return mask


    def face_probability(self, rgb: torch.Tensor) -> torch.Tensor:
        """The face mask of an RGB batch of one `[1, 3, S, S]` in 0..1 on any device, resized to PARSE_SIZE there if
        it is not (antialiased bilinear): float32 `[PARSE_SIZE, PARSE_SIZE]` in 0..1 on the parser's device."""
        batch = rgb.to(self.device, torch.float32)
        if batch.shape[-1] != PARSE_SIZE:
            batch = torch.nn.functional.interpolate(batch, size=(PARSE_SIZE, PARSE_SIZE), mode="bilinear",
                                                    align_corners=False, antialias=True)
        batch = (batch.to(_first_tensor(self.net).dtype) - 0.5) / 0.5
        with torch.inference_mode():
            logits = self.net(batch)[0]
            probabilities = torch.softmax(logits.float(), dim=1)[0]
            return probabilities[list(FACE_CLASSES)].sum(dim=0).clamp(0.0, 1.0)


def _first_tensor(module: torch.nn.Module) -> torch.Tensor:
    """A parameter or buffer of `module`, telling its device and dtype (a CPU float32 scalar if it has none)."""
    for tensor in module.parameters():
        return tensor
    for tensor in module.buffers():
        return tensor
    return torch.zeros(())


def load_face_parser(model_dir: str | Path, *, device: torch.device | str = "cpu") -> FaceParser:
    """Load ParseNet from `model_dir/parsing_parsenet.pth` (downloaded there first if missing) onto `device`."""
    path = resolve_known_weights("parsenet", model_dir)
    # Imported here: facexlib is only needed once a parser is wanted.
    from facexlib.parsing.parsenet import ParseNet

    net = ParseNet(in_size=PARSE_SIZE, out_size=PARSE_SIZE, parsing_ch=PARSE_CLASSES)
    load_state_dict_into(net, path, "parsenet")
    return FaceParser(net.to(torch.device(device)).eval())


class FaceParserCache:
    """The last parser loaded, kept for reuse while its weights file stays the same (path, size and modification
    time), so a replaced file is read again and nothing stale is ever used."""

    def __init__(self) -> None:
        self._key: tuple[str, int, int] | None = None
        self._parser: FaceParser | None = None

    def get(self, model_dir: str | Path, *, device: torch.device | str = "cpu") -> FaceParser:
        """`load_face_parser(model_dir, ...)`, or the parser loaded before from the same, unchanged file (returned
        wherever it was last moved)."""
        path = Path(model_dir) / KNOWN_WEIGHTS["parsenet"].filename
        stat = path.stat() if path.is_file() else None
        key = (str(path), stat.st_size, stat.st_mtime_ns) if stat else None
        if self._parser is None or key is None or key != self._key:
            self._parser = load_face_parser(model_dir, device=device)
            # A first use downloads the file: key it by what is there now.
            stat = path.stat()
            self._key = (str(path), stat.st_size, stat.st_mtime_ns)
        return self._parser
