"""Loss terms of the SR branch on generated and target stride-4 features (no module state).

Box format: small objects travel as (K, 6) rows ``[image index, class, x1, y1, x2, y2]`` in
input pixels of the (possibly cropped) window the features cover; features are (B, C, h, w)
with one cell per 4x4 input pixels.
"""

from __future__ import annotations

import torch
from torchvision.ops import roi_align

from utils.sr_teacher import GEN_STRIDE

PATCH_CELLS = 7  # side of a discriminator patch, in feature cells
MIN_PATCH_PX = 16  # a patch covers at least this many input pixels per side (context around a tiny object)


def small_boxes_px(targets: torch.Tensor, height: int, width: int, max_area: float) -> torch.Tensor:
    """Targets (nt, 6) ``[b, cls, cx, cy, w, h]`` normalized -> small ones as ``[b, cls, x1, y1, x2, y2]`` px.

    A box is small when its area in input pixels is under ``max_area`` (the hyp's fdl_area).
    """
    t = targets.float()
    w, h = t[:, 4] * width, t[:, 5] * height
    cx, cy = t[:, 2] * width, t[:, 3] * height
    boxes = torch.stack([t[:, 0], t[:, 1], cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    return boxes[w * h < max_area]


def boxes_in_window(boxes: torch.Tensor, window: tuple[int, int, int, int] | None) -> torch.Tensor:
    """Boxes whose centre lies in ``window`` (x0, y0, x1, y1 px), shifted to window coordinates."""
    if window is None:
        return boxes
    x0, y0, x1, y1 = window
    cx, cy = (boxes[:, 2] + boxes[:, 4]) / 2, (boxes[:, 3] + boxes[:, 5]) / 2
    keep = (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)
    shift = boxes.new_tensor([0, 0, x0, y0, x0, y0])
    return boxes[keep] - shift


def small_object_mask(boxes: torch.Tensor, shape: tuple[int, int, int], background: float) -> torch.Tensor:
    """(B, 1, h, w) weights: 1 on every cell a small box overlaps, ``background`` elsewhere.

    Args:
        boxes: (K, 6) ``[b, cls, x1, y1, x2, y2]`` px in the features' window.
        shape: (B, h, w) of the stride-4 feature grid.
    """
    b, h, w = shape
    mask = torch.full((b, 1, h, w), float(background), device=boxes.device)
    for row in boxes.tolist():  # a few dozen small boxes per batch: a loop is clearer than scatter
        i, x1, y1, x2, y2 = int(row[0]), *row[2:]
        c0, r0 = max(int(x1 // GEN_STRIDE), 0), max(int(y1 // GEN_STRIDE), 0)
        c1, r1 = min(int(-(-x2 // GEN_STRIDE)), w), min(int(-(-y2 // GEN_STRIDE)), h)  # ceil: partly covered cells count
        mask[i, 0, r0:max(r1, r0 + 1), c0:max(c1, c0 + 1)] = 1.0
    return mask


def masked_mse(generated: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Weighted mean over cells of the channel-mean squared error; 0 when the mask is all 0."""
    err = (generated.float() - target).pow(2).mean(1, keepdim=True)
    return (err * mask).sum() / mask.sum().clamp(min=1e-6)


def total_variation(features: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation: mean absolute difference of vertical and horizontal neighbours."""
    f = features.float()
    return (f[..., 1:, :] - f[..., :-1, :]).abs().mean() + (f[..., :, 1:] - f[..., :, :-1]).abs().mean()


def patch_rois(boxes: torch.Tensor) -> torch.Tensor:
    """(K, 5) ``[b, x1, y1, x2, y2]`` px: a square around each box, twice its long side, >= MIN_PATCH_PX."""
    cx, cy = (boxes[:, 2] + boxes[:, 4]) / 2, (boxes[:, 3] + boxes[:, 5]) / 2
    side = torch.maximum(boxes[:, 4] - boxes[:, 2], boxes[:, 5] - boxes[:, 3]).mul(2).clamp(min=MIN_PATCH_PX)
    return torch.stack([boxes[:, 0], cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], 1)


def extract_patches(features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """(K, C, PATCH_CELLS, PATCH_CELLS) bilinear patches of stride-4 features at ``rois`` (px)."""
    return roi_align(features.float(), rois.float(), PATCH_CELLS, spatial_scale=1 / GEN_STRIDE,
                     sampling_ratio=2, aligned=True)
