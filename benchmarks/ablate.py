"""Train model/hyp variants for the same budget on the same data and print one comparison table.

    python -m benchmarks.ablate --data data/hit-uav.yaml --epochs 20 --imgsz 320 --nbs 16
    python -m benchmarks.ablate --variants models/yolov5n.yaml:hyp.scratch.yaml \
        models/yolov5n-p2.yaml:hyp.sod-all.yaml --data my-data.yaml

Each variant is ``CFG:HYP`` (HYP by name under data/hyps/ or a path); optional fields after it
give that variant its own epoch count (``CFG:HYP:EPOCHS``) or training size
(``CFG:HYP:imgsz=640``, e.g. whole frames against --imgsz crops; validation stays at --val-imgsz).
``--time HOURS`` gives every variant the same wall-clock budget instead (train.py --time: a
cheaper variant plans more epochs), and ``--seeds 0 1`` repeats each variant per seed:

    python -m benchmarks.ablate --data data/hit-uav.yaml --imgsz 320 --time 0.25 --seeds 0 1 \
        --variants models/yolov5n-p2.yaml:hyp.scratch.yaml models/yolov5n-p2-af.yaml:hyp.scratch.yaml
 Every run uses the same seed, image size, batch size and data; the table has AP, AP50,
APs, APm, APl, ARs and AP_tiny (boxes under 16x16 px) of best.pt on the val split, parameters,
GFLOPs at --imgsz and the training time. It is written to PROJECT/ablation.md and ablation.csv as well.
"""

from __future__ import annotations

import argparse
import csv
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

import train
from models.summary import count_gflops
from models.yolo import build_model
from utils.coco_eval import DEFAULT_AREA_RANGES, parse_area_ranges
from utils.data.config import load_data_config
from utils.train_config import TrainConfig
from utils.trainer import Trainer

DEFAULT_VARIANTS = ["models/yolov5n.yaml:hyp.scratch.yaml", "models/yolov5n-p2.yaml:hyp.scratch.yaml",
                    "models/yolov5n-p2.yaml:hyp.sod-all.yaml"]
COLUMNS = ("AP", "AP50", "APs", "APm", "APl", "ARs", "AP_tiny", "mAP50")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, metavar="CFG:HYP")
    p.add_argument("--data", default="data/hit-uav.yaml")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--imgsz", type=int, default=320, help="training size (a variant's imgsz=N overrides it)")
    p.add_argument("--val-imgsz", type=int, default=0, help="validation size; 0 = --imgsz")
    p.add_argument("--noval", action="store_true", help="validate once, after the last epoch (more budget trains)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--nbs", type=int, default=16, help="nominal batch size (see train.py --nbs)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="run every variant once per seed (overrides --seed)")
    p.add_argument("--time", type=float, default=0.0, metavar="HOURS",
                   help="equal wall-clock: every variant trains for this budget (train.py --time; epochs = first guess)")
    p.add_argument("--train-args", default="", metavar="'ARGS'",
                   help="more train.py flags for every run, e.g. --train-args '--close-mosaic 10'")
    p.add_argument("--merge", nargs="+", default=None, metavar="CSV",
                   help="no training: merge ablation.csv files of separate runs (e.g. one per seed) into one table")
    p.add_argument("--project", default="runs/ablate")
    return p.parse_args(argv)


def run_variant(variant: str, a: argparse.Namespace, nc: int, seed: int) -> dict:
    cfg, hyp, epochs, imgsz, suffix = parse_variant(variant, a.epochs, a.imgsz)
    name = f"{Path(cfg).stem}_{Path(hyp).stem.replace('hyp.', '')}{suffix}" + (f"_s{seed}" if a.seeds else "")
    argv = ["--cfg", cfg, "--hyp", hyp, "--data", a.data, "--epochs", str(epochs), "--imgsz", str(imgsz),
            "--val-imgsz", str(a.val_imgsz or a.imgsz), "--batch-size", str(a.batch_size), "--nbs", str(a.nbs),
            "--workers", str(a.workers), "--device", a.device, "--seed", str(seed), "--project", a.project,
            "--name", name, "--exist-ok", "--time", str(a.time), "--noplots", "--no-tensorboard"]
    args = train.parse_args(argv + (["--noval"] if a.noval else []) + shlex.split(a.train_args))
    t0 = time.time()
    trainer = Trainer(TrainConfig.from_args(args), Path(a.project) / name)
    trainer.area_ranges = parse_area_ranges(DEFAULT_AREA_RANGES)  # AP_tiny beside the COCO bins
    metrics = trainer.fit()  # of best.pt
    minutes = (time.time() - t0) / 60
    model = build_model(cfg, nc=nc)
    with open(Path(a.project) / name / "results.csv", newline="") as f:
        trained = len(list(csv.DictReader(f)))  # with --time, the epochs the budget allowed
    return {"variant": name, "seed": seed, "epochs": trained, **{k: metrics.get(k, 0.0) for k in COLUMNS},
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "GFLOPs": count_gflops(model, imgsz), "train_min": minutes}


def parse_variant(variant: str, epochs: int, imgsz: int) -> tuple[str, str, int, int, str]:
    """``CFG:HYP[:EPOCHS][:imgsz=N]`` -> (cfg, hyp, epochs, imgsz, run-name suffix)."""
    cfg, hyp, *extras = variant.split(":")
    suffix = ""
    for extra in extras:
        if extra.isdigit():
            epochs, suffix = int(extra), suffix + f"_{extra}ep"
        elif extra.startswith("imgsz=") and extra[6:].isdigit():
            imgsz, suffix = int(extra[6:]), suffix + f"_{extra[6:]}px"
        else:
            raise SystemExit(f"variant '{variant}': '{extra}' is neither EPOCHS nor imgsz=N")
    return cfg, hyp, epochs, imgsz, suffix


def write_table(rows: list[dict], project: Path, header: str) -> str:
    """ablation.md (one row per run, then the mean over seeds when a variant ran more than once) and ablation.csv."""
    text = "\n".join([header, "", *markdown_table(rows)])
    means = mean_over_seeds(rows)
    if any(m["seeds"] > 1 for m in means):
        text += "\n\nMean over seeds (AP per seed in the last column):\n\n" + "\n".join(markdown_table(means))
    project.mkdir(parents=True, exist_ok=True)
    (project / "ablation.md").write_text(text + "\n")
    with open(project / "ablation.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return text


def markdown_table(rows: list[dict]) -> list[str]:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    return lines


def mean_over_seeds(rows: list[dict]) -> list[dict]:
    """One row per variant (run name without its ``_sN`` seed suffix): the mean of every metric over its seeds."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(re.sub(r"_s\d+$", "", r["variant"]), []).append(r)
    means = []
    for name, runs in groups.items():
        runs = sorted(runs, key=lambda r: int(r["seed"]))
        m = {"variant": name, "seeds": len(runs),
             "epochs": statistics.mean(float(r["epochs"]) for r in runs)}
        m.update({k: statistics.mean(float(r[k]) for r in runs) for k in (*COLUMNS, "train_min")})
        m["AP per seed"] = " / ".join(f"{float(r['AP']):.3f}" for r in runs)
        means.append(m)
    return means


def merge(paths: list[str], project: Path) -> str:
    """Combine the ablation.csv files of separate runs into one ablation.md/.csv in ``project``."""
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            rows += [{k: (v if k == "variant" else int(v) if v.isdigit() else float(v)) for k, v in r.items()}
                     for r in csv.DictReader(f)]
    if not rows:
        raise SystemExit(f"no rows in {', '.join(paths)}")
    return write_table(rows, project, f"Ablation merged from {len(paths)} file(s)")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.merge:
        print(merge(a.merge, Path(a.project)))
        return 0
    nc = load_data_config(a.data)["nc"]
    rows = []
    budget = f"wall-clock budget {a.time:g} h per run (epochs planned by train.py --time)" if a.time else \
        f"epochs per row (default {a.epochs})"
    for seed in a.seeds or [a.seed]:
        for v in a.variants:
            rows.append(run_variant(v, a, nc, seed))
            header = (f"Ablation on {a.data}: {budget}, imgsz {a.imgsz} (val {a.val_imgsz or a.imgsz}), "
                      f"batch {a.batch_size}, nbs {a.nbs}; metrics of best.pt on the val split")
            print("\n" + write_table(rows, Path(a.project), header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
