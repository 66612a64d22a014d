"""Hyperparameter evolution (utils/evolve.py, train.py --evolve)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import sample_dataset
from utils.errors import ConfigError
from utils.evolve import HYP_BOUNDS, INT_KEYS, evolve, mutate, select_parent
from utils.hyp import load_hyp
from utils.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


def test_hyp_bounds_cover_every_hyperparameter_including_the_small_object_keys():
    assert set(HYP_BOUNDS) == set(load_hyp(None))
    for k in ("mosaic9", "copy_paste", "cp_area", "cp_times", "small_oversample", "fdl", "fdl_area", "stitch_tau",
              "native_crop", "crop_bias"):
        assert HYP_BOUNDS[k][0] > 0, k  # evolved
    for name in ("hyp.sod.yaml", "hyp.sod-all.yaml", "hyp.sr.yaml", "hyp.native.yaml"):
        shipped = load_hyp(name)
        for k, (_, lo, hi) in HYP_BOUNDS.items():
            assert lo <= shipped[k] <= hi, (name, k)  # the shipped recipes lie inside the bounds


def test_mutation_stays_in_bounds_and_keeps_fixed_keys():
    parent = load_hyp("hyp.sod-all.yaml")  # every method on: their keys must mutate too
    changed = set()
    for seed in range(200):
        child = mutate(parent, np.random.default_rng(seed))
        assert child != parent
        for k, (gain, lo, hi) in HYP_BOUNDS.items():
            assert lo <= child[k] <= hi, k
            if gain == 0 or parent[k] == 0:
                assert child[k] == parent[k], k  # gain 0, or multiplicative mutation of 0
        for k in INT_KEYS:
            assert isinstance(child[k], int)
        changed |= {k for k in parent if child[k] != parent[k]}
    assert {"lr0", "mosaic9", "copy_paste", "fdl", "stitch_tau", "cp_times"} <= changed


def test_parent_is_one_of_the_five_fittest():
    rows = [{"fitness": f, "id": i} for i, f in enumerate([0.1, 0.5, 0.2, 0.9, 0.3, 0.05, 0.8, 0.0])]
    picked = {select_parent(rows, np.random.default_rng(s))["id"] for s in range(300)}
    assert picked <= {1, 2, 3, 4, 6} and {3, 6} <= picked  # the worst of the five (id 2) has weight ~0


def _fake_train(calls: list):
    """A 'training' whose fitness peaks at lr0 = 0.02 and copy_paste = 0.5: no model, milliseconds."""
    def train(config, hyp, work):
        calls.append(dict(hyp))
        score = max(0.0, 1 - abs(hyp["lr0"] - 0.02) * 20 - abs(hyp["copy_paste"] - 0.5))
        return {"mAP50": score, "mAP50-95": score / 2, "P": 0.5, "R": 0.5}
    return train


def test_evolve_writes_csv_and_best_hyp_and_resumes_where_it_stopped(tmp_path):
    config = TrainConfig(hyp="data/hyps/hyp.sod.yaml", seed=3)
    calls = []
    evolve(config, 3, tmp_path / "a", train_fn=_fake_train(calls))
    assert len(calls) == 3 and calls[0] == load_hyp("hyp.sod.yaml")  # generation 1: the hyp file as it is
    evolve(config, 6, tmp_path / "a", train_fn=_fake_train(calls))  # continue: generations 4-6 only
    assert len(calls) == 6

    straight = []
    best = evolve(config, 6, tmp_path / "b", train_fn=_fake_train(straight))
    assert straight == calls  # an interrupted and continued search draws what an uninterrupted one does
    with open(tmp_path / "a" / "evolve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["generation"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    fittest = max(rows, key=lambda r: float(r["fitness"]))
    assert best["lr0"] == pytest.approx(float(fittest["lr0"]))
    assert load_hyp(tmp_path / "a" / "hyp_evolve.yaml") == pytest.approx(best)  # a valid --hyp file
    with pytest.raises(ConfigError):
        evolve(config, 0, tmp_path / "c", train_fn=_fake_train([]))


def test_evolve_refuses_a_csv_of_other_columns(tmp_path):
    (tmp_path / "evolve.csv").write_text("generation,fitness,lr0\n1,0.5,0.01\n")
    with pytest.raises(ConfigError, match="columns"):
        evolve(TrainConfig(), 2, tmp_path, train_fn=_fake_train([]))


def test_two_generation_evolve_from_the_command_line(tmp_path):
    d = tmp_path / "data"
    data_yaml = sample_dataset(d)
    cmd = [sys.executable, "train.py", "--evolve", "2", "--data", str(data_yaml), "--cfg", "models/yolov5n.yaml",
           "--epochs", "1", "--imgsz", "64", "--batch-size", "4", "--workers", "0", "--noautoanchor",
           "--optimizer", "SGD", "--project", str(tmp_path / "evolve"), "--name", "exp"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "evolve" / "exp"
    with open(run / "evolve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and "metrics/mAP50-95" in rows[0] and "stitch_tau" in rows[0]
    keys = list(load_hyp(None))
    assert any(float(rows[0][k]) != float(rows[1][k]) for k in keys)  # generation 2 is a mutant
    assert {k: float(rows[0][k]) for k in keys} == pytest.approx(load_hyp(None))
    best = load_hyp(run / "hyp_evolve.yaml")
    fittest = max(rows, key=lambda r: float(r["fitness"]))
    assert best == pytest.approx({k: float(fittest[k]) for k in keys})
    assert "best generation" in r.stdout and not list(run.rglob("events.out.tfevents.*"))
    assert not list(run.rglob("*.png")) and not list(run.rglob("*.jpg"))  # generations save no plots
    header = (run / "hyp_evolve.yaml").read_text().splitlines()[0]
    assert header.startswith("# hyp_evolve.yaml: fittest of 2 generations")



def test_evolve_and_resume_are_refused_together(capsys):
    import train

    assert train.main(["--evolve", "2", "--resume"]) == 1
    assert "cannot be combined" in capsys.readouterr().err
