"""ComputeLoss: a hand-written YOLOv5 reference on a constructed batch, the feedback gain, training signal."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from models.yolo import build_model
from utils.hyp import load_hyp
from utils.loss import ComputeLoss, fdl_gain, feedback_ratio, scale_loss_gains

TARGETS = torch.tensor([[0, 1, 0.50, 0.50, 0.40, 0.30],   # large
                        [0, 0, 0.20, 0.30, 0.05, 0.08],   # small (6x10 px at 128)
                        [1, 2, 0.60, 0.60, 0.10, 0.12],   # small-ish
                        [3, 0, 0.10, 0.90, 0.03, 0.04]])  # tiny


def _setup(fdl=0.0, seed=0):
    torch.manual_seed(seed)
    model = build_model(Path(__file__).resolve().parents[1] / "models" / "yolov5n-p2.yaml", nc=3)
    hyp = scale_loss_gains({**load_hyp(), "fdl": fdl}, model.detect.nl, 3, 128)
    return model, ComputeLoss(model.detect, hyp)


def test_loss_decreases_when_fitting_one_batch():
    model, loss_fn = _setup()
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))  # 64 px: fast on 2 cores
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(30):
        loss, items, _ = loss_fn(model(x), TARGETS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert items.shape == (3,)
    assert losses[-1] < 0.7 * losses[0]


def test_loss_with_no_labels_is_finite_objectness_only():
    model, loss_fn = _setup()
    loss, items, extras = loss_fn(model(torch.rand(2, 3, 64, 64)), torch.zeros((0, 6)))
    assert torch.isfinite(loss) and loss > 0
    assert items[0] == 0 and items[2] == 0 and items[1] > 0
    assert extras["fdl_gain"] == 1.0 and extras["fdl_ratio"] == 0.0  # r_0 kept: no positives


def test_fdl_gain_formula_hand_built():
    area = torch.tensor([100.0, 512.0, 1024.0, 5000.0])
    g = fdl_gain(area, r_prev=0.25, fdl=2.0, fdl_area=1024)
    expected = [1 + 2 * 0.75 * (1 - 100 / 1024), 1 + 2 * 0.75 * 0.5, 1.0, 1.0]
    assert torch.allclose(g, torch.tensor(expected))
    # smaller objects and a smaller small-object share r get larger gains
    assert g[0] > g[1] > g[2]
    assert (fdl_gain(area, 0.1, 2.0, 1024) > fdl_gain(area, 0.5, 2.0, 1024))[:2].all()


# ---- an independent reference: the YOLOv5 loss written out by hand on a constructed batch ----
# Two levels on a 64x64 input, one anchor each: P3-like stride 8 (8x8 grid, anchor 8x8 px) and
# P4-like stride 16 (4x4 grid, anchor 64x64 px). nc = 2.
REF_IMG, REF_STRIDES, REF_ANCHORS_PX = 64, (8, 16), ((8.0, 8.0), (64.0, 64.0))
REF_TARGETS = torch.tensor([
    [0, 1, 10 / 64, 22 / 64, 12 / 64, 10 / 64],  # 12x10 px at (10, 22): small (120 px^2)
    [1, 0, 24 / 64, 40 / 64, 40 / 64, 48 / 64],  # 40x48 px at (24, 40): not small (1920 px^2)
])
# Positives worked out by hand from the matching rule (w/h ratio to the anchor < 4; the cell
# holding the centre plus a neighbour when the centre lies in the near half of a cell and > 1
# cell from that border). Target 0, stride 8: centre (1.25, 2.75) cells, wh (1.5, 1.25) vs
# anchor 1x1 -> own cell (1, 2), left (0, 2) since x%1 = 0.25, down (1, 3) since (8 - y)%1 =
# 0.25; at stride 16 its wh (0.75, 0.625) vs anchor 4x4 is a ratio 6.4 > 4: no match.
# Target 1, stride 16: centre (1.5, 2.5), wh (2.5, 3.0) vs 4x4 -> own cell (1, 2) only (x%1 =
# y%1 = 0.5 is not near); at stride 8 its wh (5, 6) vs 1x1 is a ratio 6: no match.
# Rows: (level, b, gj, gi, class, [dx, dy, w, h] relative to the cell corner, grid units, area px^2)
REF_POSITIVES = [
    (0, 0, 2, 1, 1, (0.25, 0.75, 1.5, 1.25), 120.0),
    (0, 0, 2, 0, 1, (1.25, 0.75, 1.5, 1.25), 120.0),
    (0, 0, 3, 1, 1, (0.25, -0.25, 1.5, 1.25), 120.0),
    (1, 1, 2, 1, 0, (0.5, 0.5, 2.5, 3.0), 1920.0),
]
REF_HYP = {"box": 0.05, "obj": 1.0, "cls": 0.5, "cls_pw": 1.0, "obj_pw": 1.0, "fl_gamma": 0.0,
           "label_smoothing": 0.1, "anchor_t": 4.0, "fdl": 0.0, "fdl_area": 1024.0}
REF_BALANCE = (4.0, 1.0)  # YOLOv5's objectness balance for strides 8 and 16


def _ref_loss_fn(fdl: float) -> ComputeLoss:
    from models.head import Detect

    det = Detect([4, 4], nc=2, anchors=[list(a) for a in REF_ANCHORS_PX])
    det.stride.copy_(torch.tensor(REF_STRIDES, dtype=torch.float32))
    return ComputeLoss(det, {**REF_HYP, "fdl": fdl})


def _ref_preds(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 1, REF_IMG // s, REF_IMG // s, 7, generator=g) * 0.8 for s in REF_STRIDES]


def _ciou(p, t) -> float:
    """Complete IoU of two (cx, cy, w, h) boxes (Zheng et al. 2020), in plain Python floats."""
    def corners(b):
        return b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    (a1, b1, a2, b2), (c1, d1, c2, d2) = corners(p), corners(t)
    inter = max(0.0, min(a2, c2) - max(a1, c1)) * max(0.0, min(b2, d2) - max(b1, d1))
    iou = inter / (p[2] * p[3] + t[2] * t[3] - inter)
    diag2 = (max(a2, c2) - min(a1, c1)) ** 2 + (max(b2, d2) - min(b1, d1)) ** 2
    rho2 = (p[0] - t[0]) ** 2 + (p[1] - t[1]) ** 2
    v = 4 / math.pi ** 2 * (math.atan(t[2] / t[3]) - math.atan(p[2] / p[3])) ** 2
    alpha = v / ((1 - iou) + v)
    return iou - rho2 / diag2 - alpha * v


def _bce(x: np.ndarray, t: np.ndarray) -> float:
    """Mean binary cross-entropy with logits: log(1 + e^x) - t * x."""
    return float(np.mean(np.logaddexp(0.0, x) - t * x))


def _reference(preds: list[torch.Tensor], positives, r_prev: float, fdl: float) -> dict:
    """YOLOv5 loss with the feedback gain, from the formulas of utils/loss.py's docstring."""
    P = [p.double().numpy() for p in preds]
    sig = lambda x: 1 / (1 + math.exp(-x))
    cp, cn = 1 - 0.5 * REF_HYP["label_smoothing"], 0.5 * REF_HYP["label_smoothing"]
    tobj = [np.zeros(p.shape[:4]) for p in P]
    l_box, l_cls, ls, gains = [[] for _ in P], [[] for _ in P], [], []
    for lvl, b, gj, gi, c, tb, area in positives:
        v = P[lvl][b, 0, gj, gi]
        aw, ah = (a / REF_STRIDES[lvl] for a in REF_ANCHORS_PX[lvl])
        pb = (sig(v[0]) * 2 - 0.5, sig(v[1]) * 2 - 0.5, (sig(v[2]) * 2) ** 2 * aw, (sig(v[3]) * 2) ** 2 * ah)
        ciou = _ciou(pb, tb)
        g = 1 + fdl * (1 - r_prev) * (1 - area / REF_HYP["fdl_area"]) if area < REF_HYP["fdl_area"] else 1.0
        l_box[lvl].append(g * (1 - ciou))
        ls.append((1 - ciou, area < REF_HYP["fdl_area"]))
        gains.append(g)
        tobj[lvl][b, 0, gj, gi] = max(ciou, 0.0)
        t = np.full(2, cn)
        t[c] = cp
        l_cls[lvl].append((v[5:], t))
    lbox = sum(np.mean(x) for x in l_box if x)
    lcls = sum(_bce(np.stack([x for x, _ in c]), np.stack([t for _, t in c])) for c in l_cls if c)
    lobj = sum(_bce(p[..., 4], t) * bal for p, t, bal in zip(P, tobj, REF_BALANCE))
    items = [lbox * REF_HYP["box"], lobj * REF_HYP["obj"], lcls * REF_HYP["cls"]]
    r_t = sum(l for l, small in ls if small) / sum(l for l, _ in ls) if ls else r_prev
    return {"items": items, "loss": sum(items) * P[0].shape[0], "r_t": r_t,
            "gain": float(np.mean(gains)) if gains else 1.0, "gains": gains}


@pytest.mark.parametrize("fdl, r_prev", [(0.0, 0.0), (0.0, 0.3), (1.0, 0.25), (2.0, 1.0)])
def test_loss_matches_hand_written_yolov5_reference(fdl, r_prev):
    preds = _ref_preds()
    loss_fn = _ref_loss_fn(fdl)
    loss_fn.r_prev = r_prev
    loss, items, extras = loss_fn(preds, REF_TARGETS)
    ref = _reference(preds, REF_POSITIVES, r_prev, fdl)
    np.testing.assert_allclose(items.numpy(), ref["items"], rtol=1e-5, atol=1e-7)
    assert loss.item() == pytest.approx(ref["loss"], rel=1e-5)
    assert extras["fdl_ratio"] == pytest.approx(ref["r_t"], rel=1e-5)
    assert extras["fdl_gain"] == pytest.approx(ref["gain"], rel=1e-6)
    assert loss_fn.r_prev == extras["fdl_ratio"]  # r_t becomes r_{t-1} of the next call
    assert all(v > 0 for v in ref["items"]) and 0 < ref["r_t"] < 1  # every term is exercised


def test_known_gain_and_feedback_ratio_on_constructed_batch():
    preds = _ref_preds(seed=1)
    loss_fn = _ref_loss_fn(fdl=1.0)
    loss_fn.r_prev = 0.25
    _, _, extras = loss_fn(preds, REF_TARGETS)
    g_small = 1 + 1.0 * (1 - 0.25) * (1 - 120 / 1024)  # three positives of the 120 px^2 target
    assert extras["fdl_gain"] == pytest.approx((3 * g_small + 1.0) / 4, rel=1e-6)
    assert extras["fdl_gain"] > 1  # small positives and r_{t-1} < 1: the gain must exceed 1
    ref = _reference(preds, REF_POSITIVES, 0.25, 1.0)
    assert ref["gains"] == pytest.approx([g_small] * 3 + [1.0])
    assert extras["fdl_ratio"] == pytest.approx(ref["r_t"], rel=1e-5)
    # no small target at all: r_t = 0 and every gain is 1
    _, _, large_only = loss_fn(preds, REF_TARGETS[1:])
    assert large_only["fdl_ratio"] == 0.0 and large_only["fdl_gain"] == 1.0
    # r_{t-1} = 1 (small objects already carry all the loss): no boost
    loss_fn.r_prev = 1.0
    assert loss_fn(preds, REF_TARGETS)[2]["fdl_gain"] == pytest.approx(1.0)


def test_objectness_only_without_targets_matches_reference():
    preds = _ref_preds(seed=2)
    loss, items, extras = _ref_loss_fn(fdl=1.0)(preds, torch.zeros((0, 6)))
    ref = _reference(preds, [], 0.0, 1.0)
    np.testing.assert_allclose(items.numpy(), ref["items"], rtol=1e-5, atol=1e-7)
    assert items[0] == 0 and items[2] == 0 and extras == {"fdl_ratio": 0.0, "fdl_gain": 1.0}


def test_fdl_raises_box_loss_and_reports_feedback():
    x = torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    model, plain = _setup(fdl=0.0)
    preds = model(x)
    _, items_plain, extras_plain = plain(preds, TARGETS)
    _, fdl_loss = _setup(fdl=1.0)
    fdl_loss.r_prev = 0.2
    _, items_fdl, extras = fdl_loss(preds, TARGETS)
    assert items_fdl[0] > items_plain[0]  # small samples weighted up
    assert items_fdl[1] == items_plain[1] and items_fdl[2] == items_plain[2]
    assert 0 < extras["fdl_ratio"] < 1 and extras["fdl_gain"] > 1
    assert extras["fdl_ratio"] == pytest.approx(extras_plain["fdl_ratio"])  # r_t is of unweighted l_i
    assert fdl_loss.r_prev == extras["fdl_ratio"]  # feedback stored for the next iteration
    fdl_loss(preds, TARGETS[:1], update_feedback=False)
    assert fdl_loss.r_prev == extras["fdl_ratio"]  # validation calls leave it alone


def test_feedback_ratio_is_a_device_tensor_and_keeps_r_prev_without_positives():
    r = feedback_ratio(torch.tensor(0.75), torch.tensor(3.0), 0.4)
    assert isinstance(r, torch.Tensor) and r.dim() == 0 and float(r) == pytest.approx(0.25)
    assert float(feedback_ratio(torch.tensor(0.0), torch.tensor(0.0), 0.4)) == pytest.approx(0.4)  # no nan
    # a tensor r_{t-1} gives the same gains as the number (the loss keeps it on the device)
    area = torch.tensor([100.0, 700.0, 5000.0])
    assert torch.allclose(fdl_gain(area, torch.tensor(0.3), 2.0, 1024), fdl_gain(area, 0.3, 2.0, 1024))


def test_loss_extras_stay_tensors_and_feed_the_next_step():
    model, loss_fn = _setup(fdl=1.0)
    preds = model(torch.rand(4, 3, 160, 160, generator=torch.Generator().manual_seed(2)))  # large and small
    _, _, extras = loss_fn(preds, TARGETS)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in extras.values())
    assert 0 < float(extras["fdl_ratio"]) < 1 and float(extras["fdl_gain"]) > 1
    _, _, again = loss_fn(preds, TARGETS)  # r_{t-1} now the tensor from the first call
    ref = ComputeLoss(model.detect, loss_fn.hyp)
    ref.r_prev = float(extras["fdl_ratio"])
    _, _, from_float = ref(preds, TARGETS)
    assert float(again["fdl_gain"]) == pytest.approx(float(from_float["fdl_gain"]), rel=1e-6)
