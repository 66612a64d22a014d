"""Task-aligned assignment (after Feng et al. 2021, "TOOD: Task-aligned One-stage Object Detection").

For every ground-truth box and every prediction point the alignment metric is
    t = s^alpha * IoU^beta
with s the predicted score of the box's class and IoU that of the predicted box with the GT box,
so a point is positive when it both classifies and localises the object well. Per GT the top-k
candidate points by t become positives (a candidate whose predicted box misses the GT, t = 0,
stays background: its targets would all be 0); a point claimed by several GTs keeps the one it
overlaps most (IoU). Class targets are soft: a positive's target score for its GT class is
t / max_t(GT) * max_IoU(GT), which ranks the positives of one object and caps them at how well the
best of them already fits.

Candidates are the points whose centre lies inside the GT box. A box so small that no point of
any level lies inside it (it falls between cell centres) would get no positive at all and never
be learned, so such a box falls back to the points within ``radius`` strides of its centre on
each level. Measured on HIT-UAV train labels (7185 boxes, median 18x23 px at 640): at --imgsz 640
no box misses every stride-4 point, but 1.1% miss every stride-8 point (P3-P5 models) and 17.7%
contain at most two; at --imgsz 320 it is 1.1% for stride 4 and 13.7% for stride 8. The fallback
keeps those boxes trainable; the top-k step then keeps the best-aligned of its candidates.
"""

from __future__ import annotations

import torch


def _inside(points: torch.Tensor, boxes: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """(N, 2) points, (B, M, 4) xyxy boxes -> (B, M, N) bool: the point is strictly inside the box."""
    px, py = points[:, 0], points[:, 1]
    x1, y1, x2, y2 = (boxes[..., k, None] for k in range(4))
    return (px > x1 + eps) & (px < x2 - eps) & (py > y1 + eps) & (py < y2 - eps)


def _near_centre(points: torch.Tensor, strides: torch.Tensor, boxes: torch.Tensor, radius: float) -> torch.Tensor:
    """(B, M, N) bool: the point is within ``radius`` of its own stride from the box centre in x and y."""
    cx = (boxes[..., 0, None] + boxes[..., 2, None]) / 2
    cy = (boxes[..., 1, None] + boxes[..., 3, None]) / 2
    r = radius * strides
    return ((points[:, 0] - cx).abs() < r) & ((points[:, 1] - cy).abs() < r)


def candidates(points: torch.Tensor, strides: torch.Tensor, gt_boxes: torch.Tensor, gt_mask: torch.Tensor,
               radius: float = 2.5) -> torch.Tensor:
    """(B, M, N) candidate mask: inside the box, or near its centre when no point lies inside."""
    inside = _inside(points, gt_boxes)
    if radius > 0:
        empty = ~inside.any(-1, keepdim=True)  # (B, M, 1): a box between cell centres
        inside = torch.where(empty, _near_centre(points, strides, gt_boxes, radius), inside)
    return inside & gt_mask[..., None]


def _pairwise_iou(pred_boxes: torch.Tensor, gt_boxes: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """(B, M, N) IoU of every GT with every predicted box, computed only where ``cand`` is True."""
    iou = torch.zeros(cand.shape, dtype=pred_boxes.dtype, device=pred_boxes.device)
    b, m, n = cand.nonzero(as_tuple=True)
    if b.numel():
        g, p = gt_boxes[b, m], pred_boxes[b, n]
        lt, rb = torch.maximum(g[:, :2], p[:, :2]), torch.minimum(g[:, 2:], p[:, 2:])
        inter = (rb - lt).clamp(min=0).prod(1)
        union = (g[:, 2:] - g[:, :2]).prod(1) + (p[:, 2:] - p[:, :2]).clamp(min=0).prod(1) - inter
        iou[b, m, n] = inter / union.clamp(min=1e-9)
    return iou


class TaskAlignedAssigner:
    """Assign GT boxes to prediction points by the task-alignment metric (see module doc).

    Args:
        topk: positives per GT box at most.
        alpha, beta: exponents of the class score and of the IoU in the metric.
        radius: centre radius in strides for boxes that contain no point (0 disables the fallback).
    """

    def __init__(self, topk: int = 10, alpha: float = 0.5, beta: float = 6.0, radius: float = 2.5):
        self.topk, self.alpha, self.beta, self.radius = topk, alpha, beta, radius

    @torch.no_grad()
    def __call__(self, pred_scores: torch.Tensor, pred_boxes: torch.Tensor, points: torch.Tensor,
                 strides: torch.Tensor, gt_labels: torch.Tensor, gt_boxes: torch.Tensor,
                 gt_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Match the GTs of each image to its prediction points.

        Args:
            pred_scores: (B, N, nc) class probabilities (after sigmoid).
            pred_boxes: (B, N, 4) predicted boxes, xyxy input pixels.
            points, strides: (N, 2) point centres in input pixels and (N,) their strides.
            gt_labels: (B, M) class ids; gt_boxes: (B, M, 4) xyxy input pixels; gt_mask: (B, M)
                bool, False for padding rows (images hold different numbers of boxes).

        Returns:
            target_boxes (B, N, 4) xyxy px of the assigned GT (zeros for background),
            target_scores (B, N, nc) soft class targets (zeros for background),
            fg_mask (B, N) bool, target_gt (B, N) long index into M (0 for background).
        """
        bsz, n, nc = pred_scores.shape
        m = gt_boxes.shape[1]
        if m == 0 or (gt_mask.device.type == "cpu" and not gt_mask.any()):  # a shortcut, a read-back on a GPU
            z = pred_scores.new_zeros
            return z(bsz, n, 4), z(bsz, n, nc), torch.zeros(bsz, n, dtype=torch.bool, device=pred_scores.device), \
                torch.zeros(bsz, n, dtype=torch.long, device=pred_scores.device)
        cand = candidates(points, strides, gt_boxes, gt_mask, self.radius)
        iou = _pairwise_iou(pred_boxes, gt_boxes, cand)
        labels = gt_labels.long().clamp(0, nc - 1)
        score = pred_scores.gather(2, labels[:, None, :].expand(bsz, n, m)).transpose(1, 2)  # (B, M, N)
        align = score.pow(self.alpha) * iou.pow(self.beta) * cand
        pos = self._topk_mask(align, cand)
        pos = self._one_gt_per_point(pos, iou)
        return self._targets(pos, align, iou, labels, gt_boxes, nc)

    def _topk_mask(self, align: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """(B, M, N) bool: the ``topk`` candidates of each GT by alignment (alignment > 0 only)."""
        k = min(self.topk, align.shape[-1])
        # candidates rank above non-candidates even when their alignment underflows to 0
        rank = torch.where(cand, align, torch.full_like(align, -1.0))
        idx = rank.topk(k, dim=-1).indices
        top = torch.zeros_like(cand).scatter_(-1, idx, True)
        # a candidate whose box misses the GT entirely would get target 0: leave it background
        return top & cand & (align > 0)

    @staticmethod
    def _one_gt_per_point(pos: torch.Tensor, iou: torch.Tensor) -> torch.Tensor:
        """Where a point is positive for several GTs, keep only the GT with the highest IoU."""
        multi = pos.sum(1, keepdim=True) > 1  # (B, 1, N)
        if pos.device.type == "cpu" and not multi.any():  # a shortcut; on a GPU the read-back costs more
            return pos
        best = iou.masked_fill(~pos, -1).argmax(1, keepdim=True)  # (B, 1, N)
        only_best = torch.zeros_like(pos).scatter_(1, best, True)
        return torch.where(multi, only_best & pos, pos)

    def _targets(self, pos, align, iou, labels, gt_boxes, nc):
        """Gather the assigned GT of each point and build the normalised soft class targets."""
        fg = pos.any(1)  # (B, N)
        gt_idx = pos.to(torch.uint8).argmax(1)  # (B, N): the single GT left per point
        t_boxes = gt_boxes.gather(1, gt_idx[..., None].expand(-1, -1, 4))
        t_labels = labels.gather(1, gt_idx)
        align = align * pos
        max_align = align.amax(-1, keepdim=True)  # (B, M, 1) over each GT's positives
        max_iou = (iou * pos).amax(-1, keepdim=True)
        # alignments can be ~1e-12 early in training: no additive eps, which would bias the ratio
        norm = (align * max_iou / max_align.clamp(min=torch.finfo(align.dtype).tiny)).amax(1)  # (B, N)
        t_scores = torch.nn.functional.one_hot(t_labels, nc).to(align.dtype) * (norm * fg)[..., None]
        t_boxes = t_boxes * fg[..., None]
        return t_boxes, t_scores, fg, gt_idx * fg
