"""train.py --time (epochs planned to fit a wall-clock budget) and --val-imgsz."""

from __future__ import annotations

import csv
import types

import pytest

import utils.trainer as trainer_module
from utils.errors import ConfigError
from utils.optim import lr_lambda
from utils.time_budget import TimeBudget
from utils.trainer import Trainer
from utils.train_config import TrainConfig
from tests.helpers import sample_dataset


def test_budget_plans_the_epochs_that_fit_the_mean_epoch_time():
    b = TimeBudget(seconds=100, epochs=60)
    assert b.replan(0, 0.0) == 60  # nothing measured yet: the first guess stands
    assert b.replan(1, 10.0) == 10
    assert b.replan(3, 45.0) == 6  # slower epochs: fewer of them
    assert b.replan(2, 95.0) == 3  # a slow start never ends the run while time is left
    assert b.replan(4, 120.0) == 4 and b.spent(120.0) and not b.spent(99.0)


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory):
    return sample_dataset(tmp_path_factory.mktemp("tiny"))


def _config(data, **kw) -> TrainConfig:
    return TrainConfig(**{"data": str(data), "cfg": "models/yolov5n.yaml", "imgsz": 64, "batch_size": 4,
                          "workers": 0, "device": "cpu", "noautoanchor": True, "noval": True, **kw})


def test_time_budget_replans_epochs_and_stretches_the_lr_schedule(tiny_yaml, tmp_path, monkeypatch):
    """Every epoch takes 10 s on a fake clock: a 35-s budget is 3 epochs although --epochs says 2."""
    clock, lrs = [1000.0], []
    real = trainer_module.train_one_epoch

    def epoch_of_10s(model, loader, optimizer, *args, **kw):
        lrs.append(optimizer.param_groups[0]["lr"])
        clock[0] += 10.0
        return real(model, loader, optimizer, *args, **kw)

    monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(time=lambda: clock[0]))
    monkeypatch.setattr(trainer_module, "train_one_epoch", epoch_of_10s)
    trainer = Trainer(_config(tiny_yaml, epochs=2, time=35 / 3600, optimizer="SGD"), tmp_path / "run")
    assert trainer.epochs == 2
    trainer.fit()
    assert trainer.epochs == 3 and len(lrs) == 3
    with open(tmp_path / "run" / "results.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2]
    # epochs 1 and 2 ran on the schedule of a 3-epoch run (lr0 0.01, lrf 0.01)
    assert lrs[1:] == pytest.approx([0.01 * lr_lambda(3, 0.01, False)(e) for e in (1, 2)])


def test_time_budget_spent_makes_the_epoch_the_last(tiny_yaml, tmp_path, monkeypatch):
    clock = [0.0]
    real = trainer_module.train_one_epoch

    def epoch_of_50s(*args, **kw):
        clock[0] += 50.0
        return real(*args, **kw)

    monkeypatch.setattr(trainer_module, "time", types.SimpleNamespace(time=lambda: clock[0]))
    monkeypatch.setattr(trainer_module, "train_one_epoch", epoch_of_50s)
    trainer = Trainer(_config(tiny_yaml, epochs=5, time=30 / 3600), tmp_path / "run")
    trainer.fit()
    assert trainer.epochs == 5  # the plan was never cut, the spent budget ended the run
    with open(tmp_path / "run" / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 1
    from utils.checkpoint import load_checkpoint
    assert load_checkpoint(tmp_path / "run" / "weights" / "last.pt")["epoch"] == -1  # saved as finished


def test_val_imgsz_sets_the_validation_size_only(tiny_yaml, tmp_path):
    t = Trainer(_config(tiny_yaml, epochs=1, val_imgsz=96), tmp_path / "run")
    assert t.train_ds.imgsz == 64 and t.val_loader.dataset.imgsz == 96
    with pytest.raises(ConfigError, match="--val-imgsz 80 must be a multiple"):
        Trainer(_config(tiny_yaml, epochs=1, val_imgsz=80), tmp_path / "run2")
    with pytest.raises(ConfigError, match="time must be >= 0"):
        _config(tiny_yaml, time=-1.0)
