"""Hyperparameter evolution (``train.py --evolve N``), YOLOv5's genetic search.

Each generation trains a short run and appends one row to ``<run>/evolve.csv``: the generation, the
final metrics, fitness (0.1 * mAP50 + 0.9 * mAP50-95) and every hyperparameter. The first
generation trains the ``--hyp`` file as it is; each later one picks a parent among the 5 fittest
rows (with probability proportional to fitness above the worst of them), multiplies each key
with a mutation gain by a factor drawn around 1 (probability 0.8 per key, sigma 0.2 times a
random scale, clipped to 0.3..3; redrawn until something changes), clips it to the key's bounds
(``HYP_BOUNDS``) and rounds it to 5 significant digits. ``<run>/hyp_evolve.yaml`` holds the
fittest hyp so far and is rewritten after every generation; train with it through ``--hyp``.

Resuming: evolve.csv is the whole state. Running the same command again with
``--name <that run> --exist-ok`` reads it and trains the generations still missing up to N (the
mutation of generation g is seeded by ``--seed`` and g, so a continued search draws what an
uninterrupted one would have). A generation that was interrupted is trained again.

Each generation trains in ``<run>/train/`` (replaced by the next one) with validation only after
the last epoch, only the final checkpoint, no plots and no TensorBoard. A key at 0 stays 0 (the mutation
multiplies; as in YOLOv5): give it a non-zero value in ``--hyp`` to evolve it. Keys with gain 0 are
never changed: ``iou_t`` (unused), ``native_scale`` (inference must use the same scale),
``perspective`` and ``fliplr`` (as YOLOv5). ``lr0`` is evolved whatever the optimizer: ``--optimizer
auto`` uses it for AdamW on short runs from scratch too (only fine-tuning from ``--weights`` takes
the optimizer rule's small lr); ``momentum`` is SGD's and does not reach the AdamW that ``auto``
picks.
"""

from __future__ import annotations

import csv
import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np
import yaml

from utils.errors import ConfigError
from utils.hyp import load_hyp
from utils.metrics import fitness
from utils.train_config import TrainConfig

# key: (mutation gain, lower bound, upper bound). Gain 0 = never mutated.
HYP_BOUNDS: dict[str, tuple[float, float, float]] = {
    "lr0": (1, 1e-5, 1e-1), "lrf": (1, 0.01, 1.0), "momentum": (0.3, 0.6, 0.98),
    "weight_decay": (1, 0.0, 0.001), "warmup_epochs": (1, 0.0, 5.0), "warmup_momentum": (1, 0.0, 0.95),
    "warmup_bias_lr": (1, 0.0, 0.2), "box": (1, 0.02, 0.2), "cls": (1, 0.2, 4.0), "cls_pw": (1, 0.5, 2.0),
    "obj": (1, 0.2, 4.0), "obj_pw": (1, 0.5, 2.0), "iou_t": (0, 0.1, 0.7), "anchor_t": (1, 2.0, 8.0),
    "fl_gamma": (0, 0.0, 2.0), "label_smoothing": (1, 0.0, 0.1),
    "hsv_h": (1, 0.0, 0.1), "hsv_s": (1, 0.0, 0.9), "hsv_v": (1, 0.0, 0.9), "degrees": (1, 0.0, 45.0),
    "translate": (1, 0.0, 0.9), "scale": (1, 0.0, 0.9), "shear": (1, 0.0, 10.0), "perspective": (0, 0.0, 0.001),
    "flipud": (1, 0.0, 1.0), "fliplr": (0, 0.0, 1.0), "mosaic": (1, 0.0, 1.0), "mixup": (1, 0.0, 1.0),
    "albumentations": (1, 0.0, 0.1),
    # small-object keys (README "Small-object methods")
    "mosaic9": (1, 0.0, 1.0), "copy_paste": (1, 0.0, 1.0), "cp_area": (1, 64.0, 9216.0), "cp_times": (1, 1, 5),
    "small_oversample": (1, 1, 4), "native_crop": (1, 0.0, 1.0), "native_scale": (0, 0.25, 4.0),
    "crop_bias": (1, 0.0, 1.0), "fdl": (1, 0.0, 3.0), "fdl_area": (1, 64.0, 9216.0), "stitch_tau": (1, 0.0, 0.5),
    # feature super-resolution terms (models with a FeatureSR row; a term at 0 stays off, as every 0 key)
    "sr_mse": (1, 0.0, 10.0), "sr_mse_bg": (1, 0.0, 1.0), "sr_tv": (1, 0.0, 1.0), "sr_adv": (1, 0.0, 1.0),
    "sr_dcls": (1, 0.0, 1.0), "sr_d_lr": (1, 1e-5, 1e-2), "sr_every": (0, 1, 16), "sr_crop": (1, 0.0, 1.0),
}
INT_KEYS = frozenset({"cp_times", "small_oversample", "sr_every"})
METRIC_COLUMNS = ("metrics/P", "metrics/R", "metrics/mAP50", "metrics/mAP50-95", "metrics/APs", "metrics/APm",
                  "metrics/APl", "val/box_loss", "val/obj_loss", "val/cls_loss", "fitness")
TOP_PARENTS = 5
MUTATION_PROB, MUTATION_SIGMA = 0.8, 0.2


def read_rows(path: Path, hyp_keys: list[str]) -> list[dict[str, float]]:
    """The rows of evolve.csv as floats; ConfigError when its columns are not this project's."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        expected = ["generation", *METRIC_COLUMNS, *hyp_keys, "time"]
        if reader.fieldnames != expected:
            raise ConfigError(f"{path}: columns differ from this project's hyperparameters; start a new folder")
        return [{k: float(v) for k, v in row.items()} for row in reader]


def select_parent(rows: list[dict[str, float]], rng: np.random.Generator) -> dict[str, float]:
    """One of the ``TOP_PARENTS`` fittest rows, drawn with probability ~ fitness above the worst of them."""
    top = sorted(rows, key=lambda r: r["fitness"], reverse=True)[:TOP_PARENTS]
    w = np.array([r["fitness"] for r in top]) - min(r["fitness"] for r in top) + 1e-6
    return top[int(rng.choice(len(top), p=w / w.sum()))]


def mutate(parent: dict[str, float], rng: np.random.Generator) -> dict[str, float]:
    """A child of ``parent`` (hyp key -> value): multiplicative mutation of the keys with a gain, then bounds."""
    keys = [k for k in HYP_BOUNDS if k in parent]
    gains = np.array([HYP_BOUNDS[k][0] for k in keys], dtype=np.float64)
    factors = np.ones(len(keys))
    while np.all(factors == 1) and gains.any():  # redraw until something changes
        scale = rng.random() * MUTATION_SIGMA
        factors = (gains * (rng.random(len(keys)) < MUTATION_PROB) * rng.standard_normal(len(keys)) * scale + 1)
        factors = factors.clip(0.3, 3.0)
    child = dict(parent)
    for k, f in zip(keys, factors):
        _, lo, hi = HYP_BOUNDS[k]
        v = min(max(parent[k] * f, lo), hi)
        child[k] = round(float(v)) if k in INT_KEYS else float(f"{v:.5g}")
    return child


def write_best(rows: list[dict[str, float]], hyp_keys: list[str], path: Path) -> dict:
    """hyp_evolve.yaml: the hyp of the fittest row, with a comment saying which and how fit."""
    best = max(rows, key=lambda r: r["fitness"])
    hyp = {k: int(best[k]) if k in INT_KEYS else best[k] for k in hyp_keys}
    header = (f"# hyp_evolve.yaml: fittest of {len(rows)} generations (generation {int(best['generation'])}, "
              f"fitness {best['fitness']:.5f}, mAP50 {best['metrics/mAP50']:.5f}, "
              f"mAP50-95 {best['metrics/mAP50-95']:.5f})\n# train with: python train.py --hyp {path}\n")
    path.write_text(header + yaml.safe_dump(hyp, sort_keys=False))
    return hyp


def _append(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def train_generation(config: TrainConfig, hyp: dict, work: Path) -> dict[str, float]:
    """Train one generation with ``hyp`` in ``work`` (replaced); returns the final metrics."""
    from utils.trainer import Trainer

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    hyp_file = work.parent / "hyp_generation.yaml"
    hyp_file.write_text(yaml.safe_dump(hyp, sort_keys=False))
    gen_config = dataclasses.replace(config, hyp=str(hyp_file), noval=True, nosave=True,
                                     tensorboard=False, noplots=True)
    return Trainer(gen_config, work).fit()


def evolve(config: TrainConfig, generations: int, save_dir: Path, train_fn=train_generation) -> dict:
    """Run generations until ``save_dir/evolve.csv`` has ``generations`` rows; returns the best hyp.

    ``train_fn(config, hyp, work_dir) -> metrics`` trains one generation (replaceable in tests).
    """
    if generations < 1:
        raise ConfigError(f"--evolve needs a number of generations >= 1, got {generations}")
    save_dir.mkdir(parents=True, exist_ok=True)
    base = load_hyp(config.hyp)
    hyp_keys = list(base)
    csv_path, best_path = save_dir / "evolve.csv", save_dir / "hyp_evolve.yaml"
    rows = read_rows(csv_path, hyp_keys)
    if rows:
        print(f"Evolve: continuing {csv_path} at generation {len(rows) + 1}/{generations}")
    for g in range(len(rows), generations):
        rng = np.random.default_rng([config.seed, g])
        hyp = base if not rows else mutate({k: select_parent(rows, rng)[k] for k in hyp_keys}, rng)
        hyp = {k: int(hyp[k]) if k in INT_KEYS else hyp[k] for k in hyp_keys}
        print(f"\nEvolve: generation {g + 1}/{generations}")
        t0 = time.time()
        metrics = train_fn(config, hyp, save_dir / "train")
        metric_values = {c: float(metrics.get(c.split("/", 1)[1] if c.startswith("metrics/") else c, 0.0))
                         for c in METRIC_COLUMNS if c != "fitness"}
        row = {"generation": g + 1, **metric_values, "fitness": float(fitness(metrics)) if metrics else 0.0,
               **{k: hyp[k] for k in hyp_keys}, "time": time.time() - t0}
        _append(csv_path, row)
        rows.append({k: float(v) for k, v in row.items()})
        write_best(rows, hyp_keys, best_path)  # after every generation: an interrupted search keeps its best
    best = write_best(rows, hyp_keys, best_path)
    top = max(rows, key=lambda r: r["fitness"])
    print(f"\nEvolve: {len(rows)} generations in {save_dir}; best generation {int(top['generation'])} "
          f"(fitness {top['fitness']:.5f}) -> {best_path}")
    return best
