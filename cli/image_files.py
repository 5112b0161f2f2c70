"""Reading and writing image files for the command line: whole files only, written in place atomically.

OpenCV's decoders fill the missing rest of a truncated JPEG with grey (and some of a truncated PNG) without
failing, so a cut-off file would be restored and written as if it were whole. Files are therefore read as bytes
and their container checked for completeness (JPEG end marker, PNG chunks and checksums up to IEND, WebP/BMP
declared sizes) before they are decoded.

The command line plans its jobs with this module (suffixes, `output_problem`) before it knows that there is work
to do, so OpenCV and numpy are imported by the functions that read and write pixels, not with the module.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")  # what OpenCV reads and writes
SIXTEEN_BIT_SUFFIXES = (".png", ".tif", ".tiff")  # formats OpenCV writes with 16 bits per channel

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"  # start of image
JPEG_SOS = b"\xff\xda"  # start of scan: entropy-coded data follows, in which 0xFF is always escaped as FF00
JPEG_EOI = b"\xff\xd9"  # end of image


class ImageFileError(ValueError):
    """An image file that cannot be read (missing, empty, not an image, truncated) or written; the message names
    the file, what was found and what to do."""


def read_image(path: Path) -> tuple[np.ndarray, int]:
    """An image file as float32 `[H, W, C]` RGB(A) or grey in [0, 1], upright (EXIF orientation applied), and
    the bit depth to write results in: 16 for 16-bit and floating-point files, else 8.

    Raises `ImageFileError` for an unreadable, empty, truncated or corrupt file, or one that is not an image.
    """
    import cv2  # deferred, like numpy: planning a command line's jobs imports this module without decoding
    import numpy as np

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageFileError(f"{path}: cannot read this file ({exc.strerror or type(exc).__name__})") from exc
    if not data:
        raise ImageFileError(f"{path}: empty file (0 bytes); expected an image ({', '.join(IMAGE_SUFFIXES)})")
    problem = incomplete_reason(data)
    if problem is not None:
        raise ImageFileError(
            f"{path}: truncated or corrupt image ({len(data):,} bytes; {problem}); copy or download it again"
        )
    buffer = np.frombuffer(data, np.uint8)
    pixels = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if pixels is None and format_name(data) is not None:
        raise ImageFileError(
            f"{path}: truncated or corrupt image ({len(data):,} bytes; a {format_name(data)} that OpenCV cannot "
            "decode); copy or download it again"
        )
    if pixels is None:
        raise ImageFileError(
            f"{path}: not an image: OpenCV cannot decode it (it starts with {data[:8]!r}); expected a PNG, JPEG, "
            "WebP, BMP or TIFF file"
        )
    if pixels.ndim == 2 or pixels.shape[2] != 4:
        # IMREAD_UNCHANGED ignores EXIF orientation (phone photos would come out sideways); without an alpha
        # channel to keep, decode again the way that applies it.
        pixels = cv2.imdecode(buffer, cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
    depth = 16 if pixels.dtype in (np.uint16, np.float32, np.float64) else 8
    scale = {np.dtype(np.uint16): 65535.0, np.dtype(np.uint8): 255.0}.get(pixels.dtype, 1.0)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    elif pixels.shape[2] == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)  # OpenCV boundary: BGR on disk, RGB inside
    elif pixels.shape[2] == 4:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGBA)
    return (pixels.astype(np.float32) / scale).clip(0, 1), depth


def format_name(data: bytes) -> str | None:
    """The image format `data` starts like (by its signature), or None."""
    if data.startswith(PNG_SIGNATURE):
        return "PNG"
    if data.startswith(JPEG_SOI):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return None


def incomplete_reason(data: bytes) -> str | None:
    """Why the file `data` is cut off or damaged, judged from its container (PNG, JPEG, WebP, BMP); None when it
    looks whole or the format is not one of those (the decoder then decides)."""
    if data.startswith(PNG_SIGNATURE):
        return _png_problem(memoryview(data))
    if data.startswith(JPEG_SOI):
        last_scan = data.rfind(JPEG_SOS)
        if last_scan < 0:
            return "a JPEG without image data"
        if data.find(JPEG_EOI, last_scan) < 0:
            return "a JPEG that ends before its end-of-image marker"
        return None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        declared = int.from_bytes(data[4:8], "little") + 8
        return f"a WebP of {declared:,} bytes cut short" if len(data) < declared else None
    if data[:2] == b"BM" and len(data) >= 6:
        declared = int.from_bytes(data[2:6], "little")  # some writers leave it 0
        return f"a BMP of {declared:,} bytes cut short" if len(data) < declared else None
    return None


def _png_problem(data: memoryview) -> str | None:
    """Walk the PNG chunks (length, type, data, CRC-32 of type and data) up to IEND."""
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        kind = bytes(data[position + 4:position + 8]).decode("latin-1")
        end = position + 12 + length
        if end > len(data):
            return f"a PNG that ends inside its {kind} chunk"
        # Only critical chunks (upper-case first letter) count: libpng, too, skips an ancillary chunk (text,
        # colour profile) whose checksum fails, and such files are common.
        critical = kind[:1].isupper()
        if critical and zlib.crc32(data[position + 4:end - 4]) != int.from_bytes(data[end - 4:end], "big"):
            return f"a PNG whose {kind} chunk fails its checksum"
        if kind == "IEND":
            return None
        position = end
    return "a PNG that ends before its IEND chunk"


def write_image(path: Path, image: np.ndarray, depth: int = 8) -> None:
    """Write float `[H, W, C]` RGB(A) or grey in [0, 1], creating folders as needed: 16-bit when `depth` is 16
    and the format has it (PNG, TIFF), else 8-bit. The file appears whole or not at all (written beside it, then
    renamed). Raises `ImageFileError` naming the file and the system's reason (no space, no permission)."""
    import cv2  # deferred, like numpy: planning a command line's jobs imports this module without encoding
    import numpy as np

    if depth == 16 and path.suffix.lower() in SIXTEEN_BIT_SUFFIXES:
        data = np.clip(np.rint(image * 65535.0), 0, 65535).astype(np.uint16)
    else:
        data = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    if data.shape[2] == 3:
        data = cv2.cvtColor(data, cv2.COLOR_RGB2BGR)
    elif data.shape[2] == 4:
        data = cv2.cvtColor(data, cv2.COLOR_RGBA2BGRA)
    try:
        encoded_ok, encoded = cv2.imencode(path.suffix, data)
    except cv2.error:
        encoded_ok = False
    if not encoded_ok:
        raise ImageFileError(
            f"{path}: OpenCV cannot write '{path.suffix}' files; use one of {', '.join(IMAGE_SUFFIXES)}"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A short name of its own (the target's name plus a suffix could pass the file system's 255-byte limit),
        # opened like any new file so the result gets the usual permissions (mkstemp's would be owner-only).
        temp_path = path.parent / f".restore_faces-{os.getpid()}.part"
        try:
            with temp_path.open("wb") as file:
                file.write(encoded.tobytes())
            os.replace(temp_path, path)
        finally:
            temp_path.unlink(missing_ok=True)
    except OSError as exc:
        reason = output_problem(path) or exc.strerror or str(exc)
        raise ImageFileError(f"{path}: cannot write it ({reason})") from exc


def output_problem(target: Path) -> str | None:
    """Why `target` cannot be written, found without writing anything: it is a folder, a file stands where a
    folder would be created, or the nearest existing folder is not writable. None when nothing is in the way."""
    if target.is_dir():
        return f"{target} is a folder, so the image cannot be written there"
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is a file, not a folder, so {target} cannot be created under it"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"the folder {ancestor} is not writable (permission denied)"
    return None
