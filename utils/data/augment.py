"""Per-image transforms of the data pipeline (numpy/OpenCV, no torch).

Target schema everywhere in this module: ``img`` uint8 (H, W, 3) BGR, ``boxes`` float32 (n, 4)
xyxy in pixels of the current image, ``cls`` int64 (n,), ``segments`` [] or n float32 (k, 2)
polygons in the same pixel frame. ``utils.boxes.filter_boxes`` is the one place that clips boxes
to an image and drops degenerate ones; every geometric transform ends with it.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import cv2
import numpy as np

from utils.boxes import filter_boxes
from utils.data.polygon import clip_polygons_and_boxes, polygon_box

PAD_VALUE = 114  # YOLOv5's grey for letterbox and mosaic borders


class Sample(NamedTuple):
    """One image with its objects (the pipeline's target schema, see the module docstring)."""

    img: np.ndarray
    boxes: np.ndarray
    cls: np.ndarray
    segments: list[np.ndarray]


def resize_long_side(img: np.ndarray, imgsz: int, fast_down: bool = False) -> np.ndarray:
    """Resize so the long side is ``imgsz`` pixels, keeping the aspect ratio.

    INTER_AREA keeps small objects' contrast when shrinking; ``fast_down`` (training) uses the
    cheaper INTER_LINEAR since augmentation resamples the image again anyway.
    """
    h0, w0 = img.shape[:2]
    r = imgsz / max(h0, w0)
    if r == 1:
        return img
    size = (max(1, round(w0 * r)), max(1, round(h0 * r)))
    interp = cv2.INTER_LINEAR if (fast_down or r > 1) else cv2.INTER_AREA
    return cv2.resize(img, size, interpolation=interp)


def rescale_sample(smp: Sample, f: float) -> Sample:
    """Resize a sample's image by factor ``f`` (boxes and polygons follow, per axis after rounding)."""
    h, w = smp.img.shape[:2]
    size = (max(1, round(w * f)), max(1, round(h * f)))
    img = cv2.resize(smp.img, size, interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
    fx, fy = size[0] / w, size[1] / h
    boxes = smp.boxes * np.array([fx, fy, fx, fy], np.float32)
    segs = [p * np.array([fx, fy], np.float32) for p in smp.segments]
    return Sample(img, boxes, smp.cls, segs)


def letterbox(img: np.ndarray, new_shape: int | tuple[int, int], scaleup: bool = True, auto: bool = False,
              stride: int = 32, color: int = PAD_VALUE) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Resize (keeping aspect) to fit ``new_shape`` ((h, w) or a square side) and pad.

    ``auto`` pads only up to the next multiple of ``stride`` (a rectangle, fewer pixels to run, for
    whole-frame inference) instead of up to ``new_shape`` (a fixed shape, needed to stack images
    into a batch). Returns (img (H, W, 3), (ratio_w, ratio_h) of the resize, (padw, padh)
    left/top padding in pixels). The pads are whole pixels so that ``x_new = x * ratio_w + padw``
    holds exactly for the image content, not only for the labels.
    """
    h0, w0 = img.shape[:2]
    nh, nw = (new_shape, new_shape) if isinstance(new_shape, int) else new_shape
    r = min(nh / h0, nw / w0)
    if not scaleup:
        r = min(r, 1.0)  # validation: never upsample, it does not add information
    w, h = round(w0 * r), round(h0 * r)
    pw, ph = nw - w, nh - h
    if auto:
        pw, ph = pw % stride, ph % stride
    if (w, h) != (w0, h0):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    left, top = pw // 2, ph // 2
    img = cv2.copyMakeBorder(img, top, ph - top, left, pw - left, cv2.BORDER_CONSTANT,
                             value=(color, color, color))
    return img, (w / w0, h / h0), (float(left), float(top))


def _perspective_matrix(in_hw: tuple[int, int], out_hw: tuple[int, int], degrees: float, translate: float,
                        scale: float, shear: float, perspective: float,
                        rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Random 3x3 homography: center -> perspective -> rotate/scale -> shear -> translate. Returns (M, s)."""
    C = np.eye(3)
    C[0, 2], C[1, 2] = -in_hw[1] / 2, -in_hw[0] / 2
    P = np.eye(3)
    P[2, 0], P[2, 1] = rng.uniform(-perspective, perspective, 2)
    R = np.eye(3)
    s = rng.uniform(1 - scale, 1 + scale)
    R[:2] = cv2.getRotationMatrix2D(center=(0, 0), angle=rng.uniform(-degrees, degrees), scale=s)
    S = np.eye(3)
    S[0, 1], S[1, 0] = np.tan(np.radians(rng.uniform(-shear, shear, 2)))
    T = np.eye(3)
    T[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_hw[1]
    T[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_hw[0]
    return T @ S @ R @ P @ C, s


def _transform_points(pts: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Apply a 3x3 homography to (k, 2) points."""
    xy1 = np.concatenate([pts, np.ones((len(pts), 1), pts.dtype)], 1) @ M.T
    return xy1[:, :2] / xy1[:, 2:3] if M[2, 0] or M[2, 1] else xy1[:, :2]


def _transform_boxes(boxes: np.ndarray, segments: list[np.ndarray], M: np.ndarray,
                     out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Warp boxes (n, 4) xyxy -> (full extents (n, 4), visible boxes (n, 4)), both float32.

    With a polygon per box the extents are the warped polygons' (tighter under rotation) and the
    visible box is the extent of the polygon clipped to the output, so an object cut by the output
    edge gets the box of what remains of it. Without polygons both are the warped box corners'.
    """
    if len(segments) == len(boxes) and len(boxes):
        polys = [_transform_points(s, M) for s in segments]
        full = np.array([polygon_box(p) for p in polys], dtype=np.float32)
        visible, _ = clip_polygons_and_boxes(full, polys, (0, 0, out_hw[1], out_hw[0]))
        return full, visible
    corners = boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 2)  # 4 corners per box
    xy = _transform_points(corners, M).reshape(-1, 8)
    x, y = xy[:, 0::2], xy[:, 1::2]
    full = np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], 1).astype(np.float32)
    return full, full


def random_perspective(sample: Sample, degrees: float = 0.0, translate: float = 0.1, scale: float = 0.5,
                       shear: float = 0.0, perspective: float = 0.0, border: tuple[int, int] = (0, 0),
                       rng: np.random.Generator | None = None, min_visible: float = 0.1) -> Sample:
    """Random affine/perspective warp (YOLOv5 semantics) with the output grown by ``border`` per side.

    A negative ``border`` crops: the 2s x 2s mosaic uses (-s/2, -s/2) to come back to s x s.
    Boxes are warped, clipped and filtered; objects less than ``min_visible`` of whose warped box
    stays inside the output are dropped (mostly cut off, they would teach noise). Segments are
    consumed (used for tight boxes) and not returned.
    """
    rng = rng if rng is not None else np.random.default_rng()
    img = sample.img
    out_hw = (img.shape[0] + 2 * border[0], img.shape[1] + 2 * border[1])
    M, _ = _perspective_matrix(img.shape[:2], out_hw, degrees, translate, scale, shear, perspective, rng)
    if border != (0, 0) or not np.allclose(M, np.eye(3)):
        dsize, fill = (out_hw[1], out_hw[0]), (PAD_VALUE,) * 3
        if perspective:
            img = cv2.warpPerspective(img, M, dsize=dsize, borderValue=fill)
        else:
            img = cv2.warpAffine(img, M[:2], dsize=dsize, borderValue=fill)
    n = len(sample.boxes)
    if n == 0:
        return Sample(img, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), [])
    full, visible = _transform_boxes(sample.boxes, sample.segments, M, out_hw)
    full_area = (full[:, 2] - full[:, 0]) * (full[:, 3] - full[:, 1])
    boxes, idx = filter_boxes(visible, np.arange(n), out_hw)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    vis = area / np.maximum(full_area[idx], 1e-6) > min_visible
    return Sample(img, boxes[vis], sample.cls[idx[vis]], [])


def augment_hsv(img: np.ndarray, hgain: float, sgain: float, vgain: float, rng: np.random.Generator) -> None:
    """Random hue/saturation/value gains applied in place through lookup tables (fast on uint8)."""
    if not (hgain or sgain or vgain):
        return
    r = rng.uniform(-1, 1, 3) * (hgain, sgain, vgain) + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(256, dtype=np.float32)
    lut_hue = ((x * r[0]) % 180).astype(np.uint8)
    lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR, dst=img)


def flip_lr(img: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror left-right; boxes (n, 4) xyxy pixels follow."""
    w = img.shape[1]
    boxes = boxes.copy()
    boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    return np.ascontiguousarray(img[:, ::-1]), boxes


def flip_ud(img: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror up-down; boxes (n, 4) xyxy pixels follow."""
    h = img.shape[0]
    boxes = boxes.copy()
    boxes[:, [1, 3]] = h - boxes[:, [3, 1]]
    return np.ascontiguousarray(img[::-1]), boxes


class PixelAugment:
    """Albumentations stage: one pixel-level transform (boxes are unaffected) drawn per call.

    The dataset runs this stage with probability hyp ``albumentations``, so that value is the
    fraction of images that get one blur, gray, CLAHE, brightness/contrast or JPEG corruption.
    Blur kernels are capped at 5 px so that objects of a few pixels survive.
    ``reseed`` gives each DataLoader worker its own stream.
    """

    def __init__(self, seed: int | None = None) -> None:
        # The library contacts PyPI on import unless told not to; training must not depend on network.
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        import albumentations as A  # imported here: only training with this stage needs it

        self.transform = A.Compose([A.OneOf([
            A.Blur(blur_limit=(3, 5)),
            A.MedianBlur(blur_limit=(3, 5)),
            A.ToGray(),
            A.CLAHE(),
            A.RandomBrightnessContrast(),
            A.ImageCompression(quality_range=(75, 100)),
        ], p=1.0)], seed=seed)

    def reseed(self, seed: int) -> None:
        """Restart the random stream (called once per DataLoader worker)."""
        self.transform.set_random_seed(seed)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        """img uint8 (H, W, 3) -> transformed uint8 (H, W, 3)."""
        return self.transform(image=img)["image"]


def rand_bool(rng: np.random.Generator, p: float) -> bool:
    """True with probability p (p <= 0 never draws, keeping the stream stable when disabled)."""
    return p > 0 and (p >= 1 or rng.random() < p)
