"""TrainConfig: built from train.py's flags, stored as a plain dict, strict when read back."""

from __future__ import annotations

import argparse

import pytest
import torch
import yaml

import train
from utils.checkpoint import save_checkpoint
from utils.errors import ConfigError
from utils.train_config import TrainConfig
from utils.trainer import Trainer


def test_flags_become_typed_fields():
    args = train.parse_args(["--img", "96", "--batch-size", "4", "--multi-scale", "--freeze", "1", "2",
                             "--cache", "--optimizer", "SGD", "--cos-lr", "--exist-ok", "--resume"])
    c = TrainConfig.from_args(args)
    assert (c.imgsz, c.batch_size, c.multi_scale, c.freeze, c.cache) == (96, 4, True, [1, 2], "ram")
    assert (c.optimizer, c.cos_lr, c.exist_ok, c.noval, c.nbs) == ("SGD", True, True, False, 16)
    assert not hasattr(c, "resume")  # --resume selects a checkpoint; it is not a setting of the run


def test_flag_defaults_match_the_dataclass_defaults():
    # Both places state the defaults; a default changed in one only would differ between
    # `python train.py` and a library caller building TrainConfig() directly.
    assert TrainConfig.from_args(train.parse_args([])) == TrainConfig()


def test_to_dict_survives_yaml_and_weights_only_checkpoints(tmp_path):
    c = TrainConfig(epochs=7, imgsz=128, freeze=(3,), cache="ram", device="cpu")
    d = c.to_dict()
    assert d["freeze"] == [3] and d["epochs"] == 7 and d["cache"] == "ram"
    text = yaml.safe_dump(d)  # opt.yaml
    assert TrainConfig.from_dict(yaml.safe_load(text), "opt.yaml") == c
    torch.save({"train_args": d}, tmp_path / "c.pt")
    loaded = torch.load(tmp_path / "c.pt", weights_only=True)["train_args"]
    assert TrainConfig.from_dict(loaded, tmp_path / "c.pt") == c


def test_unknown_stored_keys_are_errors_naming_key_and_file():
    d = {**TrainConfig().to_dict(), "lr_boost": 2.0, "rect": True}
    with pytest.raises(ConfigError, match=r"runs/exp/weights/last\.pt.*lr_boost, rect"):
        TrainConfig.from_dict(d, "runs/exp/weights/last.pt")


def test_missing_keys_take_defaults_and_the_old_resume_key_is_dropped():
    c = TrainConfig.from_dict({"epochs": 5, "resume": "runs/train/exp/weights/last.pt"}, "last.pt")
    assert c.epochs == 5 and c.imgsz == TrainConfig().imgsz


@pytest.mark.parametrize("bad, match", [({"epochs": 0}, "epochs"), ({"batch_size": -1}, "batch_size"),
                                        ({"optimizer": "Lion"}, "Lion"), ({"cache": "disk"}, "cache")])
def test_invalid_values_are_config_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**bad)


def test_trainer_refuses_a_namespace(tmp_path):
    with pytest.raises(TypeError, match="TrainConfig"):
        Trainer(argparse.Namespace(**TrainConfig().to_dict()), tmp_path)


def test_resume_with_unknown_stored_key_prints_one_line(tmp_path, capsys):
    last = tmp_path / "exp" / "weights" / "last.pt"
    save_checkpoint({"task": "detect", "model_cfg": {}, "model": {}, "names": ["a"], "epoch": 0,
                     "train_model": {}, "train_args": {**TrainConfig().to_dict(), "lr_boost": 2.0}}, last)
    assert train.main(["--resume", str(last)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lr_boost" in err[0] and str(last) in err[0]
