"""Image file extensions the project reads, defined once for datasets and inference sources.

Extensions are lower case without the dot. OpenCV decodes by content, not by name, so the list
only decides which files in a folder count as images; a listed file that OpenCV cannot decode is
reported where it is read.
"""

from __future__ import annotations

from pathlib import Path

IMG_FORMATS = ("bmp", "dng", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp", "pfm")


def file_suffix(path: str | Path) -> str:
    """Lower-case extension of ``path`` without the dot ('' when it has none)."""
    return Path(path).suffix[1:].lower()


def is_image_file(path: str | Path) -> bool:
    """True when the name of ``path`` ends in one of :data:`IMG_FORMATS` (case-insensitive)."""
    return file_suffix(path) in IMG_FORMATS
