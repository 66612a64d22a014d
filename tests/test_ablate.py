"""benchmarks/ablate.py: one table over variants and seeds, at equal epochs or equal wall-clock."""

from __future__ import annotations

import csv

import pytest

from benchmarks import ablate
from tests.helpers import sample_dataset


def test_ablate_runs_each_variant_per_seed_under_a_time_budget(tmp_path):
    d = tmp_path / "data"
    data_yaml = sample_dataset(d)
    project = tmp_path / "ablate"
    # a budget of ~0 s: every run ends after its first epoch although --epochs asks for 3
    rc = ablate.main(["--variants", "models/yolov5n.yaml:hyp.scratch.yaml", "--data", str(data_yaml),
                      "--epochs", "3", "--imgsz", "64", "--batch-size", "4", "--workers", "0", "--device", "cpu",
                      "--seeds", "0", "1", "--time", "1e-6", "--noval", "--project", str(project)])
    assert rc == 0
    with open(project / "ablation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["variant"], r["seed"], r["epochs"]) for r in rows] == [
        ("yolov5n_scratch_s0", "0", "1"), ("yolov5n_scratch_s1", "1", "1")]
    for r in rows:
        assert 0.0 <= float(r["AP"]) <= 1.0 and 0.0 <= float(r["AP_tiny"]) <= 1.0 and float(r["train_min"]) > 0
        with open(project / r["variant"] / "results.csv", newline="") as f:
            assert len(list(csv.DictReader(f))) == 1  # the spent budget ended the run after one epoch
    assert "wall-clock budget 1e-06 h" in (project / "ablation.md").read_text()


def test_variant_fields_set_epochs_and_training_size():
    assert ablate.parse_variant("m.yaml:h.yaml", 15, 320) == ("m.yaml", "h.yaml", 15, 320, "")
    assert ablate.parse_variant("m.yaml:h.yaml:30:imgsz=640", 15, 320) == ("m.yaml", "h.yaml", 30, 640, "_30ep_640px")
    with pytest.raises(SystemExit, match="neither EPOCHS nor imgsz"):
        ablate.parse_variant("m.yaml:h.yaml:size=640", 15, 320)


def test_merge_writes_the_mean_over_seeds_per_variant(tmp_path):
    header = "variant,seed,epochs," + ",".join(ablate.COLUMNS) + ",params_M,GFLOPs,train_min\n"
    rest = ",".join(["0.1"] * (len(ablate.COLUMNS) - 1)) + ",1.8,4.9,1.0\n"
    for seed, ap in ((1, 0.3), (0, 0.1)):  # one file per seed, as parallel runs write them
        (tmp_path / f"s{seed}.csv").write_text(header + f"m_native_s{seed},{seed},10,{ap}," + rest)
    text = ablate.merge([str(tmp_path / "s1.csv"), str(tmp_path / "s0.csv")], tmp_path / "out")
    mean_row = [line for line in text.splitlines() if line.startswith("| m_native |")]
    assert len(mean_row) == 1
    cells = [c.strip() for c in mean_row[0].strip("|").split("|")]
    assert cells[1] == "2" and cells[3] == "0.200" and cells[-1] == "0.100 / 0.300"  # seeds, mean AP, per seed
    assert (tmp_path / "out" / "ablation.csv").read_text().count("m_native_s") == 2
