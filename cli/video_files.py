"""Reading and writing video files for the command line, through PyAV (FFmpeg's libraries, bundled in its wheels).

PyAV is an optional extra of the pack (`pip install av`, or the `video` extra): it is imported only when a video
is given, so images and folders of frames never need it. A video is read as a `pipeline.FrameSource` that decodes
from the start on every pass (faces are found in a first pass, restored in a second), one frame alive at a time;
the result is encoded as frames arrive, with the source's frame timing and colour tags, and its audio packets
copied unchanged (remuxed, never re-encoded) between the video packets, so memory stays bounded by a few frames.

The command line plans its jobs with this module (suffixes, `is_video`), so numpy, too, is imported only where
frames are converted.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..model_files.errors import MissingDependencyError

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".m4v", ".avi", ".webm")  # containers FFmpeg reads and writes
DEFAULT_VIDEO_SUFFIX = ".mp4"  # plays everywhere with H.264 and AAC
INSTALL_HINT = "pip install av (or the pack's extra: pip install 'comfyui-gpen-restore[video]')"

# x264's constant-quality setting: 0 is lossless, 51 worst; FFmpeg's H.264 guide calls 17-18 "visually lossless".
X264_OPTIONS = {"crf": "17", "preset": "medium"}
# MPEG-4 part 2 (the fallback when a PyAV build lacks libx264) has no CRF: a bit rate of 0.3 bits per pixel and
# frame is near-transparent for it (about 18 Mbit/s for 1080p at 30 fps).
MPEG4_BITS_PER_PIXEL = 0.3
MPEG4_MAX_TIME_BASE_DEN = 65535  # the MPEG-4 part 2 standard's limit on the time base's denominator


# FFmpeg's enum values that say nothing about a video's colours: 0 is "reserved" (for the matrix: RGB, which a YUV
# output cannot be) and 2 "unspecified"; for the range 0 is "unspecified" (1 limited, 2 full).
UNTAGGED = {"colorspace": (0, 2), "color_primaries": (0, 2), "color_trc": (0, 2), "color_range": (0,)}


class VideoFileError(ValueError):
    """A video that cannot be read (no video stream, undecodable) or written; the message names the file, what
    was found and what to do."""


def import_av() -> ModuleType:
    """The `av` module, or `MissingDependencyError` saying how to install it."""
    try:
        import av
    except ImportError as exc:
        raise MissingDependencyError(
            f"Video files need PyAV, which is not installed here: {INSTALL_HINT}. Image files and folders of "
            "frames (--sequence) work without it"
        ) from exc
    return av


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


class VideoFrames:
    """A video file as a `pipeline.FrameSource`: `len()` is its frame count (the container's, else counted in a
    decoding pass) and each iteration decodes it from the start, yielding float32 RGB `[H, W, 3]` in 0..1,
    upright (a display rotation, as phones record, is applied).

    Also holds what the writer needs from the source: frame rate, time base, colour tags and, after a pass,
    each frame's presentation time (`pts`, one int per frame).
    """

    def __init__(self, path: Path) -> None:
        self.av = import_av()
        self.path = path
        try:
            with self.av.open(str(path)) as container:
                if not container.streams.video:
                    kinds = ", ".join(s.type for s in container.streams) or "no streams at all"
                    raise VideoFileError(f"{path}: no video stream in this file ({kinds}); expected a video")
                stream = container.streams.video[0]
                self.rate: Fraction = stream.average_rate or stream.guessed_rate or Fraction(25)
                self.time_base: Fraction = stream.time_base or 1 / self.rate
                declared = stream.frames
                context = stream.codec_context
                self.colour = {"colorspace": context.colorspace, "color_range": context.color_range,
                               "color_primaries": context.color_primaries, "color_trc": context.color_trc}
                self.has_audio = bool(container.streams.audio)
        except self.av.FFmpegError as exc:
            raise VideoFileError(f"{path}: FFmpeg cannot open it as a video ({exc}); it may be truncated, damaged "
                                 "or not a video file") from exc
        self._count: int | None = declared or None
        self.pts: list[int | None] = []

    def __len__(self) -> int:
        if self._count is None:  # some containers (raw streams, some WebM) do not store it
            self._count = sum(1 for _ in self._decode())
        return self._count

    def __iter__(self) -> Iterator[np.ndarray]:
        import numpy as np  # deferred: planning a command line's jobs imports this module without any frame

        for index, frame in enumerate(self._decode()):
            if index == len(self.pts):
                self.pts.append(frame.pts)
            # Rotated pixels are not a view any OpenCV call accepts: copy them contiguous, once.
            rgb = frame.reformat(format="rgb24", interpolation=conversion_flags(self.av)).to_ndarray()
            rgb = np.rot90(rgb, k=round(frame.rotation / 90) % 4)
            yield np.ascontiguousarray(rgb, dtype=np.float32) / np.float32(255.0)

    def _decode(self) -> Iterator[Any]:
        with self.av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # FFmpeg's frame and slice threads: decoding is not the bottleneck
            decoded = 0
            try:
                for frame in container.decode(stream):
                    decoded += 1
                    yield frame
            except self.av.FFmpegError as exc:
                raise VideoFileError(f"{self.path}: decoding failed after {decoded} frame(s) ({exc}); the file is "
                                     "damaged or truncated: copy or download it again") from exc


def conversion_flags(av: ModuleType) -> Any:
    """swscale's flags for YUV <-> RGB: with its defaults (bilinear, fast rounding, chroma not interpolated) each
    round trip darkens by about one 8-bit level and blurs colour edges; with exact rounding and full chroma
    interpolation a round trip has no bias and half the error (measured on the fixture portrait)."""
    flags = av.video.reformatter.Interpolation
    return flags.BICUBIC | flags.ACCURATE_RND | flags.FULL_CHR_H_INT


def video_codec(available: set[str] | frozenset[str]) -> str:
    """The encoder to write with: H.264 (libx264) where this PyAV build has it, else MPEG-4 part 2."""
    return "libx264" if "libx264" in available else "mpeg4"


class VideoWriter:
    """Encode float RGB frames `[H, W, 3]` in 0..1 into `target` as they come, with `source`'s frame times and
    colour tags and its first audio stream copied; use as a context manager. The file appears whole or not at
    all (written beside it, renamed at the end); `audio` says afterwards what became of the sound."""

    def __init__(self, target: Path, source: VideoFrames) -> None:
        self.target, self.source, self.av = target, source, source.av
        self.audio = "audio copied" if source.has_audio else "no audio in the source"
        self._temp = target.parent / f".restore_faces-{os.getpid()}.part{target.suffix}"
        self._output: Any = None
        self._video: Any = None
        self._audio_input: Any = None
        self._audio_stream: Any = None
        self._audio_packets: Iterator[Any] | None = None
        self._pending_audio: Any = None
        self._last_pts = -1

    def __enter__(self) -> VideoWriter:
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self._output = self.av.open(str(self._temp), "w")
        except (OSError, self.av.FFmpegError) as exc:
            self._abandon()
            raise VideoFileError(f"{self.target}: cannot write it ({exc})") from exc
        return self

    def write(self, index: int, frame: np.ndarray) -> None:
        """Encode frame `index` of the source (`[H, W, 3]` float RGB in 0..1; frames come in order), then the
        audio that plays up to it."""
        import numpy as np  # deferred: planning a command line's jobs imports this module without any frame

        try:
            if self._video is None:
                self._open_video(frame.shape[1], frame.shape[0])
            rgb = np.clip(np.rint(frame[..., :3] * 255.0), 0, 255).astype(np.uint8)
            picture = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            picture = picture.reformat(format=self._video.pix_fmt, dst_colorspace=self._colour("colorspace"),
                                       dst_color_range=self._colour("color_range"),
                                       interpolation=conversion_flags(self.av))
            picture.pts = self._pts(index)
            picture.time_base = self._video.codec_context.time_base
            for packet in self._video.encode(picture):
                self._output.mux(packet)
            self._copy_audio(until=float(picture.pts * picture.time_base))
        except (OSError, self.av.FFmpegError) as exc:  # FFmpeg's own errors, and the disk's (full, removed)
            raise VideoFileError(f"{self.target}: encoding or writing failed ({exc})") from exc

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        if exc_type is not None:
            self._abandon()
            return
        try:
            if self._video is None:
                raise VideoFileError(f"{self.target}: no frame was decoded from {self.source.path}, so there is "
                                     "nothing to write; check that the video plays")
            for packet in self._video.encode(None):  # flush the encoder's delayed frames
                self._output.mux(packet)
            self._copy_audio(until=float("inf"))
            self._output.close()
            self._output = None
            self._close_audio_input()
            os.replace(self._temp, self.target)
        except (OSError, self.av.FFmpegError) as error:
            self._abandon()
            raise VideoFileError(f"{self.target}: cannot write it ({error})") from error
        except BaseException:
            self._abandon()
            raise

    def _open_video(self, width: int, height: int) -> None:
        codec = video_codec(self.av.codecs_available)
        stream = self._output.add_stream(codec, rate=self.source.rate)
        stream.width, stream.height = width, height
        # 4:2:0 chroma needs even sides; x264 takes 4:4:4 for odd ones (MPEG-4 part 2 has no 4:4:4).
        stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 or codec != "libx264" else "yuv444p"
        time_base = self.source.time_base
        if codec == "libx264":
            stream.options = dict(X264_OPTIONS)
        else:
            stream.bit_rate = round(MPEG4_BITS_PER_PIXEL * width * height * float(self.source.rate))
            if time_base.denominator > MPEG4_MAX_TIME_BASE_DEN:
                time_base = 1 / self.source.rate  # constant frame rate: timing finer than a frame is lost
        stream.codec_context.time_base = time_base
        for name in self.source.colour:
            if self._colour(name) is not None:
                setattr(stream.codec_context, name, self._colour(name))
        self._video = stream
        if self.source.has_audio:  # after the video, so the picture is the first stream, as players expect
            self._open_audio()
        logger.info("writing %s with %s %s at %s fps (time base %s)", self.target, codec, stream.pix_fmt,
                    self.source.rate, time_base)

    def _colour(self, name: str) -> int | None:
        """The source's colour tag `name` (an FFmpeg enum value), None where it says nothing, so that FFmpeg's
        defaults apply, as they did when the source was decoded."""
        value = self.source.colour[name]
        return None if value in UNTAGGED[name] else value

    def _pts(self, index: int) -> int:
        """Frame `index`'s time in the encoder's time base: the source frame's own (a variable frame rate stays as
        it was), else one frame after the last."""
        time_base = self._video.codec_context.time_base
        source_pts = self.source.pts[index] if index < len(self.source.pts) else None
        if source_pts is None:
            pts = self._last_pts + max(1, round(1 / (self.source.rate * time_base)))
        else:
            pts = round(source_pts * self.source.time_base / time_base)
        pts = max(pts, self._last_pts + 1)  # strictly increasing, as encoders require
        self._last_pts = pts
        return pts

    def _open_audio(self) -> None:
        self._audio_input = self.av.open(str(self.source.path))
        template = self._audio_input.streams.audio[0]
        codec = template.codec_context.name
        if codec not in self._output.supported_codecs:
            self.audio = (f"audio dropped: {codec} audio cannot go in a {self.target.suffix} file; write a .mkv to "
                          "keep it")
            logger.warning("%s: %s", self.target, self.audio)
            self._close_audio_input()
            return
        self._audio_stream = self._output.add_stream_from_template(template)
        self._audio_packets = iter(self._audio_input.demux(template))

    def _copy_audio(self, until: float) -> None:
        """Mux the source's audio packets that start before `until` (seconds), keeping the file interleaved."""
        if self._audio_packets is None:
            return
        while True:
            packet = self._pending_audio if self._pending_audio is not None else next(self._audio_packets, None)
            self._pending_audio = None
            if packet is None:
                self._audio_packets = None
                return
            if packet.dts is None:  # the demuxer's empty flush packet
                continue
            if packet.pts is not None and float(packet.pts * packet.time_base) > until:
                self._pending_audio = packet
                return
            packet.stream = self._audio_stream
            self._output.mux(packet)

    def _close_audio_input(self) -> None:
        if self._audio_input is not None:
            self._audio_input.close()
            self._audio_input = None
        self._audio_packets = None

    def _abandon(self) -> None:
        """Close everything and remove the partial file (a failed video leaves nothing behind)."""
        try:
            if self._output is not None:
                self._output.close()
        except self.av.FFmpegError:
            pass  # the file is removed below; its close error adds nothing to the error being raised
        self._output = None
        self._close_audio_input()
        self._temp.unlink(missing_ok=True)
