"""YOLO label files: parsing, validation and an on-disk cache of the scan.

Label layout (YOLOv5): ``.../images/<split>/x.jpg`` has its labels in ``.../labels/<split>/x.txt``
(the last ``images`` path component is replaced by ``labels``). One object per row:

* box row: ``cls cx cy w h`` (normalized to [0, 1] by the image width/height);
* polygon row: ``cls x1 y1 x2 y2 x3 y3 ...`` (normalized); its box is the polygon's extent.

A file with at least one polygon row is a segment file: its box rows become 4-point polygons so
that ``segments`` stays aligned with ``labels``. A missing or empty label file means "no objects".
An image whose label file has a bad row, or that cannot be decoded, is skipped with one warning.

The scan result is cached in ``labels/<split>.cache`` (a NumPy ``.npz`` of plain arrays, read with
``allow_pickle=False``) and reused while a hash of every image/label path, size and mtime matches.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from utils.errors import LabelError

LOGGER = logging.getLogger(__name__)
CACHE_VERSION = 1
COORD_TOL = 0.01  # normalized coordinates may exceed [0, 1] by this much (rounding in converters)
MIN_IMAGE_SIDE = 10  # pixels; smaller "images" are almost always broken files
MAX_LISTED_WARNINGS = 10


@dataclass
class LabelSet:
    """Validated labels of the usable images, all lists aligned with ``img_files``.

    shapes: int64 (N, 2) original image (w, h). labels[i]: float32 (n, 5) [cls, cx, cy, w, h]
    normalized. segments[i]: [] for box labels, else n float32 (k, 2) polygons, normalized xy.
    """

    img_files: list[str]
    label_files: list[str]
    shapes: np.ndarray
    labels: list[np.ndarray]
    segments: list[list[np.ndarray]]


def img2label_paths(img_files: list[str]) -> list[str]:
    """Map image paths to label paths: last ``/images/`` component -> ``/labels/``, suffix -> .txt."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    out = []
    for f in img_files:
        head, sep, tail = f.rpartition(sa)
        mapped = f"{head}{sb}{tail}" if sep else f
        out.append(str(Path(mapped).with_suffix(".txt")))
    return out


def _polygon_to_box(points: np.ndarray) -> np.ndarray:
    """(k, 2) normalized xy points -> (4,) normalized [cx, cy, w, h] of their extent."""
    (x1, y1), (x2, y2) = points.min(0), points.max(0)
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dtype=np.float32)


def _box_to_polygon(box: np.ndarray) -> np.ndarray:
    """(4,) normalized [cx, cy, w, h] -> (4, 2) corner points, clockwise from top-left."""
    cx, cy, w, h = box
    x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=np.float32)


def _parse_rows(lines: list[str], label_file: str) -> list[np.ndarray]:
    """Split text rows into float arrays, raising LabelError for wrong counts or non-numbers."""
    rows = []
    for n, line in enumerate(lines, 1):
        parts = line.split()
        if len(parts) < 5 or (len(parts) > 5 and (len(parts) < 7 or len(parts) % 2 == 0)):
            raise LabelError(f"{label_file}:{n}: expected 'cls cx cy w h' or 'cls x1 y1 x2 y2 x3 y3 ...', "
                             f"got {len(parts)} values")
        try:
            row = np.array([float(p) for p in parts], dtype=np.float64)
        except ValueError:
            raise LabelError(f"{label_file}:{n}: non-numeric value in '{line.strip()}'") from None
        if not np.isfinite(row).all():
            raise LabelError(f"{label_file}:{n}: non-finite value in '{line.strip()}'")
        cls = row[0]
        if cls < 0 or cls != int(cls):
            raise LabelError(f"{label_file}:{n}: class must be a non-negative integer, got {parts[0]}")
        if (row[1:] < -COORD_TOL).any() or (row[1:] > 1 + COORD_TOL).any():
            raise LabelError(f"{label_file}:{n}: coordinates must be normalized to [0, 1]")
        rows.append(row)
    return rows


def parse_label_file(label_file: str) -> tuple[np.ndarray, list[np.ndarray], int]:
    """Read one YOLO label file.

    Returns (labels float32 (n, 5) [cls, cx, cy, w, h] normalized, segments ([] or n float32
    (k, 2) normalized polygons), number of duplicate rows removed). A missing file gives no
    objects. Raises LabelError on a malformed row.
    """
    if not os.path.isfile(label_file):
        return np.zeros((0, 5), np.float32), [], 0
    with open(label_file, encoding="utf-8", errors="replace") as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
    rows = _parse_rows(lines, label_file)
    # Exact duplicate rows are annotation mistakes; keeping them would double the loss of one object.
    keys = [tuple(r) for r in rows]
    unique_idx = sorted({k: i for i, k in reversed(list(enumerate(keys)))}.values())
    n_dup = len(rows) - len(unique_idx)
    rows = [rows[i] for i in unique_idx]
    if not any(len(r) > 5 for r in rows):
        labels = np.array(rows, dtype=np.float32).reshape(-1, 5)
        labels[:, 1:] = labels[:, 1:].clip(0, 1)
        return labels, [], n_dup
    segments, labels = [], []
    for r in rows:
        pts = r[1:].reshape(-1, 2).astype(np.float32) if len(r) > 5 else _box_to_polygon(r[1:5])
        pts = pts.clip(0, 1)
        segments.append(pts)
        labels.append(np.concatenate([[r[0]], _polygon_to_box(pts)]))
    return np.array(labels, dtype=np.float32).reshape(-1, 5), segments, n_dup


def read_image_size(img_file: str) -> tuple[int, int]:
    """Decode an image fully (to catch corrupt files) and return its (w, h); LabelError if unusable."""
    img = cv2.imread(img_file, cv2.IMREAD_COLOR)
    if img is None:
        raise LabelError(f"{img_file}: cannot read image (missing, corrupt or unsupported format)")
    h, w = img.shape[:2]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise LabelError(f"{img_file}: image is only {w}x{h} pixels")
    return w, h


def _scan_one(pair: tuple[str, str]) -> tuple[tuple[int, int], np.ndarray, list[np.ndarray], str]:
    """Scan one (image, label) pair -> ((w, h), labels, segments, message); message '' when fine.

    A non-empty message that starts with 'skipped' means the image is unusable.
    """
    img_file, label_file = pair
    try:
        shape = read_image_size(img_file)
        labels, segments, n_dup = parse_label_file(label_file)
    except (LabelError, OSError) as e:
        return (0, 0), np.zeros((0, 5), np.float32), [], f"skipped: {e}"
    msg = f"{label_file}: {n_dup} duplicate rows removed" if n_dup else ""
    return shape, labels, segments, msg


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


def _pack(files: list[str], results: list, digest: str) -> dict[str, np.ndarray]:
    """Flatten scan results into plain arrays (no Python objects, so no pickle on load)."""
    labels = [r[1] for r in results]
    segs = [s for r in results for s in r[2]]
    return {
        "version": np.array(CACHE_VERSION),
        "hash": np.array(digest),
        "files": np.array(files, dtype=str),
        "msgs": np.array([r[3] for r in results], dtype=str),
        "shapes": np.array([r[0] for r in results], dtype=np.int64).reshape(-1, 2),
        "nlab": np.array([len(x) for x in labels], dtype=np.int64),
        "labels": np.concatenate(labels, 0) if labels else np.zeros((0, 5), np.float32),
        "nseg": np.array([len(r[2]) for r in results], dtype=np.int64),
        "npts": np.array([len(s) for s in segs], dtype=np.int64),
        "points": np.concatenate(segs, 0) if segs else np.zeros((0, 2), np.float32),
    }


def _unpack(arrs: dict[str, np.ndarray]) -> list:
    """Inverse of :func:`_pack`: per-image ((w, h), labels, segments, message)."""
    labels = np.split(arrs["labels"], np.cumsum(arrs["nlab"])[:-1]) if len(arrs["nlab"]) else []
    points = np.split(arrs["points"], np.cumsum(arrs["npts"])[:-1]) if len(arrs["npts"]) else []
    seg_ends = np.cumsum(arrs["nseg"])
    results = []
    for i in range(len(arrs["files"])):
        segs = points[seg_ends[i] - arrs["nseg"][i]: seg_ends[i]]
        results.append((tuple(int(v) for v in arrs["shapes"][i]), labels[i].reshape(-1, 5), list(segs),
                        str(arrs["msgs"][i])))
    return results


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


def _scan(img_files: list[str], label_files: list[str], prefix: str) -> list:
    """Scan every pair with a small thread pool (cv2 decoding releases the GIL)."""
    pairs = list(zip(img_files, label_files))
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        it = pool.map(_scan_one, pairs)
        return list(tqdm(it, total=len(pairs), desc=f"{prefix}Scanning labels", disable=len(pairs) < 100,
                         leave=False))


def _report(results: list, img_files: list[str], prefix: str, source: str) -> None:
    """Log skipped images (the first few individually) and a one-line summary."""
    msgs = [r[3] for r in results if r[3]]
    for m in msgs[:MAX_LISTED_WARNINGS]:
        LOGGER.warning("%sWARNING: %s", prefix, m)
    if len(msgs) > MAX_LISTED_WARNINGS:
        LOGGER.warning("%sWARNING: ... and %d more label warnings", prefix, len(msgs) - MAX_LISTED_WARNINGS)
    n_skip = sum(m.startswith("skipped") for m in msgs)
    n_bg = sum(len(r[1]) == 0 for r in results if not r[3].startswith("skipped"))
    LOGGER.info("%s%s %d images: %d backgrounds, %d skipped, %d boxes", prefix, source, len(img_files),
                n_bg, n_skip, sum(len(r[1]) for r in results))


def load_labels(img_files: list[str], prefix: str = "", use_cache: bool = True) -> LabelSet:
    """Validate ``img_files`` and their labels, reusing ``labels/<split>.cache`` when up to date.

    Returns a :class:`LabelSet` of the usable images (skipped ones are left out and logged).
    Raises LabelError when no usable image remains.
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
    _report(results, img_files, prefix, source)
    keep = [i for i, r in enumerate(results) if not r[3].startswith("skipped")]
    if not keep:
        raise LabelError(f"{prefix}no usable images among {len(img_files)} (first: {img_files[0]})")
    return LabelSet(
        img_files=[img_files[i] for i in keep],
        label_files=[label_files[i] for i in keep],
        shapes=np.array([results[i][0] for i in keep], dtype=np.int64).reshape(-1, 2),
        labels=[results[i][1] for i in keep],
        segments=[results[i][2] for i in keep],
    )
