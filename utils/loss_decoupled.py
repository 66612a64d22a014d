"""Loss of the anchor-free decoupled head (models/head_decoupled.py), with the feedback-driven gain.

Targets come from the task-aligned assigner (utils/assign_tal.py). With S the sum of all soft
target scores of the batch (at least 1) and w_i the target score of positive point i:
    box = sum_i g_i * w_i * (1 - CIoU_i) / S        (g_i: feedback-driven gain, below)
    dfl = sum_i w_i * DFL_i / S                     (distribution focal loss over the 4 sides)
    cls = sum over all points and classes of BCE(logit, target score) / S
There is no objectness: the class scores carry the confidence.

Feedback-driven gain (hyp ``fdl``, ``fdl_area``): the same definitions as utils/loss.py, with the
positives of the assigner as samples: l_i = 1 - CIoU_i, a_i the assigned GT area in input pixels,
r_t = sum_small l_i / sum_all l_i (unweighted by w_i, detached; r_{t-1} kept when there are no
positives), and g_i = fdl_gain(a_i, r_{t-1}) multiplies the CIoU term of small positives. The DFL
term is left unweighted so that fdl acts on the box overlap as it does for the anchor head.

Gains: the hyp keys of the anchor head are reused so one hyp file serves both heads. This loss is
a weighted mean over positives for the whole batch, not a per-level mean, so the values are
rescaled to the usual magnitudes of this kind of loss: box gain = 150 * hyp['box'] (0.05 -> 7.5),
dfl gain = 30 * hyp['box'] (-> 1.5, a fixed fifth of the box gain), cls gain = hyp['cls'] (0.5).
Keys only the anchor head uses (obj, obj_pw, cls_pw, anchor_t, fl_gamma, label_smoothing) are
ignored here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.head_decoupled import dfl_expectation, grid_points, ltrb_to_xyxy
from utils.assign_tal import TaskAlignedAssigner
from utils.boxes import bbox_iou, xywh2xyxy
from utils.loss import fdl_gain, feedback_ratio

BOX_GAIN_PER_HYP = 150.0  # hyp['box'] 0.05 -> box gain 7.5
DFL_GAIN_PER_HYP = 30.0  # hyp['box'] 0.05 -> dfl gain 1.5
CLS_GAIN_PER_HYP = 1.0  # hyp['cls'] 0.5 -> cls gain 0.5


def pad_targets(targets: torch.Tensor, bsz: int, img_hw: tuple[int, int], device: torch.device | None = None):
    """(nt, 6) [image, cls, cx, cy, w, h] normalized -> per-image padded GT tensors on ``device``.

    Returns (labels (B, M) long, boxes (B, M, 4) xyxy input pixels, mask (B, M) bool) with M the
    largest box count of one image (0 when there are no targets). M sizes the tensors, so it is
    read back to the host: built from the loader's CPU targets and moved afterwards, that costs
    no GPU synchronisation.
    """
    dev = targets.device
    img = targets[:, 0].long()
    counts = torch.bincount(img, minlength=bsz) if targets.shape[0] else torch.zeros(bsz, dtype=torch.long, device=dev)
    m = int(counts.max()) if bsz else 0
    labels = torch.zeros(bsz, m, dtype=torch.long, device=dev)
    boxes = torch.zeros(bsz, m, 4, dtype=targets.dtype, device=dev)
    mask = torch.zeros(bsz, m, dtype=torch.bool, device=dev)
    if m:
        order = img.argsort(stable=True)
        img, t = img[order], targets[order]
        slot = torch.arange(len(img), device=dev) - (torch.cumsum(counts, 0) - counts)[img]
        h, w = img_hw
        scale = torch.tensor([w, h, w, h], dtype=targets.dtype, device=dev)
        labels[img, slot] = t[:, 1].long()
        boxes[img, slot] = xywh2xyxy(t[:, 2:6] * scale)
        mask[img, slot] = True
    if device is not None:
        labels, boxes, mask = (x.to(device, non_blocking=True) for x in (labels, boxes, mask))
    return labels, boxes, mask


def dfl_loss(box_logits: torch.Tensor, target_ltrb: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Distribution focal loss (Li et al. 2020): (P, 4 * reg_max) logits, (P, 4) stride units -> (P,).

    A target distance t between bins i and i + 1 is the mix (i + 1 - t) * bin i + (t - i) * bin i + 1,
    so the loss is the cross-entropy against both neighbours, weighted by their closeness.
    """
    t = target_ltrb.clamp(0, reg_max - 1 - 0.01)
    left = t.floor().long()
    w_left = left + 1 - t
    logits = box_logits.reshape(-1, reg_max)
    ce_l = F.cross_entropy(logits, left.view(-1), reduction="none").view_as(t)
    ce_r = F.cross_entropy(logits, (left + 1).view(-1), reduction="none").view_as(t)
    return (ce_l * w_left + ce_r * (1 - w_left)).mean(-1)


class DecoupledLoss:
    """Callable loss with ComputeLoss's contract: ``loss, items, extras = loss_fn(preds, targets)``.

    Args:
        detect: the model's DecoupledDetect head (strides, reg_max and nc are read from it).
        hyp: hyperparameters, unscaled (see the module doc for the gains).

    Call args: preds, list of raw (B, 4 * reg_max + nc, ny, nx); targets (nt, 6)
    [b, cls, cx, cy, w, h] normalized; ``update_feedback=False`` (validation) leaves r_{t-1} as is.
    Returns loss (scalar, multiplied by the batch size as ComputeLoss), items (3,) [box, dfl, cls]
    detached (they fill the box/obj/cls loss columns: the second is DFL for this head), extras
    {'fdl_ratio': r_t, 'fdl_gain': mean gain over positives}, detached 0-d device tensors.
    """

    def __init__(self, detect: nn.Module, hyp: dict, topk: int = 10, alpha: float = 0.5, beta: float = 6.0):
        self.detect, self.reg_max, self.nc = detect, detect.reg_max, detect.nc
        self.assigner = TaskAlignedAssigner(topk, alpha, beta)
        self.box_gain = hyp["box"] * BOX_GAIN_PER_HYP
        self.dfl_gain = hyp["box"] * DFL_GAIN_PER_HYP
        self.cls_gain = hyp["cls"] * CLS_GAIN_PER_HYP
        self.fdl, self.fdl_area = float(hyp["fdl"]), float(hyp["fdl_area"])
        self.r_prev: float | torch.Tensor = 0.0  # r_{t-1}; r_0 = 0 (a 0-d tensor after a step)
        self.strides = detect.stride.tolist()  # read once: a per-step read of a GPU buffer syncs

    def __call__(self, preds: list[torch.Tensor], targets: torch.Tensor, update_feedback: bool = True):
        preds = [p.float() for p in preds]  # the assignment and losses need fp32 under AMP
        dev, bsz = preds[0].device, preds[0].shape[0]
        box_logits, cls_logits = self.detect.flatten(preds)
        strides_l = self.strides
        points, strides = grid_points([tuple(p.shape[2:]) for p in preds], strides_l, dev)
        pred_boxes = ltrb_to_xyxy(dfl_expectation(box_logits, self.reg_max), points, strides)
        img_hw = (preds[0].shape[2] * strides_l[0], preds[0].shape[3] * strides_l[0])
        gt_labels, gt_boxes, gt_mask = pad_targets(targets.float(), bsz, img_hw, dev)
        t_boxes, t_scores, fg, _ = self.assigner(cls_logits.detach().sigmoid(), pred_boxes.detach(), points,
                                                 strides, gt_labels, gt_boxes, gt_mask)
        s_sum = t_scores.sum().clamp(min=1.0)
        lcls = F.binary_cross_entropy_with_logits(cls_logits, t_scores, reduction="sum") / s_sum
        lbox, ldfl, r_t, mean_gain = self._box_losses(box_logits, pred_boxes, points, strides, t_boxes,
                                                      t_scores, fg, s_sum)
        if update_feedback:
            self.r_prev = r_t
        lbox, ldfl, lcls = lbox * self.box_gain, ldfl * self.dfl_gain, lcls * self.cls_gain
        items = torch.stack((lbox, ldfl, lcls)).detach()
        return (lbox + ldfl + lcls) * bsz, items, {"fdl_ratio": r_t, "fdl_gain": mean_gain}

    def _box_losses(self, box_logits, pred_boxes, points, strides, t_boxes, t_scores, fg, s_sum):
        """CIoU (with the feedback-driven gain) and DFL on the positives; also r_t and the mean gain.

        The positives are gathered by the indices of one ``nonzero`` (one device read-back) rather
        than by boolean indexing, which reads back once per indexed tensor.
        """
        bi, ni = fg.nonzero(as_tuple=True)  # row-major: the order boolean indexing gives
        if not bi.numel():  # the count is known on the host once nonzero has run
            zero = box_logits.sum() * 0.0  # keeps the graph connected for backward
            r_prev = torch.as_tensor(self.r_prev, dtype=zero.dtype, device=zero.device)
            return zero, zero, r_prev, torch.ones((), device=zero.device)
        w = t_scores[bi, ni].sum(-1)  # (P,)
        tb = t_boxes[bi, ni]
        l_i = 1.0 - bbox_iou(pred_boxes[bi, ni], tb, xywh=False, CIoU=True)
        area = (tb[:, 2] - tb[:, 0]) * (tb[:, 3] - tb[:, 1])
        g = fdl_gain(area, self.r_prev, self.fdl, self.fdl_area) if self.fdl else torch.ones_like(l_i)
        lbox = (g * l_i * w).sum() / s_sum
        pts, st = points[ni], strides[ni]
        target_ltrb = torch.cat((pts - tb[:, :2], tb[:, 2:] - pts), 1) / st[:, None]
        ldfl = (dfl_loss(box_logits[bi, ni], target_ltrb, self.reg_max) * w).sum() / s_sum
        l_det = l_i.detach()
        l_all = l_det.sum()
        r_t = feedback_ratio(torch.where(area < self.fdl_area, l_det, 0.0).sum(), l_all, self.r_prev)
        return lbox, ldfl, r_t, g.detach().mean()  # 0-d device tensors: no host sync per step
