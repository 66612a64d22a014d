"""Small-object copy-paste (after Kisantal et al., "Augmentation for small object detection", 2019).

Small objects are rare in the pixels of an image and so in the positive samples of the loss;
pasting extra copies of them, in the same image and at the same scale, adds positives without
changing the object appearance statistics. Pasted copies never cover an existing object or
another copy, and keep a margin from the image border so they stay whole after a mild crop.

Placement runs per image inside the data loader, so it is vectorised: the sizes of all copies
and all their candidate spots are drawn at once, and every candidate is tested against the
image's boxes in one array operation; only the test against copies placed earlier in the same
image is done copy by copy (it depends on the order).
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def intersects(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Positive-area intersection of xyxy boxes: ``a`` (..., 4) against ``b`` (m, 4) -> bool (..., m).

    Touching edges do not count (a copy may sit right next to an object).
    """
    ix = np.minimum(a[..., None, 2], b[:, 2]) - np.maximum(a[..., None, 0], b[:, 0])
    iy = np.minimum(a[..., None, 3], b[:, 3]) - np.maximum(a[..., None, 1], b[:, 1])
    return (ix > 0) & (iy > 0)


def candidate_spots(sizes_wh: np.ndarray, img_wh: tuple[int, int], border: int, tries: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``tries`` random top-left spots for each of n patches, drawn in one call.

    sizes_wh: (n, 2) int patch sizes. Returns (rects (n, tries, 4) float32 xyxy pixels with
    integer corners, fits (n,) bool: False where the patch plus its border does not fit the image;
    the rects of those rows are meaningless).
    """
    W, H = img_wh
    hi = np.array([W, H]) - border - sizes_wh  # (n, 2) largest top-left corner
    fits = (hi >= border).all(1)
    span = np.maximum(hi - border + 1, 1)  # number of allowed corners per axis
    xy = border + np.floor(rng.random((len(sizes_wh), tries, 2)) * span[:, None]).astype(np.int64)
    rects = np.concatenate([xy, xy + sizes_wh[:, None]], -1).astype(np.float32)
    return rects, fits


def place_greedy(cands: np.ndarray, fits: np.ndarray, occupied: np.ndarray) -> np.ndarray:
    """Choose one spot per copy: the first of its tries that overlaps no ``occupied`` box and no
    spot chosen for an earlier copy.

    cands: (n, tries, 4) xyxy; fits: (n,) bool; occupied: (m, 4) xyxy. The check against the
    occupied boxes is done for all copies and tries at once. The check against earlier copies
    depends on the order, so it runs copy by copy: the first free try is tested alone (it is
    nearly always accepted outside crowded images), the remaining tries together only if it
    is not. Returns (n,) int: the chosen try, -1 for a copy that found no free spot.
    """
    free = np.repeat(fits[:, None], cands.shape[1], 1)
    if len(occupied):
        free &= ~intersects(cands, occupied).any(-1)
    chosen = np.full(len(cands), -1, np.int64)
    placed, n_placed = np.empty((len(cands), 4), np.float32), 0
    for k in np.nonzero(free.any(1))[0]:
        tries = np.nonzero(free[k])[0]
        hit = intersects(cands[k, tries[:1]], placed[:n_placed]).any(-1)
        if hit[0]:
            tries = tries[1:]
            hit = intersects(cands[k, tries], placed[:n_placed]).any(-1)
        if not hit.all():
            chosen[k] = tries[int(hit.argmin())]
            placed[n_placed] = cands[k, chosen[k]]
            n_placed += 1
    return chosen


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


def _patch_sizes(boxes: np.ndarray, img_wh: tuple[int, int]) -> np.ndarray:
    """(n, 2) int sizes of the integer pixel rects that :func:`_source_patch` cuts around xyxy ``boxes``."""
    W, H = img_wh
    x1, y1 = np.maximum(0, np.floor(boxes[:, 0])), np.maximum(0, np.floor(boxes[:, 1]))
    x2, y2 = np.minimum(W, np.ceil(boxes[:, 2])), np.minimum(H, np.ceil(boxes[:, 3]))
    return np.stack([x2 - x1, y2 - y1], 1).astype(np.int64)


def _plan_copies(boxes: np.ndarray, img_wh: tuple[int, int], rng: np.random.Generator, times: int,
                 scale: float, max_area: float, flip: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which object each copy repeats, its size and mirroring, for all copies at once.

    boxes: (k, 4) xyxy of the objects to copy. Returns (obj (n,) index into ``boxes``,
    sizes (n, 2) int pixels, mirrored (n,) bool); copies of an object are consecutive.
    """
    src_wh = _patch_sizes(boxes, img_wh)
    keep = (src_wh > 0).all(1)  # an object outside the image has no pixels to copy
    n_copies = rng.integers(1, max(1, times) + 1, size=len(boxes)) * keep
    obj = np.repeat(np.arange(len(boxes)), n_copies)
    f = rng.uniform(1 - scale, 1 + scale, size=len(obj)) if scale > 0 else np.ones(len(obj))
    area = ((boxes[obj, 2] - boxes[obj, 0]) * (boxes[obj, 3] - boxes[obj, 1])).astype(np.float64)
    f = np.minimum(f, 0.999 * np.sqrt(max_area / area))  # a copy must stay a small object
    # floor: rounding up could push a copy just over max_area
    sizes = np.maximum(1, np.floor(src_wh[obj] * f[:, None] + 1e-6)).astype(np.int64)
    mirrored = (rng.random(len(obj)) < 0.5) if flip else np.zeros(len(obj), bool)
    return obj, sizes, mirrored


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
    W, H = img.shape[1], img.shape[0]
    obj, sizes, mirrored = _plan_copies(boxes[small], (W, H), rng, times, scale, max_area, flip)
    cands, fits = candidate_spots(sizes, (W, H), border, tries, rng)
    chosen = place_greedy(cands, fits, boxes)
    if not (chosen >= 0).any():
        return img, boxes, cls, segments
    out = img.copy()  # source pixels are read from ``img``, so copies never copy earlier copies
    patches: dict[int, tuple] = {}
    new_boxes, new_cls, new_segs = [], [], []
    for k in np.nonzero(chosen >= 0)[0]:
        i = small[obj[k]]
        poly = segments[i] if segments is not None else None
        if i not in patches:
            patches[i] = _source_patch(img, boxes[i], poly)
        patch, mask, origin = patches[i]
        rect, src_wh = cands[k, chosen[k]], (patch.shape[1], patch.shape[0])
        _paste_one(out, patch, mask, rect, bool(mirrored[k]))
        b = _map_points(boxes[i].reshape(2, 2), origin, src_wh, rect, bool(mirrored[k]))
        new_boxes.append([b[:, 0].min(), b[:, 1].min(), b[:, 0].max(), b[:, 1].max()])
        new_cls.append(cls[i])
        if poly is not None:
            new_segs.append(_map_points(poly, origin, src_wh, rect, bool(mirrored[k])))
    boxes = np.concatenate([boxes, np.array(new_boxes, np.float32)], 0)
    cls = np.concatenate([cls, np.array(new_cls, dtype=cls.dtype)], 0)
    return out, boxes, cls, (list(segments) + new_segs if segments is not None else None)
