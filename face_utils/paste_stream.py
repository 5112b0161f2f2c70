"""Pasting a batch's faces frame by frame, with each person's colour correction smoothed over time.

Colour correction maps a restored face's colour mean and spread onto the original face's, per channel. Measured
anew in every frame, the original's numbers move with sensor noise, compression and the landmark jitter that
shifts the mask, and the pasted face flickers with them; averaged over a short window of frames of the same
person they are steady, while each frame's restored face is still mapped exactly onto them (so the restorer's
own frame-to-frame colour wobble is removed as in a single photo). The window is two-sided,
so a few frames wait (prepared, not yet blended) until the frames after them are known: memory stays a few
frames' worth, however long the video. Smoothing never crosses a shot boundary or a gap in a person's track.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from .colour import ColourStats
from .paste import PasteSettings, PreparedFace
from .pixels import OPENCV_PIXELS, Pixels
from .records import FaceRecord

# Frames on each side of a frame whose colour statistics are averaged into it, and the Gaussian weight's sigma
# (frames). At 24-30 fps the window spans about a third of a second: long enough to average the frame-to-frame
# wobble of a restorer's colour, short enough to follow a real change of light.
COLOUR_WINDOW_FRAMES = 4
COLOUR_SIGMA_FRAMES = 2.0

FrameSink = Callable[[int, np.ndarray, "np.ndarray | None"], None]
"""Called as sink(index, frame, mask) with each finished frame in order; mask is None where no face was pasted."""


class PasteStream:
    """Frames go in (`push`) in order, with their restored crops and faces; finished frames come out in order
    through `sink` once the frames after them are known (`finish` flushes the rest).

    Frames with faces and their crops are the `pixels` backend's (numpy for OpenCV, tensors on a GPU); frames
    without faces are numpy arrays, passed through. The sink always gets numpy.

    `shots` are the half-open frame ranges of the batch's shots (see `pipeline.detect_faces`); with `smooth`
    False (or faces without a track id) every face keeps its own colour statistics, as a single photo does.
    """

    def __init__(
        self, settings: PasteSettings, sink: FrameSink, *, shots: Sequence[tuple[int, int]] = (),
        smooth: bool = True, parser: object | None = None, pixels: Pixels = OPENCV_PIXELS,
    ) -> None:
        self.settings, self.sink, self.parser, self.pixels = settings, sink, parser, pixels
        self.shots = list(shots)
        self.smooth = smooth and settings.color_correction
        self.window = COLOUR_WINDOW_FRAMES if self.smooth else 0
        self._pending: deque[tuple[int, object, list[PreparedFace | None]]] = deque()
        self._colours: dict[tuple[int, int], dict[int, ColourStats]] = {}  # (shot, track) -> frame -> colour

    def push(self, index: int, frame: object, crops: Sequence, faces: Sequence[FaceRecord]) -> None:
        prepared = self.pixels.prepare_faces(frame, crops, faces, self.settings, parser=self.parser) if faces else []
        for face in prepared:
            key = self._key(face, index)
            if key is not None and face.colour is not None:
                self._colours.setdefault(key, {})[index] = face.colour
        self._pending.append((index, frame, prepared))
        while self._pending and self._pending[0][0] <= index - self.window:
            self._flush()

    def finish(self) -> None:
        while self._pending:
            self._flush()

    def _flush(self) -> None:
        index, frame, prepared = self._pending.popleft()
        if not prepared:
            self.sink(index, frame, None)
        else:
            colours = [self._smoothed(face, index) if face is not None else None for face in prepared]
            self.sink(index, *self.pixels.blend_faces(frame, prepared, self.settings, colours=colours))
        # Statistics older than any frame still waiting can no longer be used.
        oldest = self._pending[0][0] if self._pending else index + 1
        for key in list(self._colours):
            kept = {t: c for t, c in self._colours[key].items() if t >= oldest - self.window}
            if kept:
                self._colours[key] = kept
            else:
                del self._colours[key]

    def _key(self, face: PreparedFace, index: int) -> tuple[int, int] | None:
        if not self.smooth or face.face.track_id is None:
            return None
        shot = next((start for start, stop in self.shots if start <= index < stop), 0)
        return shot, face.face.track_id

    def _smoothed(self, face: PreparedFace, index: int) -> ColourStats | None:
        """This face's statistics with the original's mean and spread replaced by their Gaussian-weighted mean
        over this person's frames around `index` that are contiguous with it (a gap in the track ends the
        window); the restored face's own statistics stay this frame's."""
        key = self._key(face, index)
        if key is None or face.colour is None:
            return None
        series = self._colours.get(key, {})
        frames = [index]
        for step in (-1, 1):
            t = index + step
            while abs(t - index) <= self.window and t in series:
                frames.append(t)
                t += step
        weights = np.array([math.exp(-0.5 * ((t - index) / COLOUR_SIGMA_FRAMES) ** 2) for t in frames])
        weights /= weights.sum()
        # Plain floats, so the statistics keep their type (numpy arrays, or tensors on the frames' device).
        mean = sum(float(w) * series[t].reference_mean for w, t in zip(weights, frames))
        std = sum(float(w) * series[t].reference_std for w, t in zip(weights, frames))
        return dataclasses.replace(face.colour, reference_mean=mean, reference_std=std)
