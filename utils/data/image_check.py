"""Image files of a dataset: what the label scan checks, and a decoder that keeps libjpeg quiet.

``check_image(path)`` decodes a file exactly as training does (``cv2.imread``, 3-channel BGR, EXIF
orientation applied, 16-bit scaled to 8 bits) and says what is unusual about it:

* content that is no image (a text file named ``.jpg``), a file the decoder cannot read, or an
  image under ``MIN_IMAGE_SIDE`` pixels -> :class:`UnreadableImage` (the scan skips it);
* content of another format than the name says (a PNG named ``.jpg``), 16-bit samples, an alpha
  channel, an EXIF orientation -> a note (the image is used as decoded);
* a damaged JPEG: no end-of-image marker (``FF D9``, a truncated file) or a decoder complaint
  ("Premature end of JPEG file", "Corrupt JPEG data ...") -> a note and ``damaged=True`` when the
  decoder still returns pixels (libjpeg fills what is missing with grey).

libjpeg, inside OpenCV, prints its complaints straight to the process's stderr (file descriptor 2),
where Python cannot catch them. Each decode here therefore runs with fd 2 pointed at a temporary
file (one decode at a time, under a lock), so the complaint becomes part of the note that names the
file. A damaged image is read the same way every time it is loaded (``read_image(path, quiet=True)``),
so the console never sees libjpeg's lines; the dataset folder is never written (YOLOv5 overwrites
the user's file with a re-saved copy instead).
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from utils.image_formats import file_suffix

MIN_IMAGE_SIDE = 10  # pixels; smaller "images" are almost always broken files
JPEG_EOI = b"\xff\xd9"  # the end-of-image marker every complete JPEG ends with
EXIF_ORIENTATION = 0x0112
# suffixes that fit each format Pillow can name (only these formats are checked against the name)
SUFFIXES_OF_FORMAT = {"JPEG": {"jpg", "jpeg", "jpe", "mpo"}, "MPO": {"jpg", "jpeg", "mpo"}, "PNG": {"png"},
                      "TIFF": {"tif", "tiff", "dng"}, "BMP": {"bmp"}, "WEBP": {"webp"}}
ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_STDERR_LOCK = threading.Lock()  # fd 2 is one per process: one captured decode at a time


class UnreadableImage(Exception):
    """An image file the scan must skip; the message names the file and the reason."""


NOTE_FORMAT = "image format"  # the kinds of notes, as the scan's warnings group them
NOTE_DAMAGED = "damaged image"


@dataclass
class ImageCheck:
    """Result of :func:`check_image`: size (w, h) as decoded, notes ((kind, line naming the file)
    each) and whether the file is damaged and must be decoded quietly."""

    size: tuple[int, int]
    notes: list[tuple[str, str]] = field(default_factory=list)
    damaged: bool = False


@contextmanager
def captured_stderr_fd() -> Iterator[list[str]]:
    """Point file descriptor 2 at a temporary file for the block; the list gets what was written.

    Catches what C libraries print (libjpeg, libpng), which ``sys.stderr`` replacements cannot.
    Serialized by a lock: fd 2 belongs to the whole process.
    """
    out: list[str] = []
    with _STDERR_LOCK, tempfile.TemporaryFile() as tmp:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", errors="replace"))


def stderr_lock() -> threading.Lock:
    """The lock held while fd 2 is captured: hold it to write to stderr from another thread of the
    process (a progress bar), or the text would end up in a decode's capture."""
    return _STDERR_LOCK


def read_image(path: str, quiet: bool = False) -> np.ndarray | None:
    """``cv2.imread(path, IMREAD_COLOR)``: (h, w, 3) uint8 BGR or None; ``quiet`` swallows what the
    decoder prints (for files :func:`check_image` found damaged)."""
    if not quiet:
        return cv2.imread(path, cv2.IMREAD_COLOR)
    with captured_stderr_fd():
        return cv2.imread(path, cv2.IMREAD_COLOR)


def _one_line(text: str) -> str:
    """Decoder output as one line: its distinct non-empty lines joined by '; '."""
    lines = list(dict.fromkeys(ln.strip() for ln in text.splitlines() if ln.strip()))
    return "; ".join(lines)


def _bit_depth(im: Image.Image, path: str) -> int:
    """Bits per sample from the header (Pillow opens 16-bit RGB as 8-bit 'RGB', so ask the file)."""
    if im.mode.startswith("I;16"):
        return 16
    if im.format == "TIFF":
        bits = im.tag_v2.get(258, (8,))
        return int(max(bits) if isinstance(bits, tuple) else bits)
    if im.format == "PNG":
        with open(path, "rb") as f:
            head = f.read(25)
        return head[24] if len(head) == 25 else 8  # IHDR bit depth
    return 8


def _header_notes(path: str) -> tuple[list[tuple[str, str]], str | None]:
    """Notes from the file header (format vs name, depth, alpha, EXIF) and Pillow's format name.

    The format is None when Pillow does not know the content (OpenCV may still read it).
    """
    try:
        with Image.open(path) as im:
            fmt, notes = im.format, []
            suffix = file_suffix(path)
            if fmt in SUFFIXES_OF_FORMAT and suffix not in SUFFIXES_OF_FORMAT[fmt]:
                notes.append((NOTE_FORMAT, f"{path}: {fmt} data in a .{suffix} file, read by its content"))
            bits = _bit_depth(im, path)
            if bits > 8:
                notes.append((NOTE_FORMAT, f"{path}: {bits}-bit image, scaled to 8 bits per channel"))
            if im.mode in ALPHA_MODES or (im.mode == "P" and "transparency" in im.info):
                notes.append((NOTE_FORMAT, f"{path}: alpha channel ({im.mode}) dropped"))
            orientation = im.getexif().get(EXIF_ORIENTATION, 1)
            if orientation not in (0, 1):
                turned = "pixels turned as viewers show them (labels must be for the turned image)"
                notes.append((NOTE_FORMAT, f"{path}: EXIF orientation {orientation}, {turned}"))
            return notes, fmt
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return [], None


def _jpeg_ends_with_eoi(path: str) -> bool:
    """Whether the file ends with the JPEG end-of-image marker (trailing zero padding allowed)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64))
        return f.read().rstrip(b"\0").endswith(JPEG_EOI)


def check_image(path: str) -> ImageCheck:
    """Decode ``path`` as training will and describe it (see the module docstring).

    Raises UnreadableImage naming the file when it cannot be used.
    """
    notes, fmt = _header_notes(path)
    with captured_stderr_fd() as said:
        img = cv2.imread(path, cv2.IMREAD_COLOR)
    complaint = _one_line(said[0])
    if img is None:
        what = "not an image (unknown content)" if fmt is None else f"{fmt} data the decoder cannot read"
        raise UnreadableImage(f"{path}: {what}" + (f" ({complaint})" if complaint else ""))
    h, w = img.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise UnreadableImage(f"{path}: image is only {w}x{h} pixels")
    damaged = False
    if fmt in ("JPEG", "MPO") and not _jpeg_ends_with_eoi(path):
        damaged = True
        notes.append((NOTE_DAMAGED, f"{path}: truncated JPEG (no end-of-image marker), missing part filled "
                                    "with grey" + (f" ({complaint})" if complaint else "")))
    elif complaint:  # a complete file the decoder still complained about (corrupt data, bad profile ...)
        damaged = True
        notes.append((NOTE_DAMAGED, f"{path}: damaged image, decoded anyway ({complaint})"))
    return ImageCheck(size=(w, h), notes=notes, damaged=damaged)
