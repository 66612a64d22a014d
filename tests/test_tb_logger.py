"""TensorBoard logging: a 1-epoch tiny run writes scalars, PR curves and images beside results.csv."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing import event_accumulator  # in requirements.txt: no skip

from tests.helpers import sample_dataset
from utils.tb_logger import TensorBoardLogger
from utils.train_config import TrainConfig
from utils.trainer import Trainer


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory) -> Path:
    return sample_dataset(tmp_path_factory.mktemp("tb_data"))


def _config(data: Path, **kw) -> TrainConfig:
    return TrainConfig(**{"data": str(data), "cfg": "models/yolov5n.yaml", "imgsz": 64, "batch_size": 4,
                          "workers": 0, "epochs": 1, "device": "cpu", "noautoanchor": True, **kw})


def test_one_epoch_run_writes_the_expected_tags(tiny_yaml, tmp_path):
    run = tmp_path / "run"
    Trainer(_config(tiny_yaml), run).fit()
    events = list(run.glob("events.out.tfevents.*"))
    assert len(events) == 1 and (run / "results.csv").is_file()
    acc = event_accumulator.EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    with open(run / "results.csv", newline="") as f:
        header = next(csv.reader(f))
    expected = {"train/box_loss", "train/obj_loss", "train/cls_loss", "metrics/mAP50", "metrics/mAP50-95",
                "metrics/APs", "val/box_loss", "fitness", "lr/pg0", "lr/pg1", "lr/pg2"}
    assert expected <= set(tags["scalars"])
    assert set(tags["scalars"]) == set(header) - {"epoch"}  # every results.csv column, nothing else
    with open(run / "results.csv", newline="") as f:
        row = next(csv.DictReader(f))
    box = acc.Scalars("train/box_loss")
    assert len(box) == 1 and box[0].step == 0
    assert box[0].value == pytest.approx(float(row["train/box_loss"]), rel=1e-3)
    pr = [t for t in tags["tensors"] if t.startswith("pr/")]
    assert pr and set(pr) <= {"pr/Person", "pr/Car", "pr/Bicycle", "pr/OtherVehicle"}
    assert {"train_batch0", "val_batch0_labels", "val_batch0_pred", "PR_curve"} <= set(tags["images"])


def test_flag_off_or_package_missing_writes_no_events(tmp_path, monkeypatch, capsys):
    assert TensorBoardLogger.create(tmp_path / "a", enabled=False) is None
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    assert TensorBoardLogger.create(tmp_path / "b") is None
    assert "not installed" in capsys.readouterr().out
    assert not list(tmp_path.rglob("events.out.tfevents.*"))


def test_train_py_flag_turns_it_off():
    import train

    assert train.parse_args([]).tensorboard is True
    args = train.parse_args(["--no-tensorboard"])
    assert TrainConfig.from_args(args).tensorboard is False
