"""Helpers shared by several test modules (not a test module itself)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from models.yolo import build_model
from utils.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "hit-uav-sample"
NAMES4 = ["Person", "Car", "Bicycle", "OtherVehicle"]  # the bundled sample's classes


def untrained_checkpoint(path: Path, cfg: str | Path | dict, names: list[str], seed: int = 0) -> Path:
    """Save a randomly initialised model of ``cfg`` as a finished checkpoint of this project."""
    torch.manual_seed(seed)
    model = build_model(cfg, nc=len(names))
    save_checkpoint({"task": "detect", "model_cfg": model.yaml, "model": model.state_dict(),
                     "names": list(names), "nc": len(names), "epoch": -1}, path)
    return path


def run_script(script: str, *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python <repo>/<script> args`` from ``cwd``, one torch thread; the script must find its own package."""
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def jittered_detections(gt: dict, seed: int = 0, jitter: float = 0.1, false_positives: float = 0.33) -> list[dict]:
    """COCO results made from a COCO GT dict: jittered boxes, a fifth dropped, random false positives.

    Scores are a shuffled ramp, so some false positives outrank true ones. ``jitter`` is the std of
    the relative box noise; ``false_positives`` the count of random boxes per GT box.
    """
    rng = np.random.default_rng(seed)
    dets = []
    for a in gt["annotations"]:
        if rng.random() < 0.2:
            continue
        x, y, w, h = a["bbox"]
        j = rng.normal(0, jitter, 4)
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                     "bbox": [x + j[0] * w, y + j[1] * h, w * np.exp(j[2]), h * np.exp(j[3])]})
    cat_ids = [c["id"] for c in gt["categories"]]
    for _ in range(int(len(gt["annotations"]) * false_positives)):
        im = gt["images"][rng.integers(len(gt["images"]))]
        w, h = rng.uniform(4, min(150, im["width"] - 1, im["height"] - 1), 2)
        dets.append({"image_id": im["id"], "category_id": int(rng.choice(cat_ids)),
                     "bbox": [rng.uniform(0, im["width"] - w), rng.uniform(0, im["height"] - h), w, h]})
    for d, s in zip(dets, rng.permutation(np.linspace(0.01, 0.99, len(dets)))):
        d["score"] = float(s)
    return dets


def copy_sample(dst: Path, n: int, split: str = "val") -> list[Path]:
    """Copy the first n images (sorted) of the bundled sample's split with their labels; returns the images."""
    (dst / "images" / split).mkdir(parents=True, exist_ok=True)
    (dst / "labels" / split).mkdir(parents=True, exist_ok=True)
    out = []
    for img in sorted((SAMPLE / "images" / split).glob("*.jpg"))[:n]:
        shutil.copy(img, dst / "images" / split / img.name)
        shutil.copy(SAMPLE / "labels" / split / f"{img.stem}.txt", dst / "labels" / split / f"{img.stem}.txt")
        out.append(dst / "images" / split / img.name)
    return out


def sample_dataset(dst: Path, n_train: int = 8, n_val: int = 4) -> Path:
    """A dataset of the first n_train / n_val sample images under ``dst``; returns its data.yaml."""
    copy_sample(dst, n_train, "train")
    copy_sample(dst, n_val, "val")
    (dst / "data.yaml").write_text(f"path: {dst}\ntrain: images/train\nval: images/val\n"
                                   "names: [Person, Car, Bicycle, OtherVehicle]\n")
    return dst / "data.yaml"
