"""The ultralytics half of benchmarks/vs_ultralytics.py: train a YOLOv8 model from its YAML and
write its validation-set detections as a COCO results file.

Runs in the separate virtual environment that holds ultralytics (see vs_ultralytics.md); it
imports nothing from this project, and ultralytics only inside the functions.

    <venv>/bin/python benchmarks/ultralytics_side.py train --data ds.yaml --model yolov8n-p2.yaml \
        --epochs 10 --imgsz 640 --batch 16 --project WORK/ultra --name train
    <venv>/bin/python benchmarks/ultralytics_side.py predict --weights WORK/ultra/train/weights/best.pt \
        --data ds.yaml --imgsz 640 --project WORK/ultra --name val --out WORK/ultra/val_raw.json

Each command writes a small JSON of facts (threads, workers, epoch times, its own metrics) that
the orchestrating script reads back.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path


def _offline_env(config_dir: str) -> None:
    """Keep ultralytics from reaching the network and from writing settings outside the work dir.

    YOLO_OFFLINE makes its online check answer False, which turns off telemetry and downloads;
    fonts (for plots) and AMP-check weights (CUDA only) are the other download paths, and plots
    are off in every call below.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    if config_dir:
        os.environ.setdefault("YOLO_CONFIG_DIR", config_dir)


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def train(a: argparse.Namespace) -> dict:
    """Train ``a.model`` from scratch; returns facts of the run (also written to train_info.json)."""
    import torch
    import ultralytics
    from ultralytics import YOLO

    if a.threads > 0:  # ultralytics sets torch threads to NUM_THREADS (cpu_count - 1) when it picks the CPU
        import ultralytics.utils.torch_utils as tu
        tu.NUM_THREADS = a.threads
    model = YOLO(a.model)  # built from the YAML: random weights, nothing downloaded
    facts: dict = {"epoch_end_s": []}
    t0 = time.perf_counter()

    def on_train_start(trainer) -> None:
        facts.update(torch_threads=torch.get_num_threads(), workers=int(trainer.args.workers),
                     device=str(trainer.device), setup_s=time.perf_counter() - t0)

    def on_fit_epoch_end(trainer) -> None:  # after the epoch's validation, like ours
        if len(facts["epoch_end_s"]) < trainer.epochs:  # the final evaluation of best.pt calls it once more
            facts["epoch_end_s"].append(time.perf_counter() - t0)

    model.add_callback("on_train_start", on_train_start)
    model.add_callback("on_fit_epoch_end", on_fit_epoch_end)
    model.train(data=a.data, epochs=a.epochs, imgsz=a.imgsz, batch=a.batch, nbs=a.nbs, optimizer=a.optimizer,
                workers=a.workers, seed=a.seed, device=a.device, project=a.project, name=a.name,
                exist_ok=True, plots=False, verbose=False)
    save_dir = Path(a.project) / a.name
    params = sum(p.numel() for p in model.model.parameters()) if model.model is not None else 0
    facts.update(ultralytics=ultralytics.__version__, torch=torch.__version__, model=a.model, params=params,
                 epochs=a.epochs, imgsz=a.imgsz, batch=a.batch, nbs=a.nbs, optimizer=a.optimizer, seed=a.seed,
                 workers_requested=a.workers, total_s=time.perf_counter() - t0,
                 best=str(save_dir / "weights" / "best.pt"))
    _write_json(save_dir / "train_info.json", facts)
    return facts


def predict(a: argparse.Namespace) -> dict:
    """Run ultralytics' validator on the val split with save_json; copy its COCO results to ``a.out``.

    Its results carry ``file_name`` and ``category_id = class index + 1`` (its numbering for
    datasets that are not COCO); the orchestrator maps both onto our ground truth.
    """
    import torch
    from ultralytics import YOLO

    model = YOLO(a.weights)
    t0 = time.perf_counter()
    metrics = model.val(data=a.data, split="val", imgsz=a.imgsz, batch=a.batch, conf=a.conf, iou=a.iou,
                        max_det=a.max_det, save_json=True, plots=False, device=a.device, project=a.project,
                        name=a.name, exist_ok=True, verbose=False)
    src = Path(a.project) / a.name / "predictions.json"
    if not src.is_file():
        raise SystemExit(f"ultralytics wrote no {src}")
    shutil.copyfile(src, a.out)
    facts = {"weights": a.weights, "imgsz": a.imgsz, "conf": a.conf, "iou": a.iou, "max_det": a.max_det,
             "names": {int(k): v for k, v in model.names.items()}, "category_id": "class index + 1",
             "own_metrics": {k: float(v) for k, v in metrics.results_dict.items()},
             "torch_threads": torch.get_num_threads(), "val_s": time.perf_counter() - t0}
    _write_json(Path(a.out).with_name(Path(a.out).stem + "_info.json"), facts)
    return facts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="The ultralytics half of benchmarks/vs_ultralytics.py.")
    p.add_argument("--config-dir", default="", help="YOLO_CONFIG_DIR for ultralytics' settings file")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--data", required=True, help="ultralytics dataset YAML")
    t.add_argument("--model", default="yolov8n-p2.yaml")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--imgsz", type=int, default=640)
    t.add_argument("--batch", type=int, default=16)
    t.add_argument("--nbs", type=int, default=64)
    t.add_argument("--optimizer", default="auto")
    t.add_argument("--workers", type=int, default=2)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=0, help="torch threads on CPU; 0 = ultralytics' choice")
    for q in (t, v := sub.add_parser("predict")):
        q.add_argument("--device", default="cpu")
        q.add_argument("--project", required=True)
        q.add_argument("--name", required=True)
    v.add_argument("--weights", required=True)
    v.add_argument("--data", required=True)
    v.add_argument("--imgsz", type=int, default=640)
    v.add_argument("--batch", type=int, default=16)
    v.add_argument("--conf", type=float, default=0.001)
    v.add_argument("--iou", type=float, default=0.6)
    v.add_argument("--max-det", type=int, default=300)
    v.add_argument("--out", required=True, help="where to copy the COCO results JSON")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    _offline_env(a.config_dir)
    facts = train(a) if a.cmd == "train" else predict(a)
    print(json.dumps({k: v for k, v in facts.items() if k != "own_metrics"}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
