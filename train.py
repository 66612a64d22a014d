"""Train a YOLOv5-style small-object detector.

    python train.py                                     # yolov5n-p2 on the bundled HIT-UAV sample
    python train.py --cfg models/yolov5s-p2.yaml --data data/hit-uav.yaml --img 640 --epochs 100
    python train.py --resume                            # continue the newest interrupted run
    python train.py --evolve 300 --epochs 10            # evolve the hyp (runs/evolve/exp/hyp_evolve.yaml)
    torchrun --nproc_per_node 4 train.py --batch-size 64 ...   # DDP on 4 GPUs, 16 images per GPU

Under torchrun --batch-size is the global batch, split equally across the processes (as YOLOv5).
SIGTERM or Ctrl-C stops a run after writing last.pt; --resume continues it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
from pathlib import Path

from utils.checkpoint import completed_epoch, load_checkpoint
from utils.cli import run_cli
from utils.errors import CheckpointError, ConfigError, TrainingError
from utils.optim import OPTIMIZERS
from utils.run_dir import check_writable, find_resume_checkpoint, increment_path, job_marker
from utils.train_config import TrainConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="",
                   help="initial weights (a checkpoint of this project or an official YOLOv5 .pt); '' = from scratch")
    p.add_argument("--cfg", default="models/yolov5n-p2-af.yaml", help="model YAML, e.g. models/yolov5s-p2.yaml")
    p.add_argument("--data", default="data/hit-uav-sample.yaml", help="dataset YAML")
    p.add_argument("--hyp", default="data/hyps/hyp.scratch.yaml", help="hyperparameter YAML")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=16,
                   help="images per batch of the whole job: under torchrun each process takes batch-size / WORLD_SIZE")
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=320, help="train/val image size (px)")
    p.add_argument("--val-imgsz", type=int, default=0,
                   help="validation image size (px); 0 = --imgsz (e.g. train on 320 native crops, validate at 640)")
    p.add_argument("--time", type=float, default=0.0, metavar="HOURS",
                   help="train for this wall-clock time: epochs are re-planned after each epoch to fit it")
    p.add_argument("--device", default="", help="'' (auto), cpu, or a CUDA index such as 0")
    p.add_argument("--workers", type=int, default=2, help="data-loading worker processes")
    p.add_argument("--project", default="runs/train", help="runs are saved to project/name")
    p.add_argument("--name", default="exp", help="run name (exp, exp2, ... when it exists)")
    p.add_argument("--exist-ok", action="store_true", help="reuse project/name instead of incrementing")
    p.add_argument("--resume", nargs="?", const=True, default=False, help="resume from last.pt (newest run if no path)")
    p.add_argument("--cache", nargs="?", const="ram", default=None, choices=["ram"], help="cache images in RAM")
    p.add_argument("--optimizer", default="auto", choices=OPTIMIZERS, help="auto: AdamW at the hyp lr0 for short runs (<10k steps), else SGD")
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
    p.add_argument("--evolve", type=int, nargs="?", const=300, default=0, metavar="N",
                   help="evolve the hyp for N generations (300 without N) in runs/evolve/exp; rerun with "
                        "--name exp --exist-ok to continue")
    p.add_argument("--noplots", action="store_true", help="save no plots (labels, batches, results, curves)")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false",
                   help="do not write TensorBoard events (written by default when tensorboard is installed)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across torchrun processes (CUDA only)")
    return p.parse_args(argv)


def _warn_ignored_flags(args: argparse.Namespace, config: TrainConfig) -> None:
    """--resume continues the stored run unchanged: say which flags given with it are not used."""
    defaults = vars(parse_args([]))
    ignored = [f"--{k.replace('_', '-')}" for k, v in vars(args).items()
               if k in config.to_dict() and v != defaults[k] and v != getattr(config, k)]
    if ignored:
        print(f"WARNING: {', '.join(ignored)} ignored with --resume: the run continues with its stored settings "
              "(start a new run with --weights .../last.pt to change them)")


def _resume(args: argparse.Namespace, verbose: bool = True) -> tuple[TrainConfig, dict, Path]:
    """The config and checkpoint of the run being resumed. Returns (config, checkpoint, last.pt path)."""
    path = find_resume_checkpoint(args.resume, Path(args.project))
    ckpt = load_checkpoint(path)
    if ckpt.get("train_model") is None or ckpt.get("epoch", -1) < 0:
        raise CheckpointError(f"{path} is from a finished run; nothing to resume (start a new run with --weights)")
    if not isinstance(ckpt.get("train_args"), dict):
        raise CheckpointError(f"{path} holds no training config ('train_args'); it cannot be resumed")
    config = TrainConfig.from_dict(ckpt["train_args"], source=path)
    if verbose:
        _warn_ignored_flags(args, config)
        print(f"Resuming {path.parent.parent}: continuing from epoch {completed_epoch(ckpt) + 2}/{config.epochs}")
    return config, ckpt, path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # library modules log through `logging` (label scan, image cache): show their INFO lines
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    return run_cli("train.py", lambda: run(args), on_interrupt="interrupted; continue with `python train.py --resume`")


def run(args: argparse.Namespace) -> dict:
    """Train a new run, or continue one with --resume; returns the final metrics of best.pt.

    Under torchrun every process runs this: rank 0 picks and writes the run folder, the others
    learn its path from rank 0 and print nothing but errors.
    """
    from utils import distributed

    if args.evolve:
        return _evolve(args)
    info = distributed.env_info()
    _elastic_resume(args, info)
    resumed = _resume(args, verbose=info.is_main) if args.resume else None  # (config, checkpoint, last.pt)
    config = resumed[0] if resumed else TrainConfig.from_args(args)
    # a resumed run keeps its settings, but a GPU index saved by a one-GPU run means nothing under torchrun
    device = config.device if not (resumed and info.enabled and config.device != "cpu") else ""
    info, device = distributed.setup(device)
    try:
        quiet = contextlib.nullcontext() if info.is_main else _quiet()
        with quiet:
            return _train(config, resumed, info, device)
    except RuntimeError as e:  # another process died (its own error is printed above): one line, not a traceback
        if not (info.enabled and distributed.is_peer_failure(e)):
            raise
        detail = re.sub(r"^\[[^\]]*\]\s*", "", " ".join(str(e).split())).split(". ")[0][:160]  # drop the source path
        raise TrainingError(f"rank {info.rank}: lost another process of the job ({detail}); last.pt keeps the "
                            "last completed epoch: torchrun --max-restarts resumes from it, or rerun with "
                            "--resume") from None
    finally:
        distributed.cleanup()


def _train(config: TrainConfig, resumed, info, device: str) -> dict:
    """The run folder (rank 0 decides, after checking it can be written), then Trainer.fit().

    SIGTERM and SIGINT become stop requests while fit() runs (last.pt is written, then the run
    ends); before that, while the dataset is scanned, they end the process as usual.
    """
    from utils.distributed import broadcast_object
    from utils.graceful_stop import GracefulStop
    from utils.trainer import Trainer

    save_dir = None
    if info.is_main:
        if resumed:
            save_dir = resumed[2].parent.parent
            check_writable(save_dir)
        else:
            check_writable(config.project)  # before the dataset scan: an unwritable folder fails in seconds
            save_dir = increment_path(Path(config.project) / config.name, exist_ok=config.exist_ok)
            _write_job_marker(config.project, save_dir, info)
    save_dir = broadcast_object(save_dir, info)
    stop = GracefulStop()
    trainer = Trainer(config, save_dir, resume_ckpt=resumed[1] if resumed else None, dist=info,
                      stop=stop, device=device)
    with stop:
        metrics = trainer.fit()
    if info.is_main:
        summary = "  ".join(f"{k} {metrics[k]:.4f}" for k in ("P", "R", "mAP50", "mAP50-95", "AP", "APs", "APm", "APl")
                            if k in metrics)
        print(f"\nFinal (best.pt): {summary}\nResults saved to {save_dir}")
    return metrics


@contextlib.contextmanager
def _quiet():
    """Ranks other than 0: no stdout and only errors from the library loggers (rank 0 reports)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            yield
    finally:
        root.setLevel(level)


def _write_job_marker(project: str, save_dir: Path, info) -> None:
    """Under torchrun, remember which run folder this job trains in, for an elastic restart."""
    job = os.environ.get("TORCHELASTIC_RUN_ID")
    if info.enabled and job:
        job_marker(project, job).write_text(str(save_dir))


def _elastic_resume(args: argparse.Namespace, info) -> None:
    """After torchrun restarted the workers of a failed job (--max-restarts), continue the job's own run.

    The first attempt named its run folder in a marker; a restart resumes that folder's last.pt when
    it is resumable, and otherwise starts the run again in the same folder.
    """
    from utils.distributed import elastic_restart_count

    job = os.environ.get("TORCHELASTIC_RUN_ID")
    if args.resume or not info.enabled or not job or elastic_restart_count() == 0:
        return
    marker = job_marker(args.project, job)
    if not marker.is_file():
        return
    save_dir = Path(marker.read_text().strip())
    last = save_dir / "weights" / "last.pt"
    if last.is_file() and load_checkpoint(last).get("train_model") is not None:
        args.resume = str(last)
    else:
        args.project, args.name, args.exist_ok = str(save_dir.parent), save_dir.name, True
    if info.is_main:
        print(f"torchrun restart {elastic_restart_count()}: continuing {save_dir}")


def _evolve(args: argparse.Namespace) -> dict:
    """--evolve N: the genetic hyp search of utils/evolve.py; returns the best hyp found."""
    from utils.evolve import evolve

    if args.resume:
        raise ConfigError("--evolve and --resume cannot be combined; "
                          "continue a search with --name <run> --exist-ok")
    config = TrainConfig.from_args(args)
    project = Path("runs/evolve") if config.project == "runs/train" else Path(config.project)
    return evolve(config, args.evolve, increment_path(project / config.name, exist_ok=config.exist_ok))


if __name__ == "__main__":
    sys.exit(main())
