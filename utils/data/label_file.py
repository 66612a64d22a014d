"""One YOLO label file: rows -> validated boxes (and polygons), plus notes on what was odd.

One object per row:

* box row: ``cls cx cy w h`` (normalized to [0, 1] by the image width/height);
* polygon row: ``cls x1 y1 x2 y2 x3 y3 ...`` (normalized); its box is the polygon's extent.

A file with at least one polygon row is a segment file: its box rows become 4-point polygons so
that ``segments`` stays aligned with ``labels``. A row that cannot be trusted (wrong value count,
a non-number or NaN, a class that is not a non-negative integer, a negative size, coordinates far
outside [0, 1]) raises LabelError naming file and line: the scan then skips the image, since
training on it with that object dropped would teach the model that the object is background.
"""

from __future__ import annotations

import numpy as np

from utils.errors import LabelError

COORD_TOL = 0.01  # normalized coordinates may exceed [0, 1] by this much (rounding in converters)
NOTE_DUPLICATES = "duplicate rows"  # the kinds of notes, as the scan's warnings group them
NOTE_CRLF = "CRLF line endings"


def _polygon_to_box(points: np.ndarray) -> np.ndarray:
    """(k, 2) normalized xy points -> (4,) normalized [cx, cy, w, h] of their extent."""
    (x1, y1), (x2, y2) = points.min(0), points.max(0)
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dtype=np.float32)


def _box_to_polygon(box: np.ndarray) -> np.ndarray:
    """(4,) normalized [cx, cy, w, h] -> (4, 2) corner points, clockwise from top-left."""
    cx, cy, w, h = box
    x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=np.float32)


def _parse_row(line: str, where: str) -> np.ndarray:
    """One text row -> float64 values; LabelError (prefixed by ``where`` = file:line) when untrustworthy."""
    parts = line.split()
    if len(parts) < 5 or (len(parts) > 5 and (len(parts) < 7 or len(parts) % 2 == 0)):
        raise LabelError(f"{where}: expected 'cls cx cy w h' or 'cls x1 y1 x2 y2 x3 y3 ...', got {len(parts)} values")
    try:
        row = np.array([float(p) for p in parts], dtype=np.float64)
    except ValueError:
        raise LabelError(f"{where}: non-numeric value in '{line.strip()}'") from None
    if not np.isfinite(row).all():
        raise LabelError(f"{where}: non-finite value in '{line.strip()}'")
    cls = row[0]
    if cls < 0 or cls != int(cls):
        raise LabelError(f"{where}: class must be a non-negative integer, got {parts[0]}")
    if len(row) == 5 and (row[3] < 0 or row[4] < 0):
        raise LabelError(f"{where}: negative box size in '{line.strip()}'")
    if (row[1:] < -COORD_TOL).any() or (row[1:] > 1 + COORD_TOL).any():
        raise LabelError(f"{where}: coordinates outside [0, 1] in '{line.strip()}' (not normalized?)")
    return row


def parse_label_text(text: str, label_file: str) -> tuple[np.ndarray, list[np.ndarray], list[tuple[str, str]]]:
    """Parse the text of ``label_file`` (see the module docstring).

    Returns (labels float32 (n, 5) [cls, cx, cy, w, h] normalized, segments ([] or n float32
    (k, 2) normalized polygons), notes [(kind, line naming the file)]). Exact duplicate rows are
    removed with a note; CRLF line endings are read as usual, with a note. An empty file is the
    YOLO way to mark a background image: no note (the scan's summary counts backgrounds).
    """
    notes = []
    if "\r\n" in text:
        notes.append((NOTE_CRLF, f"{label_file}: Windows (CRLF) line endings, read as usual"))
    numbered = [(n, ln) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    rows = [_parse_row(ln, f"{label_file}:{n}") for n, ln in numbered]
    # Exact duplicate rows are annotation mistakes; keeping them would double the loss of one object.
    keys = [tuple(r) for r in rows]
    unique_idx = sorted({k: i for i, k in reversed(list(enumerate(keys)))}.values())
    if len(unique_idx) < len(rows):
        notes.append((NOTE_DUPLICATES, f"{label_file}: {len(rows) - len(unique_idx)} duplicate rows removed"))
    rows = [rows[i] for i in unique_idx]
    if not any(len(r) > 5 for r in rows):
        labels = np.array(rows, dtype=np.float32).reshape(-1, 5)
        labels[:, 1:] = labels[:, 1:].clip(0, 1)
        return labels, [], notes
    segments, labels = [], []
    for r in rows:
        pts = r[1:].reshape(-1, 2).astype(np.float32) if len(r) > 5 else _box_to_polygon(r[1:5])
        pts = pts.clip(0, 1)
        segments.append(pts)
        labels.append(np.concatenate([[r[0]], _polygon_to_box(pts)]))
    return np.array(labels, dtype=np.float32).reshape(-1, 5), segments, notes


def read_label_file(label_file: str) -> tuple[np.ndarray, list[np.ndarray], list[tuple[str, str]]]:
    """:func:`parse_label_text` of the file's bytes (not UTF-8: undecodable bytes become U+FFFD,
    which then fail as non-numeric). Raises OSError when the file cannot be read."""
    with open(label_file, "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    return parse_label_text(text, label_file)
