"""Mosaic (4 and 9 images) and MixUp: combine several samples into one training image.

All functions take and return :class:`utils.data.augment.Sample` (uint8 BGR image, xyxy pixel boxes,
int64 classes, optional polygons). Both mosaics build a 2s x 2s canvas for input size ``s``; the
dataset then crops it back to s x s with ``random_perspective(border=(-s // 2, -s // 2))``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from utils.boxes import filter_boxes
from utils.data.augment import PAD_VALUE, Sample, rescale_sample
from utils.data.polygon import clip_polygons_and_boxes


def _paste(canvas: np.ndarray, img: np.ndarray, x: int, y: int) -> tuple[int, int]:
    """Paste ``img`` with its top-left corner at canvas (x, y), cropping what falls outside.

    Returns the (dx, dy) offset that maps image pixel coordinates to canvas coordinates.
    """
    H, W = canvas.shape[:2]
    h, w = img.shape[:2]
    x1a, y1a, x2a, y2a = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if x2a > x1a and y2a > y1a:
        canvas[y1a:y2a, x1a:x2a] = img[y1a - y:y2a - y, x1a - x:x2a - x]
    return x, y


def _merge(samples: list[Sample], offsets: list[tuple[int, int]], canvas: np.ndarray) -> Sample:
    """Shift every sample's boxes/polygons by its offset, clip them to the sample's visible tile, filter.

    The visible tile of a sample is its pasted rectangle cut to the canvas. Polygons are clipped to
    it and each box is rebuilt from its clipped polygon, so a box never reaches over grey fill or a
    neighbour, and an object cut by the canvas edge gets the box of the part that is still visible.
    """
    H, W = canvas.shape[:2]
    # Polygons only survive when every sample has one per box; a mix would misalign them.
    have_segs = all(len(s.segments) == len(s.boxes) for s in samples) and sum(len(s.boxes) for s in samples) > 0
    boxes, segs = [], []
    for smp, (dx, dy) in zip(samples, offsets):
        h, w = smp.img.shape[:2]
        tile = (max(dx, 0), max(dy, 0), min(dx + w, W), min(dy + h, H))
        shifted = [p + np.array([dx, dy], np.float32) for p in smp.segments] if have_segs else []
        b, p = clip_polygons_and_boxes(smp.boxes + np.array([dx, dy, dx, dy], np.float32), shifted, tile)
        boxes.append(b)
        segs += p
    boxes = np.concatenate(boxes, 0) if boxes else np.zeros((0, 4), np.float32)
    cls = np.concatenate([s.cls for s in samples], 0).astype(np.int64)
    boxes, idx = filter_boxes(boxes, np.arange(len(boxes)), (H, W))
    return Sample(canvas, boxes, cls[idx], [segs[i] for i in idx] if have_segs else [])


def mosaic4(samples: list[Sample], s: int, rng: np.random.Generator) -> Sample:
    """Four samples (long side ``s``) around a random center of a 2s x 2s canvas (YOLOv5 mosaic).

    Each image touches the center with one corner, so parts cropped away always leave the canvas
    and never cover a neighbour.
    """
    if len(samples) != 4:
        raise ValueError(f"mosaic4 needs 4 samples, got {len(samples)}")
    canvas = np.full((2 * s, 2 * s, 3), PAD_VALUE, np.uint8)
    xc, yc = (int(v) for v in rng.uniform(s / 2, 3 * s / 2, 2))
    offsets = []
    for i, smp in enumerate(samples):
        h, w = smp.img.shape[:2]
        x = xc - w if i in (0, 2) else xc  # left column ends at the center, right one starts there
        y = yc - h if i in (0, 1) else yc
        offsets.append(_paste(canvas, smp.img, x, y))
    return _merge(samples, offsets, canvas)


def mosaic9(samples: list[Sample], s: int, rng: np.random.Generator) -> Sample:
    """Nine samples at 2/3 scale on a 3x3 grid filling a 2s x 2s canvas, shifted by up to half a cell.

    Scaling by 2/3 shrinks every object (it adds small ones, the point for small-object training);
    images sit in their cell against the grid center, so the crop around the canvas center shows
    parts of 4 to 9 images.
    """
    if len(samples) != 9:
        raise ValueError(f"mosaic9 needs 9 samples, got {len(samples)}")
    canvas = np.full((2 * s, 2 * s, 3), PAD_VALUE, np.uint8)
    cell = math.ceil(2 * s / 3)
    shift_x, shift_y = (int(v) for v in rng.uniform(-cell / 2, cell / 2, 2))
    scaled, offsets = [], []
    for i, smp in enumerate(samples):
        smp = rescale_sample(smp, 2 / 3)
        row, col = divmod(i, 3)
        h, w = smp.img.shape[:2]
        # column 0 right-aligned, 1 centered, 2 left-aligned (same for rows): no gap at the center
        x = col * cell + (cell - w) * (2 - col) // 2 + shift_x
        y = row * cell + (cell - h) * (2 - row) // 2 + shift_y
        offsets.append(_paste(canvas, smp.img, x, y))
        scaled.append(smp)
    return _merge(scaled, offsets, canvas)


def mixup(a: Sample, b: Sample, rng: np.random.Generator) -> Sample:
    """Blend two same-size samples with a Beta(32, 32) ratio (about 0.5) and keep both sets of boxes."""
    if a.img.shape != b.img.shape:
        raise ValueError(f"mixup needs equal image shapes, got {a.img.shape} and {b.img.shape}")
    r = rng.beta(32.0, 32.0)
    img = cv2.addWeighted(a.img, r, b.img, 1 - r, 0)
    return Sample(img, np.concatenate([a.boxes, b.boxes], 0), np.concatenate([a.cls, b.cls], 0), [])
