"""A 1-epoch train.py run of an SR model logs every SR column; checkpoints hold no discriminator."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

from utils.checkpoint import load_checkpoint
from utils.sr_branch import STAT_KEYS

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "hit-uav-sample"


def test_one_epoch_of_the_sr_model_logs_every_sr_column(tmp_path):
    train = sorted((SAMPLE / "images" / "train").glob("*.jpg"))[:16]
    val = sorted((SAMPLE / "images" / "val").glob("*.jpg"))[:4]
    (tmp_path / "train.txt").write_text("\n".join(map(str, train)) + "\n")
    (tmp_path / "val.txt").write_text("\n".join(map(str, val)) + "\n")
    data = tmp_path / "tiny.yaml"
    data.write_text(f"path: {tmp_path}\ntrain: train.txt\nval: val.txt\nnames: [Person, Car, Bicycle, OtherVehicle]\n")
    hyp = tmp_path / "hyp.yaml"  # every term on, the teacher on every other iteration and on half-side crops
    hyp.write_text("sr_mse: 0.01\nsr_mse_bg: 0.1\nsr_tv: 0.001\nsr_adv: 0.005\nsr_dcls: 0.005\n"
                   "sr_every: 2\nsr_crop: 0.5\n")
    r = subprocess.run([sys.executable, "train.py", "--cfg", "models/yolov5n-p2-sr.yaml", "--hyp", str(hyp),
                        "--data", str(data), "--epochs", "1", "--imgsz", "64", "--batch-size", "4", "--workers", "0",
                        "--noautoanchor", "--project", str(tmp_path), "--name", "run"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "run"
    with open(run / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and set(STAT_KEYS) <= set(rows[0])
    row = {k: float(rows[0][k]) for k in STAT_KEYS}
    assert row["sr/teacher_frac"] == 0.5  # 4 iterations, the teacher at 0 and 2
    assert row["sr/teacher_ms"] > 0 and row["sr/mse"] > 0 and row["sr/tv"] > 0 and row["sr/d_loss"] > 0
    assert 0 <= row["sr/d_acc"] <= 1
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(run / "weights" / name)
        assert ckpt["sr_discriminator"] is None  # finished run: nothing of the discriminator is kept
        assert any(k.startswith("model.10.") for k in ckpt["model"])  # the generator is
