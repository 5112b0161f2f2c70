"""The command line's progress bar and result lines."""

from __future__ import annotations

import sys
import time

# Without a terminal (a log file, CI) every image gets a progress line, but a video only about this many: one
# line per frame of a long video would bury the result lines.
FRAME_LINES = 10


class ProgressLine:
    """A one-line progress bar on stderr: images (or a video's frames) done, faces restored, elapsed time.

    For a video or a sequence (`begin(total, "frames")`) the bar follows `steps(done, total)` from
    `pipeline.restore_frames`, which covers both of its passes (finding the faces, then restoring them), while the
    text counts the frames written."""

    WIDTH = 30

    def __init__(self, images: int, unit: str = "images") -> None:
        self.start = time.monotonic()
        self.interactive = sys.stderr.isatty()
        self.begin(images, unit)

    def begin(self, total: int, unit: str) -> None:
        """Start counting `total` `unit` (the faces count restarts too)."""
        self.total, self.unit, self.done, self.faces = total, unit, 0, 0
        self.fraction: float | None = None

    def face(self) -> None:
        self.faces += 1
        self._draw()

    def steps(self, done: int, total: int) -> None:
        """Work done so far of `total` steps (see `pipeline.OnProgress`)."""
        self.fraction = done / max(total, 1)
        self._draw()

    def report(self, line: str) -> None:
        """A result line (what was written, how many faces) on stdout, above the bar."""
        if self.interactive:
            sys.stderr.write("\r\x1b[K")  # clear the bar's line; the next draw puts it back below
            sys.stderr.flush()
        print(line, flush=True)

    def image_done(self) -> None:
        self.done += 1
        every = 1 if self.unit == "images" else max(1, self.total // FRAME_LINES)
        self._draw(force=self.done % every == 0 or self.done == self.total)

    def finish(self) -> None:
        if self.interactive:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def _draw(self, force: bool = False) -> None:
        fraction = self.done / max(self.total, 1) if self.fraction is None else self.fraction
        filled = round(self.WIDTH * min(fraction, 1.0))
        finding = "finding faces: " if self.fraction is not None and self.done == 0 else ""
        line = (f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {finding}{self.done}/{self.total} {self.unit}, "
                f"{self.faces} faces, {time.monotonic() - self.start:.1f}s")
        if self.interactive:
            sys.stderr.write("\r" + line)
        elif force:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()
