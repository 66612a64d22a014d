import pytest
import torch

from models.yolo import build_model
from utils.hyp import load_hyp
from utils.loss import ComputeLoss, fdl_gain, scale_loss_gains

TARGETS = torch.tensor([[0, 1, 0.50, 0.50, 0.40, 0.30],   # large
                        [0, 0, 0.20, 0.30, 0.05, 0.08],   # small (6x10 px at 128)
                        [1, 2, 0.60, 0.60, 0.10, 0.12],   # small-ish
                        [3, 0, 0.10, 0.90, 0.03, 0.04]])  # tiny


def _setup(fdl=0.0, seed=0):
    torch.manual_seed(seed)
    model = build_model("models/yolov5n-p2.yaml", nc=3)
    hyp = scale_loss_gains({**load_hyp(), "fdl": fdl}, model.detect.nl, 3, 128)
    return model, ComputeLoss(model.detect, hyp)


def test_loss_decreases_when_fitting_one_batch():
    model, loss_fn = _setup()
    x = torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(1))
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


def test_fdl_zero_reproduces_plain_loss_exactly():
    x = torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    model, plain = _setup(fdl=0.0)
    loss_a, items_a, _ = plain(model(x), TARGETS)
    model_b, with_fdl = _setup(fdl=0.0)
    with_fdl.r_prev = 0.3  # feedback state is irrelevant when fdl = 0
    loss_b, items_b, _ = with_fdl(model_b(x), TARGETS)
    assert torch.equal(loss_a, loss_b) and torch.equal(items_a, items_b)


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
