"""train_one_epoch and multi-scale on a stand-in model, loss and loader (fast, no dataset)."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn

import train
from utils.data.stitcher import StitchingLoader
from utils.engine import RunSpec, multi_scale, train_one_epoch
from utils.errors import TrainingError
from utils.optim import Warmup

GRID = 32


def _batches(n: int, size: int = 64) -> list[tuple]:
    """n collated batches of 2 uint8 images (2, 3, size, size) with one target each."""
    g = torch.Generator().manual_seed(0)
    return [(torch.randint(0, 256, (2, 3, size, size), generator=g, dtype=torch.uint8),
             torch.tensor([[0, 0, 0.5, 0.5, 0.2, 0.2], [1, 0, 0.5, 0.5, 0.3, 0.3]]), ("a", "b"), (None, None))
            for _ in range(n)]


class _Loss:
    """Mean of the model output as the loss; ``value`` replaces it (e.g. nan) when set."""

    def __init__(self, value: float | None = None):
        self.value = value

    def __call__(self, preds, targets):
        loss = preds.mean() if self.value is None else preds.mean() * 0 + self.value
        return loss, torch.zeros(3), {"fdl_ratio": 0.0, "fdl_gain": 1.0}


class _CountingEMA:
    def __init__(self):
        self.updates = 0

    def update(self, model):
        self.updates += 1


def _spec(multi: bool = False, accumulate: float = 1.0, warmup_iters: int = 0) -> RunSpec:
    warmup = Warmup(warmup_iters, bias_lr=0.0, momentum=0.8, final_momentum=0.9, accumulate=accumulate)
    return RunSpec(device=torch.device("cpu"), epochs=2, imgsz=64, grid=GRID, warmup=warmup, lf=lambda e: 1.0,
                   multi_scale=multi, seed=0)


def _epoch(batches, spec, loss=None, epoch=0, last_opt_step=-1):
    model = nn.Conv2d(3, 1, 3, padding=1)
    sizes = []
    model.register_forward_pre_hook(lambda m, args: sizes.append(tuple(args[0].shape[2:])))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ema = _CountingEMA()
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    out = train_one_epoch(model, StitchingLoader(batches, 0.0), opt, loss or _Loss(), ema, scaler,
                          spec=spec, epoch=epoch, last_opt_step=last_opt_step)
    return out, sizes, ema.updates


def test_multi_scale_sizes_are_grid_multiples_that_vary_within_half_to_one_and_a_half():
    imgs = torch.rand(2, 3, 64, 96)
    rng = random.Random(0)
    shapes = [tuple(multi_scale(imgs, 96, GRID, rng).shape) for _ in range(30)]
    assert all(s[:2] == (2, 3) and s[2] % GRID == 0 and s[3] % GRID == 0 for s in shapes)
    long_sides = {max(s[2:]) for s in shapes}
    assert long_sides == {64, 96, 128}  # the multiples of 32 in [48, 144]
    for h, w in (s[2:] for s in shapes):  # aspect kept: the short side follows the long one
        assert h == math.ceil(64 * w / 96 / GRID) * GRID
    assert {max(multi_scale(imgs[..., :32], 32, GRID, rng).shape[2:]) for _ in range(10)} == {32}  # never 0
    again = random.Random(0)
    assert shapes == [tuple(multi_scale(imgs, 96, GRID, again).shape) for _ in range(30)]  # seeded


def test_multi_scale_batches_reach_the_model_at_varying_sizes():
    _, sizes, _ = _epoch(_batches(8), _spec(multi=True))
    assert len(set(sizes)) >= 2 and all(h % GRID == 0 and w % GRID == 0 for h, w in sizes)
    _, sizes, _ = _epoch(_batches(8), _spec(multi=False))
    assert set(sizes) == {(64, 64)}


def test_accumulation_steps_the_optimizer_every_nbs_over_batch_size_batches():
    # accumulate 2 (nbs 32, batch 16), no warmup: iterations 0..5 step at 1, 3, 5
    out, _, steps = _epoch(_batches(6), _spec(accumulate=2.0))
    assert steps == 3 and out.last_opt_step == 5
    # the next epoch continues the count across the boundary: iterations 6..11 step at 7, 9, 11
    out, _, steps = _epoch(_batches(6), _spec(accumulate=2.0), epoch=1, last_opt_step=5)
    assert steps == 3 and out.last_opt_step == 11
    assert set(out.stats) == {"train/box_loss", "train/obj_loss", "train/cls_loss", "fdl/ratio", "fdl/gain",
                              "stitch/fraction"}


def test_five_non_finite_losses_in_a_row_and_an_empty_loader_raise_training_error():
    with pytest.raises(TrainingError, match="5 non-finite losses in a row .*nan at epoch 0, batch 4"):
        _epoch(_batches(8), _spec(), loss=_Loss(float("nan")))
    with pytest.raises(TrainingError, match="no batches"):
        _epoch([], _spec())


def test_train_py_prints_a_training_error_as_one_line(monkeypatch, tmp_path, capsys):
    class _Diverging:
        def __init__(self, *a, **k):
            pass

        def fit(self):
            raise TrainingError("loss is nan at epoch 0, batch 3; lower lr0 or check labels")

    monkeypatch.setattr("utils.trainer.Trainer", _Diverging)
    assert train.main(["--project", str(tmp_path), "--epochs", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["train.py: error: loss is nan at epoch 0, batch 3; lower lr0 or check labels"]


class _ScriptedLoss:
    """Loss = mean output * scripted value (a nan reaches the gradients); items, extras as tensors."""

    def __init__(self, values: list[float]):
        self.values, self.calls = values, 0

    def __call__(self, preds, targets):
        v = self.values[self.calls]
        self.calls += 1
        items = torch.tensor([v, 2 * v, 3 * v]) if math.isfinite(v) else torch.zeros(3)
        return preds.mean() * v, items, {"fdl_ratio": torch.tensor(v / 10), "fdl_gain": torch.tensor(1.0 + v)}


def test_epoch_means_accumulate_device_tensors_and_convert_once():
    out, _, _ = _epoch(_batches(4), _spec(), loss=_ScriptedLoss([1.0, 2.0, 3.0, 6.0]))
    assert out.stats["train/box_loss"] == pytest.approx(3.0) and out.stats["train/cls_loss"] == pytest.approx(9.0)
    assert out.stats["fdl/ratio"] == pytest.approx(0.3) and out.stats["fdl/gain"] == pytest.approx(4.0)
    assert all(type(v) is float for v in out.stats.values())


def _guarded_epoch(values, accumulate=1.0, stop=None, on_batch=None):
    """One epoch over len(values) batches with scripted losses; returns (result, ema updates, weights before, model)."""
    torch.manual_seed(0)
    model = nn.Conv2d(3, 1, 3, padding=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ema = _CountingEMA()
    before = [p.detach().clone() for p in model.parameters()]
    out = train_one_epoch(model, StitchingLoader(_batches(len(values)), 0.0), opt, _ScriptedLoss(values), ema,
                          torch.amp.GradScaler("cpu", enabled=False), spec=_spec(accumulate=accumulate), epoch=0,
                          last_opt_step=-1, stop=stop, on_batch=on_batch)
    return out, ema.updates, before, model


def test_a_non_finite_loss_skips_its_step_with_a_warning_and_leaves_the_epoch_means_finite(caplog):
    nan, inf = float("nan"), float("inf")
    out, steps, _, model = _guarded_epoch([1.0, nan, 3.0, inf, 5.0])
    assert steps == 3  # batches 0, 2 and 4 step; the bad ones had no backward (a nan would reach the weights)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert out.stats["train/box_loss"] == pytest.approx(3.0)  # mean of 1, 3, 5: the bad batches are left out
    assert out.stats["fdl/ratio"] == pytest.approx(0.3) and not out.stopped
    warnings = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(warnings) == 2 and "batch 1" in warnings[0] and "inf" in warnings[1]
    # four in a row is still a bad patch, not a diverged run; the fifth in a row stops it
    assert _guarded_epoch([1.0, nan, nan, nan, nan, 1.0])[1] == 2
    with pytest.raises(TrainingError, match="5 non-finite losses in a row"):
        _guarded_epoch([1.0, nan, nan, nan, nan, nan, 1.0])


@pytest.mark.parametrize("bad_batch", [1, 3])
def test_deferred_check_drops_the_accumulated_step_that_holds_a_non_finite_loss(monkeypatch, bad_batch):
    # as on a GPU: the check reads the device only before optimizer steps and at the epoch end.
    # accumulate 2: steps after batches 1 and 3; the step whose window holds the nan is dropped.
    monkeypatch.setattr("utils.engine._sync_free", lambda device: True)
    values = [1.0, 1.0, 1.0, 1.0]
    values[bad_batch] = float("nan")
    _, steps, before, model = _guarded_epoch(values, accumulate=2.0)
    assert steps == 1  # the other window's step happened
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if bad_batch == 1:  # only the second step moved the weights
        assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_stop_request_ends_the_epoch_at_the_next_iteration():
    from utils.graceful_stop import GracefulStop

    stop, seen = GracefulStop(), []

    def on_batch(ni, *_):
        seen.append(ni)
        if ni == 1:
            stop.request("SIGTERM")

    out, steps, _, _ = _guarded_epoch([1.0] * 6, stop=stop, on_batch=on_batch)
    assert out.stopped and seen == [0, 1] and steps == 2  # batch 2 was abandoned before its backward pass
    out, _, _, _ = _guarded_epoch([1.0] * 3, stop=GracefulStop())
    assert not out.stopped


