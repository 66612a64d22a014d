"""Box format conversions, clipping, rescaling and IoU.

Formats: ``xyxy`` = (x1, y1, x2, y2) corners; ``xywh`` = (cx, cy, w, h) centre and size; a trailing
``n`` means normalized by the image width/height. Functions accept torch tensors or numpy arrays
of shape (..., 4) unless stated otherwise and return the same type.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.ops import box_iou  # noqa: F401  (re-exported: pairwise IoU, (N,4) x (M,4) -> (N,M))


def _clone(x):
    return x.clone() if isinstance(x, torch.Tensor) else np.copy(x)


def xywh2xyxy(x):
    """(cx, cy, w, h) -> (x1, y1, x2, y2)."""
    y = _clone(x)
    y[..., 0] = x[..., 0] - x[..., 2] / 2
    y[..., 1] = x[..., 1] - x[..., 3] / 2
    y[..., 2] = x[..., 0] + x[..., 2] / 2
    y[..., 3] = x[..., 1] + x[..., 3] / 2
    return y


def xyxy2xywh(x):
    """(x1, y1, x2, y2) -> (cx, cy, w, h)."""
    y = _clone(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def xywhn2xyxy(x, w: float, h: float, padw: float = 0.0, padh: float = 0.0):
    """Normalized (cx, cy, w, h) -> pixel (x1, y1, x2, y2) in an image of size w x h, plus padding."""
    y = _clone(x)
    y[..., 0] = w * (x[..., 0] - x[..., 2] / 2) + padw
    y[..., 1] = h * (x[..., 1] - x[..., 3] / 2) + padh
    y[..., 2] = w * (x[..., 0] + x[..., 2] / 2) + padw
    y[..., 3] = h * (x[..., 1] + x[..., 3] / 2) + padh
    return y


def xyxy2xywhn(x, w: float, h: float, clip: bool = False):
    """Pixel (x1, y1, x2, y2) -> normalized (cx, cy, w, h); optionally clip to the image first."""
    if clip:
        x = clip_boxes(_clone(x), (h, w))
    y = _clone(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2 / w
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2 / h
    y[..., 2] = (x[..., 2] - x[..., 0]) / w
    y[..., 3] = (x[..., 3] - x[..., 1]) / h
    return y


def clip_boxes(boxes, shape_hw):
    """Clip xyxy boxes in place to an image of shape (h, w); returns the boxes."""
    h, w = shape_hw[0], shape_hw[1]
    if isinstance(boxes, torch.Tensor):
        boxes[..., 0].clamp_(0, w)
        boxes[..., 1].clamp_(0, h)
        boxes[..., 2].clamp_(0, w)
        boxes[..., 3].clamp_(0, h)
    else:
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, w)
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, h)
    return boxes


def filter_boxes(boxes, cls, shape_hw, min_size: float = 1.0):
    """Clip xyxy pixel boxes to the image and drop those narrower or shorter than ``min_size`` px.

    1 px by default: a box any thinner has no pixel of the object left; a larger cut-off would
    silently turn the tiniest objects into background.

    This is the one place where the pipeline removes degenerate boxes after a transform.
    Returns (boxes, cls) with the same types; ``cls`` may be any array indexed like ``boxes``.
    """
    boxes = clip_boxes(_clone(boxes), shape_hw)
    keep = ((boxes[..., 2] - boxes[..., 0]) >= min_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_size)
    return boxes[keep], cls[keep]


def scale_boxes(img1_shape, boxes, img0_shape, ratio_pad=None):
    """Map xyxy boxes from a letterboxed image (h1, w1) back to the original (h0, w0), in place.

    ``ratio_pad`` = ((ratio_h, ratio_w), (padw, padh)) as produced by the letterbox; computed from
    the two shapes when omitted. Boxes are clipped to the original image.
    """
    if ratio_pad is None:
        gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
        padw = (img1_shape[1] - img0_shape[1] * gain) / 2
        padh = (img1_shape[0] - img0_shape[0] * gain) / 2
        gain_w = gain_h = gain
    else:
        (gain_h, gain_w), (padw, padh) = ratio_pad
    boxes[..., [0, 2]] -= padw
    boxes[..., [1, 3]] -= padh
    boxes[..., [0, 2]] /= gain_w
    boxes[..., [1, 3]] /= gain_h
    return clip_boxes(boxes, img0_shape)


def bbox_iou(box1: torch.Tensor, box2: torch.Tensor, xywh: bool = True, CIoU: bool = False,
             eps: float = 1e-7) -> torch.Tensor:
    """Element-wise IoU (or Complete IoU) of two broadcastable (..., 4) box tensors -> (...).

    CIoU (Zheng et al. 2020) = IoU - centre distance^2 / enclosing diagonal^2 - alpha * v, where v
    measures the aspect-ratio mismatch.
    """
    if xywh:
        (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.unbind(-1), box2.unbind(-1)
        b1_x1, b1_x2, b1_y1, b1_y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
        b2_x1, b2_x2, b2_y1, b2_y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    else:
        b1_x1, b1_y1, b1_x2, b1_y2 = box1.unbind(-1)
        b2_x1, b2_y1, b2_x2, b2_y2 = box2.unbind(-1)
        w1, h1 = b1_x2 - b1_x1, (b1_y2 - b1_y1).clamp(eps)
        w2, h2 = b2_x2 - b2_x1, (b2_y2 - b2_y1).clamp(eps)
    inter = (torch.min(b1_x2, b2_x2) - torch.max(b1_x1, b2_x1)).clamp(0) * \
            (torch.min(b1_y2, b2_y2) - torch.max(b1_y1, b2_y1)).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    if not CIoU:
        return iou
    cw = torch.max(b1_x2, b2_x2) - torch.min(b1_x1, b2_x1)
    ch = torch.max(b1_y2, b2_y2) - torch.min(b1_y1, b2_y1)
    c2 = cw ** 2 + ch ** 2 + eps
    rho2 = ((b2_x1 + b2_x2 - b1_x1 - b1_x2) ** 2 + (b2_y1 + b2_y2 - b1_y1 - b1_y2) ** 2) / 4
    v = (4 / math.pi ** 2) * (torch.atan(w2 / (h2 + eps)) - torch.atan(w1 / (h1 + eps))) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)
