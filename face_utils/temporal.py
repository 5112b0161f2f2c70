"""Restored detail that holds still on video: each restored face is combined with the same person's restored faces
in the neighbouring frames, pixel by pixel, where their inputs agree.

GPEN invents detail (pores, hair, lashes) from its input, and each frame invents its own, so even a steady face
shimmers. The aligned crops of one track already share one coordinate frame, so a pixel of a face's crop can be
averaged with the same pixel of its neighbours' crops; each neighbour weighs by its distance in time and by how
alike the *input* crops are there, so what really changes (a blink, a mouth, a turned head) follows the input and
only the invented detail is steadied. Two-sided, within a track's shot (tracks never cross a cut), in bounded
memory: `radius` frames of look-ahead.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .face_set import FaceSet
from .records import FaceRecord
from .torch_pixels import gaussian_blur

# Neighbours on each side, and the Gaussian (in frames) that weighs them by distance in time.
RADIUS_FRAMES = 3
TIME_SIGMA_FRAMES = 2.0
# Inputs are compared at this side (the weights are smooth; a 2048-px crop compared whole would cost as much as a
# good part of GPEN), after a blur of this many of its pixels, so that the input's noise does not count as change,
# only structure does.
COMPARE_SIZE = 256
COMPARE_BLUR_PX = 1.0
# A neighbour's weight falls to exp(-1) where its input differs from this face's by this many times the typical
# (median) difference between consecutive inputs of the track: noise passes, a blink does not.
AGREEMENT_SCALE = 4.0

Emit = Callable[[int, object, torch.Tensor | None, Sequence[FaceRecord]], None]
"""emit(frame_index, frame, restored crops [n, S, S, C] or None, faces) for each frame, in order."""


@dataclass
class _Frame:
    index: int
    frame: object
    faces: Sequence[FaceRecord]
    inputs: list[torch.Tensor] | None  # aligned input crops as compared (`_blurred`), one per face
    restored: torch.Tensor | None  # restored crops [n, S', S', C], combined


class TemporalConsistency:
    """Frames in, frames out (`radius` later), with each face's restored crop combined with its track's neighbours.
    `push` every frame in order, then `finish`."""

    def __init__(self, emit: Emit, shots: Sequence[tuple[int, int]], radius: int = RADIUS_FRAMES) -> None:
        self.emit, self.radius = emit, radius
        self.shots = list(shots)  # track ids restart in every shot: neighbours are taken from the same one
        self.window: deque[_Frame] = deque()
        self.next_out = 0  # position in `window` of the next frame to emit

    def push(self, index: int, frame: object, faces: Sequence[FaceRecord], inputs: torch.Tensor | None,
             restored: torch.Tensor | None) -> None:
        side = None if restored is None else min(restored.shape[1], COMPARE_SIZE)
        compared = None if inputs is None else [_blurred(crop, side) for crop in inputs]  # once per frame
        self.window.append(_Frame(index, frame, faces, compared, restored))
        while len(self.window) - 1 - self.next_out >= self.radius:
            self._emit_next()

    def finish(self) -> None:
        while self.next_out < len(self.window):
            self._emit_next()

    def _emit_next(self) -> None:
        current = self.window[self.next_out]
        self.emit(current.index, current.frame, self._combined(current), current.faces)
        self.next_out += 1
        while self.next_out > self.radius:  # what no later frame needs any more
            self.window.popleft()
            self.next_out -= 1

    def _combined(self, current: _Frame) -> torch.Tensor | None:
        if current.restored is None or current.inputs is None:
            return current.restored
        # Written to a new batch: the faces as restored are the later frames' neighbours.
        out, shot = torch.empty_like(current.restored), self._shot(current.index)
        for position, face in enumerate(current.faces):
            neighbours = [] if face.track_id is None else [
                (other.index - current.index, other.inputs[i], other.restored[i])
                for other in self.window if other is not current and other.inputs is not None
                and abs(other.index - current.index) <= self.radius and self._shot(other.index) == shot
                for i, f in enumerate(other.faces) if f.track_id == face.track_id]
            if neighbours:
                combine(current.inputs[position], current.restored[position], neighbours, out=out[position])
            else:
                out[position] = current.restored[position]
        return out

    def _shot(self, index: int) -> int:
        return next((number for number, (start, stop) in enumerate(self.shots) if start <= index < stop), -1)


def steady_batch(inputs: torch.Tensor, restored: torch.Tensor, faces: FaceSet) -> torch.Tensor:
    """The restored crops of a whole batch `[N, S', S', C]` (one per face of `faces`, in its order, as the
    separate nodes hold them), each combined in place with its track's neighbours as the one-node restore combines
    them; `inputs` `[N, S, S, C]` are the crops that were restored. Faces without neighbours keep their crop.
    Returns `restored`."""
    positions = faces.positions_by_frame()

    def emit(index: int, _frame: object, combined: torch.Tensor | None, _faces: Sequence[FaceRecord]) -> None:
        restored[positions[index]] = combined

    steady = TemporalConsistency(emit, faces.shots)
    for index in sorted(positions):  # frames without faces have no neighbours to give
        chosen = positions[index]
        # Indexing by a list copies: the window keeps each frame's crops as restored while the batch is rewritten.
        steady.push(index, None, [faces.faces[p] for p in chosen], inputs[chosen], restored[chosen])
    steady.finish()
    return restored


def combine(own_input: torch.Tensor, own: torch.Tensor, neighbours: Sequence[tuple[int, torch.Tensor, torch.Tensor]],
            *, out: torch.Tensor) -> torch.Tensor:
    """A restored crop `own` [S', S', C] averaged with its neighbours' (offset in frames, compared input,
    restored), each pixel weighted by the time Gaussian and by how alike the inputs are there (see the module),
    written into `out` (returned). Inputs come as `_blurred` makes them."""
    differences = [((own_input - other_input) ** 2).sum(dim=-1) for _offset, other_input, _restored in neighbours]
    # The typical difference between inputs of the track: consecutive frames' noise (and slow motion).
    typical = torch.stack([d.median() for d in differences]).min().clamp(min=1e-8)
    weights = [torch.ones_like(differences[0])] + [
        math.exp(-0.5 * (offset / TIME_SIGMA_FRAMES) ** 2) * torch.exp(-difference / (AGREEMENT_SCALE * typical))
        for (offset, _input, _restored), difference in zip(neighbours, differences)]
    # Normalised where they are smooth (at the comparison size), then brought to the crop's size all at once.
    weights = torch.stack(weights)
    weights = weights / weights.sum(dim=0, keepdim=True)
    size = own.shape[0]
    if weights.shape[-1] != size:
        weights = F.interpolate(weights[None], size=(size, size), mode="bilinear", align_corners=False)[0]
    weights = weights[..., None].to(own.dtype)
    torch.mul(own, weights[0], out=out)
    for weight, (_offset, _input, restored) in zip(weights[1:], neighbours):
        out.addcmul_(weight, restored.to(own.dtype))
    return out


def _blurred(crop: torch.Tensor, size: int) -> torch.Tensor:
    """An input crop [S, S, C] as RGB at `size`, blurred by COMPARE_BLUR_PX per COMPARE_SIZE px of side."""
    chw = crop[..., :3].movedim(-1, 0)[None].float()
    if chw.shape[1] == 1:
        chw = chw.expand(-1, 3, -1, -1)
    if chw.shape[-1] != size:
        chw = F.interpolate(chw, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return gaussian_blur(chw, COMPARE_BLUR_PX * size / COMPARE_SIZE)[0].movedim(0, -1)
