"""YOLOv5 detection loss with the feedback-driven gain for small objects.

Box loss 1 - CIoU on matched positives, objectness BCE against the (detached) IoU on every cell
with per-level balance, class BCE with optional label smoothing; optional focal loss.

Feedback-driven loss (hyp ``fdl``, ``fdl_area``; our formulation of Liu et al. 2021, see
docs in README): with l_i = 1 - CIoU_i and a_i the target area in input pixels, a sample is small
when a_i < fdl_area;
    r_t = sum_small l_i / sum_all l_i                       (detached; r_{t-1} kept if no positives)
    g_i = 1 + fdl * (1 - r_{t-1}) * (1 - a_i / fdl_area)    (small samples; 1 otherwise; r_0 = 0)
and the box loss of each level is mean(g_i * l_i). fdl = 0 gives the plain YOLOv5 loss.
"""

from __future__ import annotations

import torch
from torch import nn

from utils.assign import build_targets
from utils.boxes import bbox_iou

# Objectness balance per stride: finer grids have more (mostly empty) cells, so a lower mean
# BCE, and get a larger weight. P3-P5 follow YOLOv5; P2 keeps P3's weight, P6 extends the trend.
OBJ_BALANCE = {4: 4.0, 8: 4.0, 16: 1.0, 32: 0.4, 64: 0.1, 128: 0.02}


def scale_loss_gains(hyp: dict, nl: int, nc: int, imgsz: int) -> dict:
    """YOLOv5's scaling of the loss gains to the number of levels, classes and image size."""
    hyp = dict(hyp)
    hyp["box"] *= 3 / nl
    hyp["cls"] *= nc / 80 * 3 / nl
    hyp["obj"] *= (imgsz / 640) ** 2 * 3 / nl
    return hyp


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017) around a BCE-with-logits loss: (1 - p_t)^gamma * alpha_t * BCE."""

    def __init__(self, bce: nn.BCEWithLogitsLoss, gamma: float = 1.5, alpha: float = 0.25):
        super().__init__()
        self.bce, self.gamma, self.alpha = bce, gamma, alpha
        self.bce.reduction = "none"

    def forward(self, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        loss = self.bce(pred, true)
        p = pred.sigmoid()
        p_t = true * p + (1 - true) * (1 - p)
        alpha_t = true * self.alpha + (1 - true) * (1 - self.alpha)
        return (loss * alpha_t * (1.0 - p_t) ** self.gamma).mean()


def fdl_gain(area: torch.Tensor, r_prev: float | torch.Tensor, fdl: float, fdl_area: float) -> torch.Tensor:
    """Per-sample gain g_i (see module doc): 1 for a_i >= fdl_area, up to 1 + fdl*(1 - r_prev)."""
    small = area < fdl_area
    g = 1 + fdl * (1 - r_prev) * (1 - area / fdl_area)
    return torch.where(small, g, torch.ones_like(g))


def feedback_ratio(l_small: torch.Tensor, l_all: torch.Tensor, r_prev: float | torch.Tensor) -> torch.Tensor:
    """r_t = l_small / l_all as a 0-d tensor on their device, or r_prev when l_all is 0.

    Computed without reading a value back to the host: a per-step sync stalls the GPU, and the
    gain of the next step (:func:`fdl_gain`) accepts the tensor as it is.
    """
    r_prev = torch.as_tensor(r_prev, dtype=l_all.dtype, device=l_all.device)
    return torch.where(l_all > 0, l_small / l_all.clamp(min=torch.finfo(l_all.dtype).tiny), r_prev)


class ComputeLoss:
    """Callable loss: ``loss, items, extras = compute_loss(preds, targets)``.

    Args:
        detect: the model's Detect head (anchors (nl, na, 2) px and strides are read from it).
        hyp: hyperparameters with gains already scaled by :func:`scale_loss_gains`.

    Call args: preds, list of raw (B, na, ny, nx, 5 + nc); targets (nt, 6) [b, cls, cx, cy, w, h]
    normalized; ``update_feedback=False`` (validation) leaves r_{t-1} untouched.
    Returns loss (scalar, multiplied by the batch size as in YOLOv5), items (3,) [box, obj, cls]
    detached, extras {'fdl_ratio': r_t, 'fdl_gain': mean gain over positives}, both detached 0-d
    tensors on the loss's device (no host sync; ``float()`` them where a number is needed).
    """

    def __init__(self, detect: nn.Module, hyp: dict):
        self.detect, self.hyp = detect, hyp
        self.nc, self.nl = detect.nc, detect.nl
        dev = detect.anchors.device
        self.bce_cls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([hyp["cls_pw"]], device=dev))
        self.bce_obj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([hyp["obj_pw"]], device=dev))
        if hyp["fl_gamma"] > 0:
            self.bce_cls = FocalLoss(self.bce_cls, hyp["fl_gamma"])
            self.bce_obj = FocalLoss(self.bce_obj, hyp["fl_gamma"])
        eps = hyp["label_smoothing"]
        self.cp, self.cn = 1.0 - 0.5 * eps, 0.5 * eps  # positive / negative class targets
        self.balance = [OBJ_BALANCE.get(int(s), 0.02) for s in detect.stride.tolist()]
        self.fdl, self.fdl_area = float(hyp["fdl"]), float(hyp["fdl_area"])
        self.r_prev: float | torch.Tensor = 0.0  # r_{t-1}; r_0 = 0 (a 0-d tensor after a step)

    def __call__(self, preds: list[torch.Tensor], targets: torch.Tensor, update_feedback: bool = True):
        dev = preds[0].device
        lcls, lbox, lobj = (torch.zeros(1, device=dev) for _ in range(3))
        stride = self.detect.stride.to(dev)
        anchors = self.detect.anchors.to(dev) / stride.view(-1, 1, 1)  # grid units
        shapes = [tuple(p.shape[2:4]) for p in preds]
        targets = targets.to(dev, non_blocking=True)  # the engine hands over the loader's CPU targets
        tcls, tbox, indices, anch = build_targets(shapes, targets, anchors, self.hyp["anchor_t"])
        l_small, l_all, gains = torch.zeros((), device=dev), torch.zeros((), device=dev), []
        for i, pi in enumerate(preds):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pi.shape[:4], dtype=pi.dtype, device=dev)
            if b.shape[0]:
                pxy, pwh, _, pcls = pi[b, a, gj, gi].split((2, 2, 1, self.nc), 1)
                pbox = torch.cat((pxy.sigmoid() * 2 - 0.5, (pwh.sigmoid() * 2) ** 2 * anch[i]), 1)
                iou = bbox_iou(pbox, tbox[i], CIoU=True)
                l_i = 1.0 - iou
                area = tbox[i][:, 2] * tbox[i][:, 3] * stride[i] ** 2  # input pixels
                g = fdl_gain(area, self.r_prev, self.fdl, self.fdl_area) if self.fdl else torch.ones_like(l_i)
                lbox += (g * l_i).mean()
                l_det = l_i.detach()
                l_small += torch.where(area < self.fdl_area, l_det, 0.0).sum()  # no boolean index: no read-back
                l_all += l_det.sum()
                gains.append(g.detach())
                tobj[b, a, gj, gi] = iou.detach().clamp(0).type(tobj.dtype)
                if self.nc > 1:
                    t = torch.full_like(pcls, self.cn)
                    t[torch.arange(b.shape[0], device=dev), tcls[i]] = self.cp
                    lcls += self.bce_cls(pcls, t)
            lobj += self.bce_obj(pi[..., 4], tobj) * self.balance[i]
        r_t = feedback_ratio(l_small, l_all, self.r_prev)
        mean_gain = torch.cat(gains).mean() if gains else torch.ones((), device=dev)
        if update_feedback:
            self.r_prev = r_t
        lbox *= self.hyp["box"]
        lobj *= self.hyp["obj"]
        lcls *= self.hyp["cls"]
        bs = preds[0].shape[0]
        items = torch.cat((lbox, lobj, lcls)).detach()
        return (lbox + lobj + lcls) * bs, items, {"fdl_ratio": r_t, "fdl_gain": mean_gain}


def build_loss(model: nn.Module, hyp: dict, imgsz: int):
    """The loss that fits the model's head: ComputeLoss for Detect, DecoupledLoss for DecoupledDetect.

    ``hyp`` is the unscaled hyperparameter dict; the anchor loss gets :func:`scale_loss_gains`
    (levels, classes, image size), the decoupled loss rescales its gains itself
    (utils/loss_decoupled.py). ``model`` may be wrapped (DDP ``.module``).
    """
    from models.head_decoupled import DecoupledDetect
    from utils.loss_decoupled import DecoupledLoss  # imports fdl_gain from this module

    detect = getattr(model, "module", model).detect
    if isinstance(detect, DecoupledDetect):
        return DecoupledLoss(detect, hyp)
    return ComputeLoss(detect, scale_loss_gains(hyp, detect.nl, detect.nc, imgsz))
