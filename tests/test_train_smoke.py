"""End-to-end smoke runs of the command-line tools at a tiny image size on the bundled sample."""

from __future__ import annotations

import csv
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from models.yolo import build_model
from utils.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "hit-uav-sample"
TINY = ["--imgsz", "64", "--batch-size", "8", "--workers", "0", "--noautoanchor"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A dataset YAML over 16 train and 8 val images of the bundled sample (txt image lists)."""
    d = tmp_path_factory.mktemp("tiny_data")
    train = sorted((SAMPLE / "images" / "train").glob("*.jpg"))[:16]
    val = sorted((SAMPLE / "images" / "val").glob("*.jpg"))[:8]
    (d / "train.txt").write_text("\n".join(map(str, train)) + "\n")
    (d / "val.txt").write_text("\n".join(map(str, val)) + "\n")
    yaml_file = d / "tiny.yaml"
    yaml_file.write_text(f"path: {d}\ntrain: train.txt\nval: val.txt\n"
                         "names: [Person, Car, Bicycle, OtherVehicle]\n")
    return yaml_file


def _run(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _rows(csv_path: Path) -> list[dict]:
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


def test_train_val_detect_from_the_command_line(tiny_data, tmp_path):
    r = _run("train.py", "--data", str(tiny_data), "--epochs", "1", *TINY,
             "--project", str(tmp_path), "--name", "run")
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "run"
    assert "Results saved to" in r.stdout and str(run) in r.stdout
    for name in ("weights/last.pt", "weights/best.pt", "hyp.yaml", "opt.yaml", "results.csv",
                 "results.png", "labels.jpg", "train_batch0.jpg"):
        assert (run / name).is_file(), name
    rows = _rows(run / "results.csv")
    assert len(rows) == 1 and {"metrics/mAP50", "metrics/APs", "fdl/ratio", "stitch/fraction"} <= set(rows[0])
    ckpt = load_checkpoint(run / "weights" / "best.pt")
    assert ckpt["names"] == ["Person", "Car", "Bicycle", "OtherVehicle"] and ckpt["optimizer"] is None
    opt = yaml.safe_load((run / "opt.yaml").read_text())
    assert opt["epochs"] == 1 and opt["imgsz"] == 64 and opt["data"] == str(tiny_data) and "resume" not in opt
    assert ckpt["train_args"] == opt

    r = _run("val.py", "--weights", str(run / "weights" / "best.pt"), "--data", str(tiny_data),
             "--imgsz", "64", "--workers", "0", "--project", str(tmp_path), "--name", "val")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "APs" in r.stdout and "mAP50" in r.stdout

    source = sorted((SAMPLE / "images" / "val").glob("*.jpg"))[0]
    r = _run("detect.py", "--weights", str(run / "weights" / "best.pt"), "--source", str(source),
             "--imgsz", "64", "--conf-thres", "0.001", "--project", str(tmp_path), "--name", "det")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "det" / source.name).is_file()


def test_resume_after_interruption_finishes_the_requested_epochs(tiny_data, tmp_path):
    cmd = [sys.executable, "train.py", "--data", str(tiny_data), "--epochs", "4", *TINY,
           "--project", str(tmp_path), "--name", "run"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = tmp_path / "run" / "results.csv"
    last = tmp_path / "run" / "weights" / "last.pt"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if last.exists():  # written atomically after an epoch: a complete checkpoint
                proc.send_signal(signal.SIGKILL)  # a hard crash: no chance to clean up
                break
            time.sleep(0.05)
        proc.wait(timeout=60)
    finally:  # a timed-out wait must not leave a training process behind
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be interrupted"
    interrupted_at = load_checkpoint(last)["epoch"]
    assert 0 <= interrupted_at < 3

    r = _run("train.py", "--resume", str(last), "--epochs", "9", "--batch-size", "8")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"continuing from epoch {interrupted_at + 2}/4" in r.stdout
    # --epochs differs from the stored run and is named; --batch-size 8 is what the run has anyway
    assert "WARNING: --epochs ignored with --resume" in r.stdout
    assert [int(row["epoch"]) for row in _rows(results)] == [0, 1, 2, 3]
    ckpt = load_checkpoint(last)
    assert ckpt["epoch"] == -1 and ckpt["optimizer"] is None  # finished and stripped
    r = _run("train.py", "--resume", str(last))
    assert r.returncode == 1 and "finished" in r.stderr  # nothing left to resume: one clear line


def test_bad_input_gives_one_line_and_exit_1(tmp_path):
    r = _run("train.py", "--data", str(tmp_path / "nope.yaml"), "--epochs", "1", "--project", str(tmp_path))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "nope.yaml" in r.stderr
    r = _run("train.py", "--cfg", "models/yolov9z.yaml", "--epochs", "1", "--project", str(tmp_path))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "yolov9z" in r.stderr


def test_train_flags_multiscale_freeze_cache_cos_lr_sgd_noval_nosave(tiny_data, tmp_path):
    hyp = tmp_path / "hyp.yaml"
    hyp.write_text("warmup_epochs: 0.0\n")  # no warmup: every epoch's lr is the schedule's
    r = _run("train.py", "--data", str(tiny_data), "--hyp", str(hyp), "--epochs", "3", *TINY, "--multi-scale",
             "--freeze", "3", "--cos-lr", "--cache", "--noval", "--nosave", "--optimizer", "SGD",
             "--project", str(tmp_path), "--name", "run")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "froze" in r.stdout and "optimizer: SGD(lr=0.01, momentum=0.937)" in r.stdout
    assert "Cached 16 images in RAM" in r.stdout and "Cached 8 images in RAM" in r.stdout
    sizes = {int(s) for s in re.findall(r"inst +\d+ +(\d+)px", r.stderr)}  # progress bar: batch width
    assert len(sizes) >= 2 and sizes <= {32, 64, 96}, sizes  # multiples of 32 in [32, 96] around 64
    rows = _rows(tmp_path / "run" / "results.csv")
    assert [row["epoch"] for row in rows] == ["0", "1", "2"]
    for e, row in enumerate(rows):  # cosine from lr0 = 0.01 to lr0 * lrf over 3 epochs (linear: 0.0067, 0.0034)
        cosine = 0.01 * (((1 - math.cos(e * math.pi / 3)) / 2) * (0.01 - 1) + 1)
        assert [float(row[f"lr/pg{g}"]) for g in range(3)] == pytest.approx([cosine] * 3, rel=1e-4)
    assert float(rows[0]["metrics/mAP50"]) == 0.0 and float(rows[0]["val/box_loss"]) == 0.0  # --noval
    assert float(rows[2]["val/box_loss"]) > 0  # the final epoch is always validated
    assert load_checkpoint(tmp_path / "run" / "weights" / "last.pt")["epoch"] == -1


def _wide_box_data(d: Path) -> Path:
    """8 train / 4 val noise images (64x64) whose boxes are wide and flat (about 50x3 px).

    No default anchor of the P2 model fits a 15:1 box within anchor_t = 4, so AutoAnchor must
    recompute them.
    """
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 4)):
        (d / "images" / split).mkdir(parents=True)
        (d / "labels" / split).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(d / "images" / split / f"{i}.jpg"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
            rows = [f"0 0.5 {0.2 + 0.3 * j:.3f} {rng.uniform(0.7, 0.95):.4f} {rng.uniform(0.04, 0.06):.4f}"
                    for j in range(3)]
            (d / "labels" / split / f"{i}.txt").write_text("\n".join(rows) + "\n")
    (d / "bars.yaml").write_text(f"path: {d}\ntrain: images/train\nval: images/val\nnames: [bar]\n")
    return d / "bars.yaml"


def test_autoanchor_refits_anchors_that_do_not_fit_the_labels(tmp_path):
    data = _wide_box_data(tmp_path / "bars")
    r = _run("train.py", "--cfg", "models/yolov5n-p2.yaml", "--data", str(data), "--epochs", "1", "--imgsz", "64",
             "--batch-size", "8", "--workers", "0", "--project", str(tmp_path), "--name", "run")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "AutoAnchor" in r.stdout
    default = build_model("models/yolov5n-p2.yaml", nc=1).detect.anchors.reshape(-1, 2)
    state = load_checkpoint(tmp_path / "run" / "weights" / "last.pt")["model"]
    (key,) = [k for k in state if k.endswith(".anchors")]
    anchors = state[key].reshape(-1, 2)
    assert anchors.shape == default.shape and not np.allclose(anchors, default)
    assert (default[:, 0] / default[:, 1]).max() < 2.5  # the defaults are roughly square
    assert (anchors[:, 0] / anchors[:, 1]).min() > 4  # the refitted ones are wide like the labels


def test_small_object_hyp_stitches_and_logs_feedback(tiny_data, tmp_path):
    # At 64 px every box is under 32x32, so fdl_area is made tiny to keep r_t below stitch_tau.
    hyp = tmp_path / "hyp.yaml"
    hyp.write_text("fdl: 1.0\nfdl_area: 4\nstitch_tau: 0.5\ncopy_paste: 1.0\ncp_times: 2\nmosaic9: 0.5\n")
    r = _run("train.py", "--data", str(tiny_data), "--hyp", str(hyp), "--epochs", "1", "--imgsz", "64",
             "--batch-size", "2", "--workers", "0", "--noautoanchor", "--project", str(tmp_path), "--name", "run")
    assert r.returncode == 0, r.stderr[-2000:]
    row = _rows(tmp_path / "run" / "results.csv")[0]
    assert 0 < float(row["stitch/fraction"]) < 1  # 8 batches: stitched iterations consume 4 each
    assert 0 <= float(row["fdl/ratio"]) < 0.5 and float(row["fdl/gain"]) >= 1.0
