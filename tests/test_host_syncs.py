"""Host read-backs of a training step: how many the losses make, and that removing them kept the numbers.

On a GPU every ``nonzero`` (also inside boolean indexing) and every ``item()``/``int()``/
``float()`` of a device tensor waits for the queued kernels. The CPU runs the same code, so the
operators are counted here with a dispatch mode.
"""

from __future__ import annotations

import collections
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from models.head_decoupled import dfl_expectation, grid_points, ltrb_to_xyxy
from models.yolo import build_model
from utils.assign import _OFFSETS, build_targets
from utils.boxes import bbox_iou
from utils.hyp import load_hyp
from utils.loss import build_loss, fdl_gain, feedback_ratio
from utils.loss_decoupled import dfl_loss

MODELS = Path(__file__).resolve().parents[1] / "models"


class ReadBacks(TorchDispatchMode):
    """Counts the operators that read a device value back: nonzero, boolean indexing, scalar reads."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.__name__.split(".")[0]
        if name == "index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1]):
            self.counts["boolean index"] += 1
        elif name in ("nonzero", "_local_scalar_dense", "masked_select"):
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def _targets(n: int, bsz: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.randint(0, bsz, (n, 1), generator=g).float(), torch.randint(0, 3, (n, 1), generator=g).float(),
                      torch.rand(n, 2, generator=g) * 0.9 + 0.05, torch.rand(n, 2, generator=g) * 0.3 + 0.01], 1)


def _step_counts(cfg: str) -> collections.Counter:
    torch.manual_seed(0)
    model = build_model(MODELS / cfg, nc=3)
    loss_fn = build_loss(model, {**load_hyp(), "fdl": 1.0}, 128)
    imgs, targets = torch.rand(2, 3, 128, 128), _targets(8, 2, 0)
    loss_fn(model(imgs), targets)  # r_{t-1} becomes a tensor, as in every later step
    with ReadBacks() as rb:
        loss, _, _ = loss_fn(model(imgs), targets)
        loss.backward()
    return rb.counts


def test_anchor_loss_reads_back_once_per_level():
    counts = _step_counts("yolov5n-p2.yaml")
    assert counts == {"nonzero": 4}  # the cells of the 4 levels; the feedback ratio reads nothing


def test_decoupled_loss_reads_back_two_nonzeros():
    counts = _step_counts("yolov5n-p2-af.yaml")
    # the assigner's sparse IoU and the positives; the scalar reads left are of CPU tensors
    # (the per-image box count of the loader's targets) or CPU-only shortcuts
    assert counts["nonzero"] == 2 and counts["boolean index"] == 0


def _build_targets_boolean(shapes, targets, anchors, anchor_t=4.0):
    """The assignment written with boolean filtering (three read-backs per level): the reference."""
    na = anchors.shape[1]
    nt = targets.shape[0]
    ai = torch.arange(na).float().view(na, 1).repeat(1, nt)
    t_all = torch.cat((targets.repeat(na, 1, 1), ai[..., None]), 2)
    out = []
    for i, (ny, nx) in enumerate(shapes):
        gain = torch.tensor([1, 1, nx, ny, nx, ny, 1], dtype=torch.float32)
        t = t_all * gain
        r = t[..., 4:6] / anchors[i][:, None]
        t = t[torch.max(r, 1 / r).max(2)[0] < anchor_t]
        gxy = t[:, 2:4]
        gxi = gain[[2, 3]] - gxy
        j, k = ((gxy % 1 < 0.5) & (gxy > 1)).T
        l, m = ((gxi % 1 < 0.5) & (gxi > 1)).T
        sel = torch.stack((torch.ones_like(j), j, k, l, m))
        t = t.repeat((5, 1, 1))[sel]
        offsets = (torch.zeros_like(gxy)[None] + _OFFSETS[:, None])[sel]
        gij = (t[:, 2:4] - offsets).long()
        gi, gj = gij[:, 0].clamp(0, nx - 1), gij[:, 1].clamp(0, ny - 1)
        out.append((t[:, 0].long(), t[:, 1].long(), t[:, 6].long(), gj, gi,
                    torch.cat((t[:, 2:4] - torch.stack((gi, gj), 1), t[:, 4:6]), 1), anchors[i][t[:, 6].long()]))
    return out


def test_build_targets_same_assignment_as_boolean_filtering():
    anchors = torch.tensor([[[1.2, 1.5], [2.0, 3.8], [4.0, 2.9]], [[1.9, 4.0], [4.0, 2.8], [3.8, 7.5]],
                            [[1.8, 3.6], [3.9, 2.9], [4.0, 6.3]], [[2.5, 3.5], [5.0, 6.0], [9.0, 8.0]]])
    shapes = [(40, 32), (20, 16), (10, 8), (5, 4)]
    targets = torch.cat([_targets(30, 4, 3), torch.tensor([[0, 1, 0.5, 0.5, 0.9, 0.02]])])  # + one matching nothing
    tcls, tbox, indices, anch = build_targets(shapes, targets, anchors)
    for i, (b, c, a, gj, gi, box, an) in enumerate(_build_targets_boolean(shapes, targets, anchors)):
        assert len(b) > 0
        for got, want in zip((*indices[i], tcls[i], tbox[i], anch[i]), (b, a, gj, gi, c, box, an)):
            assert torch.equal(got, want)


def test_decoupled_box_losses_same_as_boolean_indexing():
    torch.manual_seed(0)
    model = build_model(MODELS / "yolov5n-p2-af.yaml", nc=3)
    loss_fn = build_loss(model, {**load_hyp(), "fdl": 1.0}, 128)
    loss_fn.r_prev = torch.tensor(0.3)
    head = model.detect
    raw = model(torch.rand(2, 3, 128, 128))
    box_logits, _ = head.flatten(raw)
    points, strides = grid_points([tuple(p.shape[2:]) for p in raw], head.stride.tolist())
    pred = ltrb_to_xyxy(dfl_expectation(box_logits, head.reg_max), points, strides)
    g = torch.Generator().manual_seed(2)
    fg = torch.rand(pred.shape[:2], generator=g) < 0.02
    xy = torch.rand(*pred.shape[:2], 2, generator=g) * 100
    t_boxes = torch.cat((xy, xy + torch.rand(*pred.shape[:2], 2, generator=g) * 40 + 2), -1) * fg[..., None]
    t_scores = torch.rand(*pred.shape[:2], 3, generator=g) * fg[..., None]
    s_sum = t_scores.sum().clamp(min=1.0)
    lbox, ldfl, r_t, gain = loss_fn._box_losses(box_logits, pred, points, strides, t_boxes, t_scores, fg, s_sum)
    # reference: boolean indexing of every tensor
    w, tb = t_scores.sum(-1)[fg], t_boxes[fg]
    l_i = 1.0 - bbox_iou(pred[fg], tb, xywh=False, CIoU=True)
    area = (tb[:, 2] - tb[:, 0]) * (tb[:, 3] - tb[:, 1])
    gi = fdl_gain(area, loss_fn.r_prev, 1.0, loss_fn.fdl_area)
    pts, st = points.expand(2, -1, -1)[fg], strides.expand(2, -1)[fg]
    ltrb = torch.cat((pts - tb[:, :2], tb[:, 2:] - pts), 1) / st[:, None]
    assert torch.equal(lbox, (gi * l_i * w).sum() / s_sum)
    assert torch.equal(ldfl, (dfl_loss(box_logits[fg], ltrb, head.reg_max) * w).sum() / s_sum)
    assert torch.equal(gain, gi.detach().mean())
    small = area < loss_fn.fdl_area
    assert small.any() and (~small).any()
    # the masked sum adds the same terms in another order: equal up to float rounding
    torch.testing.assert_close(r_t, feedback_ratio(l_i.detach()[small].sum(), l_i.detach().sum(), 0.3),
                               rtol=1e-6, atol=1e-7)


def test_decoupled_box_losses_without_positives_keep_r_prev_and_the_graph():
    torch.manual_seed(0)
    model = build_model(MODELS / "yolov5n-p2-af.yaml", nc=3)
    loss_fn = build_loss(model, {**load_hyp(), "fdl": 1.0}, 64)
    loss_fn.r_prev = torch.tensor(0.25)
    raw = model(torch.rand(1, 3, 64, 64))
    box_logits, _ = model.detect.flatten(raw)
    n = box_logits.shape[1]
    fg = torch.zeros(1, n, dtype=torch.bool)
    lbox, ldfl, r_t, gain = loss_fn._box_losses(box_logits, torch.zeros(1, n, 4), torch.zeros(n, 2), torch.ones(n),
                                                torch.zeros(1, n, 4), torch.zeros(1, n, 3), fg, torch.tensor(1.0))
    assert lbox.item() == 0 and ldfl.item() == 0 and r_t.item() == 0.25 and gain.item() == 1
    assert lbox.requires_grad
    (lbox + ldfl).backward()  # connected to the graph: backward runs
