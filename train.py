"""Train a YOLOv5-style small-object detector.

    python train.py                                     # yolov5n-p2 on the bundled HIT-UAV sample
    python train.py --cfg models/yolov5s-p2.yaml --data data/hit-uav.yaml --img 640 --epochs 100
    python train.py --resume                            # continue the newest interrupted run
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from utils.checkpoint import load_checkpoint
from utils.cli import run_cli
from utils.errors import CheckpointError
from utils.optim import OPTIMIZERS
from utils.run_dir import find_resume_checkpoint, increment_path
from utils.train_config import TrainConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="",
                   help="initial weights (a checkpoint of this project or an official YOLOv5 .pt); '' = from scratch")
    p.add_argument("--cfg", default="models/yolov5n-p2-af.yaml", help="model YAML, e.g. models/yolov5s-p2.yaml")
    p.add_argument("--data", default="data/hit-uav-sample.yaml", help="dataset YAML")
    p.add_argument("--hyp", default="data/hyps/hyp.scratch.yaml", help="hyperparameter YAML")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=16, help="images per batch")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=320, help="train/val image size (px)")
    p.add_argument("--device", default="", help="'' (auto), cpu, or a CUDA index such as 0")
    p.add_argument("--workers", type=int, default=2, help="data-loading worker processes")
    p.add_argument("--project", default="runs/train", help="runs are saved to project/name")
    p.add_argument("--name", default="exp", help="run name (exp, exp2, ... when it exists)")
    p.add_argument("--exist-ok", action="store_true", help="reuse project/name instead of incrementing")
    p.add_argument("--resume", nargs="?", const=True, default=False, help="resume from last.pt (newest run if no path)")
    p.add_argument("--cache", nargs="?", const="ram", default=None, choices=["ram"], help="cache images in RAM")
    p.add_argument("--optimizer", default="auto", choices=OPTIMIZERS, help="auto: AdamW for short runs (<10k steps), else SGD")
    p.add_argument("--cos-lr", action="store_true", help="cosine learning-rate schedule")
    p.add_argument("--patience", type=int, default=100, help="stop after this many epochs without improvement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--multi-scale", action="store_true", help="vary image size +/- 50%% per batch")
    p.add_argument("--freeze", nargs="+", type=int, default=[0], help="freeze first N rows (one int) or listed rows")
    p.add_argument("--noautoanchor", action="store_true", help="skip the AutoAnchor check")
    p.add_argument("--noval", action="store_true", help="validate only after the final epoch")
    p.add_argument("--nosave", action="store_true", help="save only the final checkpoint")
    p.add_argument("--nbs", type=int, default=16,
                   help="nominal batch size: gradients accumulate up to it (YOLOv5 uses 64)")
    p.add_argument("--close-mosaic", type=int, default=0, metavar="N",
                   help="switch mosaic off for the last N epochs (train on whole frames, as val sees them)")
    return p.parse_args(argv)


def _resume(args: argparse.Namespace) -> tuple[TrainConfig, dict, Path]:
    """The config and checkpoint of the run being resumed. Returns (config, checkpoint, last.pt path)."""
    path = find_resume_checkpoint(args.resume, Path(args.project))
    ckpt = load_checkpoint(path)
    if ckpt.get("train_model") is None or ckpt.get("epoch", -1) < 0:
        raise CheckpointError(f"{path} is from a finished run; nothing to resume (start a new run with --weights)")
    if not isinstance(ckpt.get("train_args"), dict):
        raise CheckpointError(f"{path} holds no training config ('train_args'); it cannot be resumed")
    config = TrainConfig.from_dict(ckpt["train_args"], source=path)
    print(f"Resuming {path.parent.parent}: continuing from epoch {ckpt['epoch'] + 2}/{config.epochs}")
    return config, ckpt, path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # library modules log through `logging` (label scan, image cache): show their INFO lines
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    return run_cli("train.py", lambda: run(args), on_interrupt="interrupted; continue with `python train.py --resume`")


def run(args: argparse.Namespace) -> dict:
    """Train a new run, or continue one with --resume; returns the final metrics of best.pt."""
    from utils.trainer import Trainer

    ckpt = None
    if args.resume:
        config, ckpt, last = _resume(args)
        save_dir = last.parent.parent
    else:
        config = TrainConfig.from_args(args)
        save_dir = increment_path(Path(config.project) / config.name, exist_ok=config.exist_ok)
    metrics = Trainer(config, save_dir, resume_ckpt=ckpt).fit()
    summary = "  ".join(f"{k} {metrics[k]:.4f}" for k in ("P", "R", "mAP50", "mAP50-95", "AP", "APs", "APm", "APl") if k in metrics)
    print(f"\nFinal (best.pt): {summary}\nResults saved to {save_dir}")
    return metrics


if __name__ == "__main__":
    sys.exit(main())
