"""The label scan of a split: every image and its YOLO label file checked once, cached on disk.

Label layout (YOLOv5): ``.../images/<split>/x.jpg`` has its labels in ``.../labels/<split>/x.txt``
(the last ``images`` path component is replaced by ``labels``); rows are parsed by
utils/data/label_file.py, images checked by utils/data/image_check.py. A missing or empty label
file means "no objects". An image that cannot be decoded, or whose label file has a row that
cannot be trusted, is skipped; so is (with ``nc``) an image with a class id outside the dataset's
names. Every odd file gets one warning naming it and the reason, and each split one summary line
(utils/data/scan_report.py).

The scan result is cached in ``labels/<split>.cache`` (a NumPy ``.npz`` of plain arrays, read with
``allow_pickle=False``) and reused while a hash of every image/label path, size and mtime matches.
The cache holds what the files say; the class range is applied after reading it, so editing
``names`` needs no rescan.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from utils.data.image_check import UnreadableImage, check_image, stderr_lock
from utils.data.label_file import read_label_file
from utils.data.scan_report import (NOTE_NO_LABEL, SKIP_IMAGE, SKIP_ROW, ScanResult, check_names_fit, report,
                                    skip_out_of_range)
from utils.errors import LabelError

LOGGER = logging.getLogger(__name__)
CACHE_VERSION = 3  # 2: notes with kinds, skip reason and damaged flag per image; 3: no note for empty label files


@dataclass
class LabelSet:
    """Validated labels of the usable images, all lists aligned with ``img_files``.

    shapes: int64 (N, 2) original image (w, h). labels[i]: float32 (n, 5) [cls, cx, cy, w, h]
    normalized. segments[i]: [] for box labels, else n float32 (k, 2) polygons, normalized xy.
    damaged[i]: the image decodes but its decoder complains; read it with
    ``image_check.read_image(path, quiet=True)``.
    """

    img_files: list[str]
    label_files: list[str]
    shapes: np.ndarray
    labels: list[np.ndarray]
    segments: list[list[np.ndarray]]
    damaged: list[bool]


def img2label_paths(img_files: list[str]) -> list[str]:
    """Map image paths to label paths: last ``/images/`` component -> ``/labels/``, suffix -> .txt."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    out = []
    for f in img_files:
        head, sep, tail = f.rpartition(sa)
        mapped = f"{head}{sb}{tail}" if sep else f
        out.append(str(Path(mapped).with_suffix(".txt")))
    return out


def _no_objects() -> np.ndarray:
    return np.zeros((0, 5), np.float32)


def _scan_one(pair: tuple[str, str]) -> ScanResult:
    """Check one (image, label file) pair; never raises for a bad file (the result says skip)."""
    img_file, label_file = pair
    try:
        image = check_image(img_file)
    except (UnreadableImage, OSError) as e:
        return ScanResult((0, 0), _no_objects(), [], [(SKIP_IMAGE, f"{e}, image skipped")], skip=SKIP_IMAGE)
    if not os.path.isfile(label_file):
        note = (NOTE_NO_LABEL, f"{img_file}: no label file {label_file}, the image is a background")
        return ScanResult(image.size, _no_objects(), [], [*image.notes, note], damaged=image.damaged)
    try:
        labels, segments, notes = read_label_file(label_file)
    except (LabelError, OSError) as e:
        return ScanResult(image.size, _no_objects(), [], [*image.notes, (SKIP_ROW, f"{e}, image skipped")],
                          skip=SKIP_ROW, damaged=image.damaged)
    return ScanResult(image.size, labels, segments, [*image.notes, *notes], damaged=image.damaged)


def files_hash(img_files: list[str], label_files: list[str]) -> str:
    """Hash of every path, size and mtime (images and labels) so any edit invalidates the cache."""
    h = hashlib.sha256(f"v{CACHE_VERSION}".encode())
    for f in (*img_files, *label_files):
        try:
            st = os.stat(f)
            h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{f}|missing\n".encode())
    return h.hexdigest()


def cache_path(label_files: list[str]) -> Path:
    """Cache file beside the labels folder: ``labels/train/x.txt`` -> ``labels/train.cache``."""
    return Path(label_files[0]).parent.with_suffix(".cache")


def _pack(files: list[str], results: list[ScanResult], digest: str) -> dict[str, np.ndarray]:
    """Flatten scan results into plain arrays (no Python objects, so no pickle on load)."""
    labels = [r.labels for r in results]
    segs = [s for r in results for s in r.segments]
    notes = [n for r in results for n in r.notes]
    return {
        "version": np.array(CACHE_VERSION),
        "hash": np.array(digest),
        "files": np.array(files, dtype=str),
        "skip": np.array([r.skip for r in results], dtype=str),
        "damaged": np.array([r.damaged for r in results], dtype=bool),
        "nnote": np.array([len(r.notes) for r in results], dtype=np.int64),
        "note_kinds": np.array([k for k, _ in notes], dtype=str),
        "note_texts": np.array([t for _, t in notes], dtype=str),
        "shapes": np.array([r.shape for r in results], dtype=np.int64).reshape(-1, 2),
        "nlab": np.array([len(x) for x in labels], dtype=np.int64),
        "labels": np.concatenate(labels, 0) if labels else _no_objects(),
        "nseg": np.array([len(r.segments) for r in results], dtype=np.int64),
        "npts": np.array([len(s) for s in segs], dtype=np.int64),
        "points": np.concatenate(segs, 0) if segs else np.zeros((0, 2), np.float32),
    }


def _split(flat: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """Cut ``flat`` into consecutive pieces of ``counts`` rows each."""
    return np.split(flat, np.cumsum(counts)[:-1]) if len(counts) else []


def _unpack(arrs: dict[str, np.ndarray]) -> list[ScanResult]:
    """Inverse of :func:`_pack`."""
    labels = _split(arrs["labels"], arrs["nlab"])
    polygons = _split(arrs["points"], arrs["npts"])
    seg_ends = np.cumsum(arrs["nseg"])
    segments = [list(polygons[end - n: end]) for n, end in zip(arrs["nseg"], seg_ends)]
    kinds, texts = _split(arrs["note_kinds"], arrs["nnote"]), _split(arrs["note_texts"], arrs["nnote"])
    return [ScanResult(shape=(int(arrs["shapes"][i][0]), int(arrs["shapes"][i][1])), labels=labels[i].reshape(-1, 5),
                       segments=segments[i], notes=[(str(k), str(t)) for k, t in zip(kinds[i], texts[i])],
                       skip=str(arrs["skip"][i]), damaged=bool(arrs["damaged"][i]))
            for i in range(len(arrs["files"]))]


def _read_cache(path: Path, digest: str) -> list | None:
    """Return cached scan results when ``path`` holds a cache with this hash, else None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrs = {k: z[k] for k in z.files}
        if int(arrs["version"]) != CACHE_VERSION or str(arrs["hash"]) != digest:
            return None
        return _unpack(arrs)
    except (OSError, ValueError, KeyError, EOFError):
        return None  # missing, stale format or corrupt: rescan


def _write_cache(path: Path, arrs: dict[str, np.ndarray], prefix: str) -> None:
    """Write atomically (temp file + rename); a read-only dataset folder only gets a warning."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        # A folder without any write bit is read-only by intent (shared datasets); respect it even
        # when running as root, where os.access and open() would ignore the mode bits.
        if not (path.parent.stat().st_mode & 0o222):
            raise PermissionError("read-only folder")
        with open(tmp, "wb") as f:  # a file object stops np.savez from appending '.npz'
            np.savez(f, **arrs)
        os.replace(tmp, path)
    except OSError as e:
        LOGGER.warning("%sWARNING: cache not saved, folder %s is not writeable (%s)", prefix, path.parent, e)
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def _scan(img_files: list[str], label_files: list[str], prefix: str) -> list[ScanResult]:
    """Scan every pair with a small thread pool: label parsing and file reads overlap; the decodes
    themselves take turns (each captures fd 2, see image_check)."""
    pairs = list(zip(img_files, label_files))
    workers = max(1, min(4, os.cpu_count() or 1))
    results = []
    # miniters=1: no refresh from tqdm's monitor thread; the bar only draws in update(), under the
    # lock of the decoders' stderr capture, so its text never lands in a decode's complaint
    bar = tqdm(total=len(pairs), desc=f"{prefix}Scanning labels", disable=len(pairs) < 100, leave=False, miniters=1)
    with ThreadPoolExecutor(workers) as pool, bar:
        for r in pool.map(_scan_one, pairs):
            results.append(r)
            with stderr_lock():
                bar.update()
    return results


def load_labels(img_files: list[str], prefix: str = "", use_cache: bool = True, nc: int | None = None) -> LabelSet:
    """Validate ``img_files`` and their labels, reusing ``labels/<split>.cache`` when up to date.

    With ``nc`` (the number of names in the dataset YAML) images with a class id >= nc are skipped.
    Returns a :class:`LabelSet` of the usable images (skipped ones are left out and logged).
    Raises LabelError when no usable image remains, or when more than half of the labelled images
    have class ids >= nc (a wrong names list).
    """
    if not img_files:
        raise LabelError(f"{prefix}no images given")
    label_files = img2label_paths(img_files)
    digest = files_hash(img_files, label_files)
    path = cache_path(label_files)
    results = _read_cache(path, digest) if use_cache else None
    source = "Cached"
    if results is None or len(results) != len(img_files):
        results, source = _scan(img_files, label_files, prefix), "Scanned"
        if use_cache:
            _write_cache(path, _pack(img_files, results, digest), prefix)
    labelled, out_of_range = skip_out_of_range(results, label_files, nc) if nc is not None else (0, [])
    report(results, img_files, label_files, prefix, source)
    check_names_fit(labelled, out_of_range, nc, prefix)
    keep = [i for i, r in enumerate(results) if not r.skip]
    if not keep:
        raise LabelError(f"{prefix}no usable images among {len(img_files)} (first: {img_files[0]})")
    return LabelSet(
        img_files=[img_files[i] for i in keep],
        label_files=[label_files[i] for i in keep],
        shapes=np.array([results[i].shape for i in keep], dtype=np.int64).reshape(-1, 2),
        labels=[results[i].labels for i in keep],
        segments=[results[i].segments for i in keep],
        damaged=[results[i].damaged for i in keep],
    )
