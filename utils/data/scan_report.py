"""What the label scan tells the user: class ids against the names, orphan labels, warnings, summary.

The scan (utils/data/label_cache.py) gives one :class:`ScanResult` per image. This module applies
what depends on the dataset YAML rather than on the files (the class range: the cache stays valid
when only ``names`` changes), finds label files without an image, logs the warnings (the first
``MAX_LISTED_WARNINGS`` of each kind, each naming its file) and one summary line per split::

    train: Scanned 20 images: 13 kept (4 background), 7 skipped (bad label row 5, unreadable image 1,
    class out of range 1), 1 label file without image, 23 boxes
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.errors import LabelError
from utils.image_formats import is_image_file

LOGGER = logging.getLogger("utils.data.label_cache")  # one logger for the whole scan
MAX_LISTED_WARNINGS = 10  # per kind of warning; the rest are counted
MAX_LISTED_FILES = 5  # files named by the out-of-range error
SKIP_IMAGE = "unreadable image"  # the reasons an image is skipped (also kinds of warnings)
SKIP_ROW = "bad label row"
SKIP_CLASS = "class out of range"
NOTE_NO_LABEL = "no label file"
NOTE_ORPHAN = "label without image"


@dataclass
class ScanResult:
    """The scan of one image: size (w, h) as decoded, labels float32 (n, 5) [cls, cx, cy, w, h]
    normalized, segments (n float32 (k, 2) polygons or []), notes [(kind, line naming the file)],
    ``skip`` ('' when kept, else its reason) and ``damaged`` (decode quietly: see image_check)."""

    shape: tuple[int, int]
    labels: np.ndarray
    segments: list[np.ndarray]
    notes: list[tuple[str, str]] = field(default_factory=list)
    skip: str = ""
    damaged: bool = False


def skip_out_of_range(results: list[ScanResult], label_files: list[str], nc: int) -> tuple[int, list[str]]:
    """Skip (in place, with a note) every image with a class id >= nc.

    Returns (number of labelled images among those not skipped before, label files skipped here).
    """
    labelled, bad = 0, []
    for r, lf in zip(results, label_files):
        if r.skip or not len(r.labels):
            continue
        labelled += 1
        over = np.unique(r.labels[r.labels[:, 0] >= nc, 0]).astype(int)
        if len(over):
            bad.append(lf)
            r.skip = SKIP_CLASS
            ids = ", ".join(map(str, over))
            r.notes.append((SKIP_CLASS, f"{lf}: class {ids} outside the {nc} names (ids 0-{nc - 1}), image skipped"))
    return labelled, bad


def check_names_fit(labelled: int, bad: list[str], nc: int, prefix: str = "") -> None:
    """LabelError naming files when more than half of the labelled images have class ids >= nc:
    the dataset YAML's ``names`` is then wrong, not a few rows."""
    if len(bad) * 2 > labelled:
        listed = ", ".join(bad[:MAX_LISTED_FILES]) + (" ..." if len(bad) > MAX_LISTED_FILES else "")
        raise LabelError(f"{prefix}{len(bad)} of {labelled} labelled images have class ids >= {nc}, the number "
                         f"of names in the dataset YAML (is 'names' the right list?): {listed}")


def orphan_label_files(img_files: list[str], label_files: list[str]) -> list[str]:
    """Label files in the scanned label folders whose image is not on disk (any image suffix).

    Looks at the folders, not the image list, so a split given as a list of a few images does not
    make the labels of the others orphans. Folders where labels sit beside the images are left out
    (their .txt files may be image lists).
    """
    folders = {os.path.dirname(lf): os.path.dirname(im) for im, lf in zip(img_files, label_files)}
    orphans = []
    for label_dir, image_dir in sorted(folders.items()):
        if label_dir == image_dir or not os.path.isdir(label_dir):
            continue
        stems = {p.stem for p in Path(image_dir).iterdir() if is_image_file(p)} if os.path.isdir(image_dir) else set()
        orphans += [str(t) for t in sorted(Path(label_dir).glob("*.txt")) if t.stem not in stems]
    return orphans


def log_warnings(notes: list[tuple[str, str]], prefix: str) -> None:
    """One warning per note, at most MAX_LISTED_WARNINGS of each kind, then a count of the rest."""
    shown: Counter = Counter()
    for kind, text in notes:
        shown[kind] += 1
        if shown[kind] <= MAX_LISTED_WARNINGS:
            LOGGER.warning("%sWARNING: %s", prefix, text)
    for kind, n in shown.items():
        if n > MAX_LISTED_WARNINGS:
            LOGGER.warning("%sWARNING: ... and %d more '%s' warnings", prefix, n - MAX_LISTED_WARNINGS, kind)


def summary_line(results: list[ScanResult], n_orphans: int, source: str) -> str:
    """'<source> N images: K kept (B background), S skipped (reason n, ...), O label files without
    images, X boxes' (source: 'Scanned' or 'Cached')."""
    kept = [r for r in results if not r.skip]
    skipped = Counter(r.skip for r in results if r.skip)
    ordered = sorted(skipped.items(), key=lambda kn: (-kn[1], kn[0]))  # most frequent first, then by name
    reasons = f" ({', '.join(f'{k} {n}' for k, n in ordered)})" if skipped else ""
    plural = "" if n_orphans == 1 else "s"
    return (f"{source} {len(results)} images: {len(kept)} kept ({sum(len(r.labels) == 0 for r in kept)} background), "
            f"{sum(skipped.values())} skipped{reasons}, {n_orphans} label file{plural} without image{plural}, "
            f"{sum(len(r.labels) for r in kept)} boxes")


def report(results: list[ScanResult], img_files: list[str], label_files: list[str], prefix: str,
           source: str) -> None:
    """Log every note (capped per kind), the orphan label files and the summary line of a split."""
    orphans = orphan_label_files(img_files, label_files)
    notes = [n for r in results for n in r.notes]
    notes += [(NOTE_ORPHAN, f"{f}: label file without image") for f in orphans]
    log_warnings(notes, prefix)
    LOGGER.info("%s%s", prefix, summary_line(results, len(orphans), source))
