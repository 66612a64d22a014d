"""Training that never dies late: non-finite losses, SIGTERM / SIGINT, unwritable or full run folders."""

from __future__ import annotations

import csv
import os
import signal
from collections import namedtuple
from pathlib import Path

import pytest
import torch

import train
from tests.helpers import sample_dataset
from utils.checkpoint import load_checkpoint
from utils.errors import RunFolderError, RunInterrupted, TrainingError
from utils.graceful_stop import GracefulStop
from utils.run_dir import check_writable
from utils.train_config import TrainConfig
from utils.trainer import Trainer


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory) -> Path:
    """8 train and 4 val images of the bundled sample."""
    return sample_dataset(tmp_path_factory.mktemp("tiny"))


def _config(data: Path, **kw) -> TrainConfig:
    # batch 1 and nbs 1: 8 iterations per epoch, each one an optimizer step
    return TrainConfig(**{"data": str(data), "cfg": "models/yolov5n.yaml", "imgsz": 64, "batch_size": 1, "nbs": 1,
                          "workers": 0, "epochs": 2, "device": "cpu", "noautoanchor": True, "noval": True, **kw})


class _LossFrom:
    """Wraps a Trainer's loss; ``hook(call_index)`` runs before each training call, may replace the loss."""

    def __init__(self, loss, hook):
        self.loss, self.hook, self.calls = loss, hook, 0

    def __getattr__(self, name):  # r_prev and the rest of the wrapped loss
        return getattr(self.loss, name)

    def __setattr__(self, name, value):
        if name in ("loss", "hook", "calls"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.loss, name, value)

    def __call__(self, preds, targets, **kw):
        out = self.loss(preds, targets, **kw)
        if kw.get("update_feedback", True):
            replaced = self.hook(self.calls)
            self.calls += 1
            if replaced is not None:
                return (out[0] * 0 + replaced, *out[1:])  # keeps the graph: a real backward would see the nan
        return out


def test_non_finite_losses_in_a_row_stop_the_run_and_keep_last_pt_of_the_last_good_epoch(tiny_yaml, tmp_path):
    trainer = Trainer(_config(tiny_yaml, epochs=3), tmp_path / "run")
    # epoch 0 (calls 0..7) trains; from epoch 1 every loss is nan
    trainer.compute_loss = _LossFrom(trainer.compute_loss, lambda i: float("nan") if i >= 8 else None)
    with pytest.raises(TrainingError, match=r"5 non-finite losses in a row \(last: nan at epoch 1, batch 4\)"):
        trainer.fit()
    last = load_checkpoint(tmp_path / "run" / "weights" / "last.pt")
    assert last["epoch"] == 0 and last["train_model"] is not None  # resumable, from the good epoch
    assert all(torch.isfinite(v).all() for v in last["train_model"].values() if v.dtype.is_floating_point)


def test_sigterm_during_an_epoch_writes_last_pt_and_resume_continues_that_epoch(tiny_yaml, tmp_path):
    config = _config(tiny_yaml)

    def sigterm_at_call_11(i):  # epoch 1, batch 3: a real signal to this process
        if i == 11:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        trainer = Trainer(config, tmp_path / "run", stop=stop)
        trainer.compute_loss = _LossFrom(trainer.compute_loss, sigterm_at_call_11)
        with pytest.raises(RunInterrupted, match=r"SIGTERM during epoch 2/2; .*`python train.py --resume`") as e:
            trainer.fit()
    assert e.value.exit_code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is gone with the context
    assert trainer.compute_loss.calls == 12  # the batch that got the signal was abandoned before its backward
    last = load_checkpoint(tmp_path / "run" / "weights" / "last.pt")
    assert last["epoch"] == 1 and last["partial_epoch"] is True and last["optimizer"] is not None

    resumed = Trainer(config, tmp_path / "run", resume_ckpt=last)
    assert resumed.start_epoch == 1  # the cut epoch runs again, from the weights it had reached
    resumed.fit()
    with open(tmp_path / "run" / "results.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1]
    assert load_checkpoint(tmp_path / "run" / "weights" / "last.pt")["epoch"] == -1  # finished


def test_sigint_is_a_stop_request_and_a_second_one_ends_at_once():
    with GracefulStop() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_an_unwritable_project_folder_fails_before_training_in_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    # the dataset YAML does not exist either: the folder is checked first, before any data is read
    code = train.main(["--project", str(blocker / "runs"), "--data", str(tmp_path / "nope.yaml"), "--epochs", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert err[0].startswith(f"train.py: error: cannot write to {blocker / 'runs'}") and "nope.yaml" not in err[0]


def test_a_nearly_full_disk_fails_before_training(tmp_path, monkeypatch, capsys):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("utils.run_dir.shutil.disk_usage", lambda p: usage(10**12, 10**12 - 5 * 2**20, 5 * 2**20))
    with pytest.raises(RunFolderError, match="only 5 MiB free"):
        check_writable(tmp_path / "runs")
    code = train.main(["--project", str(tmp_path / "runs"), "--data", str(tmp_path / "nope.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "only 5 MiB free on its disk" in err[0]
    assert not (tmp_path / "runs" / "exp").exists()  # no run folder was started


def test_epoch_without_an_optimizer_step_gives_no_scheduler_warning(tiny_yaml, tmp_path, recwarn):
    # batch 4, nominal batch 64: the 2 batches of an epoch never reach one accumulated optimizer step
    trainer = Trainer(_config(tiny_yaml, batch_size=4, nbs=64, epochs=1, noplots=True), tmp_path / "run")
    trainer.fit()
    assert trainer.scheduler.last_epoch == 1  # the per-epoch schedule still advanced
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]
