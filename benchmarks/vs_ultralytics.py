"""Accuracy against ultralytics YOLOv8n-P2 on HIT-UAV, at equal epochs and at equal wall-clock time.

Both detectors are trained from scratch on the same fixed subset of the train split with the
same epochs, image size, batch, nominal batch, optimizer choice (auto), loader workers and seed;
both are scored by OUR COCO evaluator (the code behind ``val.py --coco-gt GT --pred PRED``) on
the whole val split, with boxes in original image pixels and one ground-truth file.

    python -m benchmarks.vs_ultralytics                          # all stages (hours on a CPU)
    python -m benchmarks.vs_ultralytics --only ultralytics       # train + score theirs, cached
    python -m benchmarks.vs_ultralytics --only ours              # ours at equal epochs and time
    python -m benchmarks.vs_ultralytics --only report            # table from the cached results

Run from the repository root. The ultralytics half runs in its own virtual environment
(``--ultra-python``, see vs_ultralytics.md) through benchmarks/ultralytics_side.py. Every stage
caches its results as JSON in ``--work``; ``--force`` redoes a cached stage. train.py has no
time budget, so "equal wall-clock" trains ours for the number of epochs that its measured time
per epoch fits into ultralytics' measured training time.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

from benchmarks.vs_ultralytics_data import prepare_data
from benchmarks.vs_ultralytics_run import (equal_time_epochs, load_json, run_ours, run_ultralytics,
                                           save_json)
from utils.errors import SodError

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ultralytics", "ours", "report")
METRICS = ("AP", "AP50", "APs", "APm", "APl", "AR100")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run")
    p.add_argument("--work", default="runs/vs_ultralytics", help="work dir: data links, runs, cached results")
    p.add_argument("--data", default="data/hit-uav.yaml", help="source dataset YAML (read only)")
    p.add_argument("--train-images", type=int, default=300, help="fixed random subset of the train split")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--nbs", type=int, default=64, help="nominal batch size (both sides)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="training seed (both sides)")
    p.add_argument("--subset-seed", type=int, default=0,
                   help="seed of the fixed train subset; keep it when comparing training seeds")
    p.add_argument("--cfg", default="models/yolov5n-p2.yaml", help="our model YAML")
    p.add_argument("--hyp", default="data/hyps/hyp.sod-all.yaml", help="our hyperparameter YAML")
    p.add_argument("--ultra-model", default="yolov8n-p2.yaml", help="ultralytics model YAML (no weights)")
    p.add_argument("--ultra-python", default=str(REPO.parent / "venvs" / "ultra" / "bin" / "python"),
                   help="python of the virtual environment that has ultralytics")
    p.add_argument("--ultra-threads", type=int, default=0, help="torch threads for ultralytics; 0 = its own choice")
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS for our train.py; 0 = torch's choice")
    p.add_argument("--conf", type=float, default=0.001, help="score threshold of the scored detections")
    p.add_argument("--iou", type=float, default=0.6, help="NMS IoU threshold, both sides")
    p.add_argument("--max-det", type=int, default=300)
    p.add_argument("--no-equal-time", action="store_true", help="skip our equal-wall-clock run")
    p.add_argument("--train-imgsz", type=int, default=0,
                   help="our training image size (0 = --imgsz; e.g. 320 with a native_crop hyp); val and scoring use --imgsz")
    p.add_argument("--noval", action="store_true",
                   help="ours: validate only after the last epoch (saves wall-clock for training; best.pt = last)")
    p.add_argument("--equal-time-only", action="store_true",
                   help="ours: skip the equal-epochs run, train only for the wall-clock budget (train.py --time)")
    p.add_argument("--budget-s", type=float, default=0.0,
                   help="wall-clock budget of the equal-time run; 0 = ultralytics' measured training time")
    p.add_argument("--force", action="store_true", help="redo stages whose results are cached")
    return p.parse_args(argv)


def _row(setting: str, r: dict) -> dict:
    t = r["train"]
    return {"setting": setting, "detector": f"{r['tool']} {r['model']}", "epochs": r["epochs"],
            **{k: r["coco"][k] for k in METRICS}, "train_wall_min": t["wall_s"] / 60,
            "train_cpu_min": t["cpu_s"] / 60, "torch_threads": t.get("torch_threads"), "workers": t.get("workers")}


def _ratio(ours: dict, theirs: dict) -> dict:
    keys = (*METRICS, "train_wall_min", "train_cpu_min")
    return {"setting": ours["setting"], "detector": "ratio ours/theirs", "epochs": "",
            **{k: ours[k] / theirs[k] if theirs[k] else float("nan") for k in keys},
            "torch_threads": "", "workers": ""}


def markdown_table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    return "\n".join(lines)


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.cuda.is_available(), "python": platform.python_version()}


def write_report(work: Path, data: dict) -> str:
    """Table of the cached results (those present); writes results.json and report.md to ``work``."""
    ultra = load_json(work / "ultralytics.json")
    if not ultra or "coco" not in ultra:
        return "no ultralytics results yet in " + str(work)
    rows, ratios = [], {}
    for tag, label in (("equal_epochs", "equal epochs"), ("equal_time", "equal wall-clock")):
        ours = load_json(work / f"ours_{tag}.json")
        theirs = _row(label, ultra)
        rows.append(theirs)
        if ours and "coco" in ours:
            mine = _row(label, ours)
            ratios[tag] = _ratio(mine, theirs)
            rows += [mine, ratios[tag]]
    table = markdown_table(rows)
    head = (f"HIT-UAV: {data['n_train']} train images (fixed subset), {data['n_val']} val images; "
            f"COCO figures by our evaluator; measured {datetime.date.today()}")
    save_json(work / "results.json", {"date": str(datetime.date.today()), "machine": machine(), "data": data,
                                      "ultralytics": ultra, "rows": rows, "ratios": ratios,
                                      **{f"ours_{t}": load_json(work / f"ours_{t}.json") for t in
                                         ("equal_epochs", "equal_time")}})
    (work / "report.md").write_text(head + "\n\n" + table + "\n")
    return head + "\n\n" + table


def _equal_time(a: argparse.Namespace, work: Path, data: dict, ultra: dict | None) -> None:
    """Train ours for ultralytics' training wall time (reusing the equal-epochs run when it fits it)."""
    ours = load_json(work / "ours_equal_epochs.json")
    budget = a.budget_s or ultra["train"]["wall_s"]
    if a.equal_time_only or not ours:
        # train.py --time plans the epochs; the process's start-up and final evaluation (about a
        # minute) are outside its clock, so they are taken off the budget
        print(f"equal wall-clock: budget {budget / 60:.1f} min, train.py --time plans the epochs")
        run_ours(a, work, data, a.epochs, tag="equal_time", budget_s=max(budget - 60.0, 60.0))
        return
    epochs = equal_time_epochs(ours, budget)
    print(f"equal wall-clock: budget {budget / 60:.1f} min (ultralytics trained {ultra['train']['wall_s'] / 60:.1f}); "
          f"ours {ours['train']['epoch_s']:.0f} s/epoch + {(ours['train']['wall_s'] - ours['train']['loop_s']):.0f} s "
          f"fixed -> {epochs} epochs")
    if epochs == ours["epochs"]:
        save_json(work / "ours_equal_time.json", {**ours, "tag": "equal_time", "same_run_as": "equal_epochs"})
    else:
        fixed = max(ours["train"]["wall_s"] - ours["train"]["loop_s"], 0.0)
        run_ours(a, work, data, epochs, tag="equal_time", budget_s=max(budget - fixed, 60.0))


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    work = Path(a.work).resolve()
    try:
        data = load_json(work / "data" / "data.json") if a.only == ["report"] else None
        if data is None:
            data = prepare_data(Path(a.data), work / "data", a.train_images, a.subset_seed)
        if "ultralytics" in a.only:
            run_ultralytics(a, work, data)
        if "ours" in a.only:
            if not a.equal_time_only:
                run_ours(a, work, data, a.epochs, tag="equal_epochs")
            ultra = load_json(work / "ultralytics.json")
            if a.budget_s and not a.no_equal_time:
                _equal_time(a, work, data, ultra)
            elif not a.no_equal_time and (ultra is None or "coco" not in ultra):
                print("no ultralytics results yet: equal-wall-clock run skipped (run --only ultralytics first)")
            elif not a.no_equal_time:
                _equal_time(a, work, data, ultra)
        if "report" in a.only:
            print(write_report(work, data))
    except SodError as e:
        print(f"vs_ultralytics: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
