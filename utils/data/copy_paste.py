"""Small-object copy-paste (after Kisantal et al., "Augmentation for small object detection", 2019).

Small objects are rare in the pixels of an image and so in the positive samples of the loss;
pasting extra copies of them, in the same image and at the same scale, adds positives without
changing the object appearance statistics. Pasted copies never cover an existing object or
another copy, and keep a margin from the image border so they stay whole after a mild crop.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def _overlaps(rect: np.ndarray, occupied: np.ndarray) -> bool:
    """True when xyxy ``rect`` (4,) has a positive-area intersection with any row of ``occupied`` (m, 4)."""
    if not len(occupied):
        return False
    ix = np.minimum(rect[2], occupied[:, 2]) - np.maximum(rect[0], occupied[:, 0])
    iy = np.minimum(rect[3], occupied[:, 3]) - np.maximum(rect[1], occupied[:, 1])
    return bool(((ix > 0) & (iy > 0)).any())


def _find_spot(size_wh: tuple[int, int], img_wh: tuple[int, int], occupied: np.ndarray, border: int,
               rng: np.random.Generator, tries: int) -> np.ndarray | None:
    """Random free top-left spot for a patch: xyxy int rect or None after ``tries`` failures."""
    (pw, ph), (W, H) = size_wh, img_wh
    hi_x, hi_y = W - border - pw, H - border - ph
    if hi_x < border or hi_y < border:
        return None
    for _ in range(tries):
        x, y = int(rng.integers(border, hi_x + 1)), int(rng.integers(border, hi_y + 1))
        rect = np.array([x, y, x + pw, y + ph], np.float32)
        if not _overlaps(rect, occupied):
            return rect
    return None


def _source_patch(img: np.ndarray, box: np.ndarray,
                  polygon: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]]:
    """Integer pixel rect around ``box`` -> (patch (h, w, 3), mask (h, w) uint8 or None, origin (x, y))."""
    H, W = img.shape[:2]
    x1, y1 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    x2, y2 = min(W, math.ceil(box[2])), min(H, math.ceil(box[3]))
    patch = img[y1:y2, x1:x2]
    mask = None
    if polygon is not None and patch.size:
        mask = np.zeros(patch.shape[:2], np.uint8)
        cv2.fillPoly(mask, [np.round(polygon - (x1, y1)).astype(np.int32)], 1)
    return patch, mask, (x1, y1)


def _paste_one(dst: np.ndarray, patch: np.ndarray, mask: np.ndarray | None, rect: np.ndarray, flip: bool) -> None:
    """Write ``patch`` (resized to ``rect``, optionally mirrored) into ``dst``; only mask pixels if a mask is given."""
    x1, y1, x2, y2 = (int(v) for v in rect)
    size = (x2 - x1, y2 - y1)
    p = cv2.resize(patch, size, interpolation=cv2.INTER_LINEAR) if patch.shape[1::-1] != size else patch
    if flip:
        p = p[:, ::-1]
    region = dst[y1:y2, x1:x2]
    if mask is None:
        region[:] = p
        return
    m = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST) if mask.shape[::-1] != size else mask
    if flip:
        m = m[:, ::-1]
    region[m > 0] = p[m > 0]


def _map_points(pts: np.ndarray, origin: tuple[int, int], src_wh: tuple[int, int], rect: np.ndarray,
                flip: bool) -> np.ndarray:
    """Map (k, 2) pixel points from the source patch frame to the pasted rect (scale, mirror, offset)."""
    fx, fy = (rect[2] - rect[0]) / src_wh[0], (rect[3] - rect[1]) / src_wh[1]
    out = (pts - np.array(origin, np.float32)) * np.array([fx, fy], np.float32)
    if flip:
        out[:, 0] = (rect[2] - rect[0]) - out[:, 0]
    return (out + rect[:2]).astype(np.float32)


def _paste_copies(out: np.ndarray, src: np.ndarray, box: np.ndarray, poly: np.ndarray | None, n_copies: int,
                  occupied: np.ndarray, rng: np.random.Generator, max_area: float, flip: bool, scale: float,
                  border: int, tries: int) -> tuple[list[list[float]], list[np.ndarray], np.ndarray]:
    """Paste up to ``n_copies`` of one object of ``src`` into ``out``.

    Returns (new xyxy boxes, new polygons (when ``poly`` is given), occupied rects incl. the new ones).
    """
    patch, mask, origin = _source_patch(src, box, poly)
    if not patch.size:
        return [], [], occupied
    src_wh = (patch.shape[1], patch.shape[0])
    area = float((box[2] - box[0]) * (box[3] - box[1]))
    boxes, segs = [], []
    for _ in range(n_copies):
        f = rng.uniform(1 - scale, 1 + scale) if scale > 0 else 1.0
        f = min(f, 0.999 * math.sqrt(max_area / area))  # a copy must stay a small object
        # floor: rounding up could push a copy just over max_area
        size = (max(1, math.floor(src_wh[0] * f + 1e-6)), max(1, math.floor(src_wh[1] * f + 1e-6)))
        mirrored = flip and rng.random() < 0.5
        rect = _find_spot(size, (out.shape[1], out.shape[0]), occupied, border, rng, tries)
        if rect is None:
            continue
        _paste_one(out, patch, mask, rect, mirrored)
        b = _map_points(box.reshape(2, 2), origin, src_wh, rect, mirrored)
        boxes.append([b[:, 0].min(), b[:, 1].min(), b[:, 0].max(), b[:, 1].max()])
        if poly is not None:
            segs.append(_map_points(poly, origin, src_wh, rect, mirrored))
        occupied = np.concatenate([occupied, rect[None]], 0)
    return boxes, segs, occupied


def copy_paste_small(img: np.ndarray, boxes_xyxy: np.ndarray, cls: np.ndarray,
                     segments: list[np.ndarray] | None = None, *, p: float = 1.0, max_area: float = 1024.0,
                     times: int = 1, rng: np.random.Generator | None = None, flip: bool = True,
                     scale: float = 0.2, border: int = 5,
                     tries: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray] | None]:
    """Paste extra copies of the small objects of one image into free places of the same image.

    img: uint8 (H, W, 3); boxes_xyxy: (n, 4) pixels; cls: (n,); segments: None or n (k, 2) pixel
    polygons aligned with the boxes (then only the mask pixels are copied). With probability ``p``,
    every object with box area < ``max_area`` px is pasted 1..``times`` times (uniform), each copy
    scaled by a factor in [1 - scale, 1 + scale] (capped so it stays under ``max_area``) and
    mirrored with probability 0.5 when ``flip``. A copy goes where its pixel rect overlaps no box
    (original or pasted) and stays ``border`` px from the edges; after ``tries`` misses it is dropped.

    Returns (img, boxes float32 (m, 4), cls (m,), segments or None); the input image is not modified.
    """
    rng = rng if rng is not None else np.random.default_rng()
    boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
    cls = np.asarray(cls)
    if not len(boxes) or p <= 0 or rng.random() >= p:
        return img, boxes, cls, segments
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    small = np.nonzero((areas > 0) & (areas < max_area))[0]
    if not len(small):
        return img, boxes, cls, segments
    out = img.copy()  # source pixels are read from ``img``, so copies never copy earlier copies
    occupied, new_boxes, new_cls, new_segs = boxes.copy(), [], [], []
    for i in small:
        poly = segments[i] if segments is not None else None
        n_copies = int(rng.integers(1, max(1, times) + 1))
        b, s, occupied = _paste_copies(out, img, boxes[i], poly, n_copies, occupied, rng, max_area, flip, scale,
                                       border, tries)
        new_boxes += b
        new_segs += s
        new_cls += [cls[i]] * len(b)
    if not new_boxes:
        return img, boxes, cls, segments
    boxes = np.concatenate([boxes, np.array(new_boxes, np.float32)], 0)
    cls = np.concatenate([cls, np.array(new_cls, dtype=cls.dtype)], 0)
    return out, boxes, cls, (list(segments) + new_segs if segments is not None else None)
