"""Native-resolution crops: train on imgsz x imgsz windows of the full-size image, not the shrunk frame.

Shrinking a 4K aerial frame to 640 px turns a 10 px object into 1.6 px, below what any detector
level can see. Cropping an imgsz window out of the frame at its native resolution (or at a set
scale) keeps objects at the size the model will meet in sliced inference (``val.py --slice``,
``detect.py --slice``) at the same scale. Most of a large frame is background, so with
probability ``bias`` the window is placed to contain a randomly chosen object.

Target schema as in :mod:`utils.data.augment`: uint8 (H, W, 3) BGR image, float32 (n, 4) xyxy
pixel boxes, int64 (n,) classes, and [] or n float32 (k, 2) pixel polygons.
"""

from __future__ import annotations

import math

import numpy as np

from utils.boxes import filter_boxes
from utils.data.augment import PAD_VALUE, Sample, rand_bool, rescale_sample
from utils.data.polygon import clip_polygons_and_boxes


def _window_range(length: int, size: int) -> tuple[int, int]:
    """Allowed window starts on one axis: [0, L - s] when the image is larger than the window,
    else [L - s, 0] (negative starts: the window extends past the image and is padded)."""
    return min(0, length - size), max(0, length - size)


def _start_holding(lo: int, hi: int, b1: float, b2: float, size: int, rng: np.random.Generator) -> int:
    """A window start in [lo, hi] whose window [x0, x0 + size] holds the interval [b1, b2].

    Uniform over the starts that hold it; an object longer than the window gets a window centred
    on it instead (clamped to [lo, hi]).
    """
    a, b = max(lo, math.ceil(b2 - size)), min(hi, math.floor(b1))
    if a <= b:
        return int(rng.integers(a, b + 1))
    return int(np.clip(round((b1 + b2 - size) / 2), lo, hi))


def choose_window(img_hw: tuple[int, int], size: int, boxes: np.ndarray, bias: float,
                  rng: np.random.Generator) -> tuple[int, int]:
    """Top-left (x0, y0) of a size x size crop window in an image of shape (h, w).

    With probability ``bias`` (and at least one box in ``boxes`` (n, 4) xyxy pixels) the window
    holds a uniformly chosen box whole; otherwise it is uniform over the image. Starts are whole
    pixels, so the crop needs no resampling and labels shift by integers.
    """
    (lo_y, hi_y), (lo_x, hi_x) = _window_range(img_hw[0], size), _window_range(img_hw[1], size)
    if len(boxes) and rand_bool(rng, bias):
        x1, y1, x2, y2 = boxes[int(rng.integers(len(boxes)))]
        return _start_holding(lo_x, hi_x, x1, x2, size, rng), _start_holding(lo_y, hi_y, y1, y2, size, rng)
    return int(rng.integers(lo_x, hi_x + 1)), int(rng.integers(lo_y, hi_y + 1))


def crop_at(sample: Sample, x0: int, y0: int, size: int) -> Sample:
    """Cut the size x size window with top-left (x0, y0) out of ``sample``; outside the image is PAD_VALUE.

    Labels move to crop pixels (minus (x0, y0)); polygons and boxes are clipped to the part of the
    image inside the window (boxes rebuilt from clipped polygons when there are polygons), then
    ``utils.boxes.filter_boxes`` drops the degenerate ones.
    """
    h, w = sample.img.shape[:2]
    out = np.full((size, size, 3), PAD_VALUE, np.uint8)
    sx1, sy1, sx2, sy2 = max(x0, 0), max(y0, 0), min(x0 + size, w), min(y0 + size, h)  # source pixels
    if sx2 > sx1 and sy2 > sy1:
        out[sy1 - y0:sy2 - y0, sx1 - x0:sx2 - x0] = sample.img[sy1:sy2, sx1:sx2]
    visible = (sx1 - x0, sy1 - y0, sx2 - x0, sy2 - y0)  # the image's part of the crop, crop pixels
    shift = np.array([x0, y0], np.float32)
    segs = [p - shift for p in sample.segments]
    boxes, segs = clip_polygons_and_boxes(sample.boxes - np.tile(shift, 2), segs, visible)
    boxes, idx = filter_boxes(boxes, np.arange(len(boxes)), (size, size))
    return Sample(out, boxes.astype(np.float32), sample.cls[idx], [segs[i] for i in idx] if segs else [])


def native_crop(sample: Sample, size: int, scale: float = 1.0, bias: float = 0.0,
                rng: np.random.Generator | None = None) -> Sample:
    """A size x size training crop of a full-resolution sample, optionally rescaled first.

    Args:
        sample: the image at its original resolution with xyxy pixel boxes (and polygons, if any).
        size: crop side in pixels (the training imgsz).
        scale: factor applied to the whole image before cropping (1.0 = native pixels; 0.5 trains
            at half resolution, for sliced inference on half-size frames).
        bias: probability that the window is placed to contain a randomly chosen object.
        rng: random generator (window choice).

    Returns a Sample with a (size, size, 3) image and labels in crop pixels; an image smaller than
    the window is padded with PAD_VALUE around it.
    """
    rng = rng if rng is not None else np.random.default_rng()
    if scale != 1.0:
        sample = rescale_sample(sample, scale)
    x0, y0 = choose_window(sample.img.shape[:2], size, sample.boxes, bias, rng)
    return crop_at(sample, x0, y0, size)
