"""Trainer: wires data, model, loss, optimizer, EMA, validation, logging and checkpoints.

The work of an epoch is in utils/engine.py (train_one_epoch) and val.py (evaluate); this object
only builds them from the run's arguments and keeps the run folder up to date.
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from datetime import datetime
from pathlib import Path

import torch
import yaml

from utils.autoanchor import check_anchors, label_wh_px
from utils.checkpoint import save_checkpoint
from utils.data.config import load_data_config
from utils.data.loader import build_dataloader
from utils.engine import EpochContext, train_one_epoch
from utils.errors import ConfigError, DatasetError, LabelError
from utils.hyp import load_hyp
from utils.loss import ComputeLoss, scale_loss_gains
from utils.metrics import fitness
from utils.optim import build_optimizer, lr_lambda, resolve_auto_optimizer
from utils.plots import plot_labels, plot_train_batch
from utils.results_log import ResultsLog
from utils.results_plot import plot_results
from utils.data.stitcher import StitchingLoader
from utils.torch_utils import ModelEMA, init_seeds, select_device
from utils.checkpoint import build_model_checked, build_train_model
from utils.optim import freeze_layers

METRIC_KEYS = ("P", "R", "mAP50", "mAP50-95", "AP", "AP50", "AP75", "APs", "APm", "APl")


class Trainer:
    """Build everything a run needs from parsed train.py arguments; ``fit()`` trains it."""

    def __init__(self, args: argparse.Namespace, save_dir: Path, resume_ckpt: dict | None = None):
        self.args, self.save_dir = args, Path(save_dir)
        self.wdir = self.save_dir / "weights"
        self.wdir.mkdir(parents=True, exist_ok=True)
        init_seeds(args.seed)
        self.device = select_device(args.device)
        self.data = load_data_config(args.data)
        self.hyp = resume_ckpt["hyp"] if resume_ckpt else load_hyp(args.hyp)
        self.names, nc = self.data["names"], self.data["nc"]
        if resume_ckpt:
            self.model = build_model_checked(resume_ckpt["model_cfg"], nc=nc)
            self.model.load_state_dict(resume_ckpt["train_model"])
        else:
            self.model = build_train_model(args.cfg, args.weights, nc)
        self.model.to(self.device)
        if args.freeze != [0]:
            print(f"froze {freeze_layers(self.model, args.freeze)} parameter tensors")
        self.grid = max(int(self.model.stride.max()), 32)
        if args.imgsz % self.grid:
            raise ConfigError(f"--imgsz {args.imgsz} must be a multiple of the largest stride {self.grid}")
        self._build_data()
        self._build_optimization(resume_ckpt)
        if not resume_ckpt:
            self._first_run_checks()
        self.model.info(args.imgsz)

    def _build_data(self) -> None:
        a, hyp = self.args, self.hyp
        if not self.data.get("train") or not self.data.get("val"):
            raise DatasetError(f"{a.data}: the dataset YAML needs non-empty 'train' and 'val' splits")
        self.train_loader, self.train_ds = build_dataloader(
            self.data["train"], a.imgsz, a.batch_size, self.grid, hyp, augment=True, workers=a.workers,
            shuffle=True, cache=a.cache, seed=a.seed, prefix="train: ")
        self.val_loader, self.val_ds = build_dataloader(
            self.data["val"], a.imgsz, a.batch_size * 2, self.grid, hyp, augment=False, rect=True,
            workers=a.workers, cache=a.cache, seed=a.seed, prefix="val: ")
        labels = [lb for lb in self.train_ds.labels if len(lb)]
        max_cls = int(max((lb[:, 0].max() for lb in labels), default=0))
        if max_cls >= self.data["nc"]:
            raise LabelError(f"{a.data}: label class {max_cls} exceeds nc={self.data['nc']}")
        self.loader = StitchingLoader(self.train_loader, hyp["stitch_tau"])

    def _build_optimization(self, ckpt: dict | None) -> None:
        a, hyp = self.args, self.hyp
        accumulate = max(round(a.nbs / a.batch_size), 1)
        wd = hyp["weight_decay"] * a.batch_size * accumulate / a.nbs
        steps = math.ceil(len(self.train_ds) / max(a.batch_size, a.nbs)) * a.epochs
        name, lr0, momentum = resolve_auto_optimizer(a.optimizer, hyp["lr0"], hyp["momentum"], steps, self.data["nc"])
        if a.optimizer == "auto":
            print(f"optimizer: 'auto' chose {name}(lr={lr0:g}, momentum={momentum:g}) for {steps} optimizer steps")
        self.hyp = hyp = {**hyp, "lr0": lr0, "momentum": momentum}
        self.optimizer = build_optimizer(self.model, name, lr0, momentum, wd)
        self.lf = lr_lambda(a.epochs, hyp["lrf"], a.cos_lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=self.lf)
        self.ema = ModelEMA(self.model)
        self.amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.start_epoch, self.best_fitness = 0, 0.0
        if ckpt:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.ema.ema.load_state_dict(ckpt["model"])
            self.ema.updates = ckpt["ema_updates"]
            self.start_epoch, self.best_fitness = ckpt["epoch"] + 1, ckpt["best_fitness"]
            self.scheduler.last_epoch = self.start_epoch - 1
            ResultsLog(self.save_dir).truncate(ckpt["epoch"])
        hyp_loss = scale_loss_gains(hyp, self.model.detect.nl, self.data["nc"], a.imgsz)
        self.compute_loss = ComputeLoss(self.model.detect, hyp_loss)

    def _first_run_checks(self) -> None:
        """Run-folder files and AutoAnchor, once per run (not again on resume)."""
        a = self.args
        with open(self.save_dir / "hyp.yaml", "w") as f:
            yaml.safe_dump(self.hyp, f, sort_keys=False)
        with open(self.save_dir / "opt.yaml", "w") as f:
            yaml.safe_dump(vars(a), f, sort_keys=False)
        plot_labels(self.train_ds.labels, self.names, self.save_dir / "labels.jpg", shapes_wh=self.train_ds.shapes)
        if not a.noautoanchor:
            wh = label_wh_px(self.train_ds.labels, self.train_ds.shapes, a.imgsz)
            check_anchors(self.model, wh, thr=self.hyp["anchor_t"], imgsz=a.imgsz)
            self.ema = ModelEMA(self.model)  # the EMA copy must carry the new anchors too

    def _checkpoint(self, epoch: int, final: bool) -> dict:
        return {
            "task": "detect", "model_cfg": self.model.yaml, "model": _float_state(self.ema.ema),
            "names": list(self.names), "nc": self.data["nc"], "hyp": self.hyp,
            "epoch": -1 if final else epoch, "best_fitness": self.best_fitness,
            "optimizer": None if final else self.optimizer.state_dict(),
            "train_model": None if final else _float_state(self.model), "ema": None,
            "ema_updates": self.ema.updates, "train_args": vars(self.args),
            "date": datetime.now().isoformat(timespec="seconds"),
        }

    def _validate(self) -> dict:
        import val

        return val.evaluate(self.ema.ema, self.val_loader, self.names, coco_gt=self.data.get("val_json"),
                            save_dir=self.save_dir, plots=False,
                            compute_loss=functools.partial(self.compute_loss, update_feedback=False))

    def _on_batch(self, ni: int, imgs: torch.Tensor, targets: torch.Tensor, paths) -> None:
        if ni < 3:
            plot_train_batch(imgs, targets, paths, self.save_dir / f"train_batch{ni}.jpg")

    def fit(self) -> dict:
        """Train from start_epoch to epochs; returns the final validation metrics of best.pt."""
        a = self.args
        nb = len(self.train_loader)
        nw = max(round(self.hyp["warmup_epochs"] * nb), 1) if self.hyp["warmup_epochs"] > 0 else -1
        log, t0, stale, metrics = ResultsLog(self.save_dir), time.time(), 0, {}
        last_opt_step = -1 if self.start_epoch == 0 else self.start_epoch * nb - 1
        print(f"Image sizes {a.imgsz} train, {a.imgsz} val; {a.workers} workers; logging to {self.save_dir}\n"
              f"Starting training for {a.epochs} epochs...")
        for epoch in range(self.start_epoch, a.epochs):
            ctx = EpochContext(epoch, a.epochs, self.device, nw, self.lf, self.hyp, a.nbs, a.batch_size,
                               a.imgsz, self.grid, a.multi_scale, self.amp, last_opt_step,
                               self._on_batch if epoch == 0 else None)
            train_stats = train_one_epoch(self.model, self.loader, self.optimizer, self.compute_loss,
                                          self.ema, self.scaler, ctx)
            last_opt_step = ctx.last_opt_step
            lrs = {f"lr/pg{i}": g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
            self.scheduler.step()
            final = epoch + 1 == a.epochs
            if not a.noval or final:
                metrics = self._validate()
            fit = fitness(metrics) if metrics else 0.0
            improved = fit >= self.best_fitness
            self.best_fitness = max(fit, self.best_fitness)
            row = {"epoch": epoch, **train_stats, **{f"metrics/{k}": metrics.get(k, 0.0) for k in METRIC_KEYS},
                   **{k: metrics.get(k, 0.0) for k in ("val/box_loss", "val/obj_loss", "val/cls_loss")},
                   "fitness": fit, **lrs, "time": time.time() - t0}
            log.append(row)
            stale = 0 if improved else stale + 1
            stop = stale >= a.patience
            self._save(epoch, final or stop, improved)
            if stop:
                print(f"Stopping early: no improvement in the last {a.patience} epochs.")
                break
        plot_results(log.path)
        print(f"{epoch + 1 - self.start_epoch} epochs completed in {(time.time() - t0) / 3600:.3f} hours.")
        return self._validate_best()

    def _validate_best(self) -> dict:
        """Validate best.pt with plots (confusion matrix, PR curves, AP by size) in the run folder."""
        best = self.wdir / "best.pt"
        if not best.exists():
            return {}
        import val
        from utils.checkpoint import load_model

        model, _ = load_model(best, self.device)
        print(f"\nValidating {best}...")
        return val.evaluate(model, self.val_loader, self.names, coco_gt=self.data.get("val_json"),
                            save_dir=self.save_dir, plots=True)

    def _save(self, epoch: int, final: bool, improved: bool) -> None:
        if self.args.nosave and not final:
            return
        ckpt = self._checkpoint(epoch, final)
        save_checkpoint(ckpt, self.wdir / "last.pt")
        if improved:
            save_checkpoint({**ckpt, "optimizer": None, "train_model": None}, self.wdir / "best.pt")


def _float_state(model: torch.nn.Module) -> dict:
    """A detached float32 copy of a state_dict on the CPU (portable, weights_only-loadable)."""
    return {k: (v.detach().float().cpu().clone() if v.dtype.is_floating_point else v.detach().cpu().clone())
            for k, v in model.state_dict().items()}
