"""Trainer: wires data, model, loss, optimizer, EMA, validation, logging and checkpoints.

The work of an epoch is in utils/engine.py (train_one_epoch) and the evaluation engine
(utils/evaluation.py); this object only builds them from the run's TrainConfig and keeps the run
folder up to date.

Under torchrun (utils/distributed.py) every process builds the same Trainer on its share of the
data; the model is wrapped in DistributedDataParallel, and rank 0 alone writes the run folder,
validates and saves checkpoints while the others wait at a barrier.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import signal
import time
from datetime import datetime
from pathlib import Path

import torch
import yaml

from utils.autoanchor import check_anchors, label_wh_px
from utils.checkpoint import build_model_checked, build_train_model, completed_epoch, save_checkpoint
from utils.data.config import load_data_config
from utils.data.loader import build_dataloader, make_loader
from utils.data.stitcher import StitchingLoader
from utils.distributed import DistInfo, barrier, broadcast_object, main_first, per_process_batch
from utils.engine import RunSpec, train_one_epoch
from utils.errors import ConfigError, DatasetError, RunInterrupted
from utils.hyp import load_hyp
from utils.loss import build_loss
from utils.metrics import fitness
from utils.optim import (
    build_optimizer,
    build_scheduler,
    build_warmup,
    freeze_layers,
    lr_lambda,
    resolve_auto_optimizer,
    step_scheduler,
    warmup_iterations,
)
from utils.plots import plot_labels, plot_train_batch
from utils.results_log import ResultsLog
from utils.results_plot import plot_results
from utils.sr_branch import build_sr_branch
from utils.step_guard import StepGuard
from utils.tb_logger import TensorBoardLogger
from utils.time_budget import TimeBudget
from utils.torch_utils import ModelEMA, init_seeds, select_device
from utils.train_config import TrainConfig

METRIC_KEYS = ("P", "R", "mAP50", "mAP50-95", "AP", "AP50", "AP75", "APs", "APm", "APl")


class Trainer:
    """Build everything a run needs from a TrainConfig; ``fit()`` trains it.

    With ``resume_ckpt`` (a last.pt of an interrupted run, already loaded) the model, optimizer,
    EMA, lr schedule and results.csv continue where that run stopped.

    ``dist`` places this process in a torchrun job (a single process by default; the process
    group must already exist, utils.distributed.setup) and ``device`` overrides ``config.device``
    (each torchrun process has its own GPU). ``stop`` (a GracefulStop) ends the run after the
    current iteration with last.pt written and a RunInterrupted error.
    """

    def __init__(self, config: TrainConfig, save_dir: Path, resume_ckpt: dict | None = None,
                 dist: DistInfo | None = None, stop=None, device: str | None = None):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"Trainer takes a TrainConfig, got {type(config).__name__}")
        self.config, self.save_dir = config, Path(save_dir)
        self.dist, self.stop = dist or DistInfo(), stop
        self.main = self.dist.is_main
        self.batch_size = per_process_batch(config.batch_size, self.dist.world_size)  # per process
        self.wdir = self.save_dir / "weights"
        if self.main:
            self.wdir.mkdir(parents=True, exist_ok=True)
        init_seeds(config.seed + self.dist.rank)  # DDP copies rank 0's initial weights to the others
        self.device = select_device(config.device if device is None else device)  # torchrun: cuda:LOCAL_RANK
        self.data = load_data_config(config.data)
        self.hyp = resume_ckpt["hyp"] if resume_ckpt else load_hyp(config.hyp)
        self.names, nc = self.data["names"], self.data["nc"]
        if resume_ckpt:
            self.model = build_model_checked(resume_ckpt["model_cfg"], nc=nc)
            self.model.load_state_dict(resume_ckpt["train_model"])
        else:
            self.model = build_train_model(config.cfg, config.weights, nc)
        self.model.to(self.device)
        if config.freeze != [0]:
            print(f"froze {freeze_layers(self.model, config.freeze)} parameter tensors")
        self.grid = max(int(self.model.stride.max()), 32)
        self.val_imgsz = config.val_imgsz or config.imgsz
        self.area_ranges = None  # extra COCO size bins for validation, e.g. {"tiny": (0, 16)} (benchmarks set it)
        for flag, size in (("--imgsz", config.imgsz), ("--val-imgsz", self.val_imgsz)):
            if size % self.grid:
                raise ConfigError(f"{flag} {size} must be a multiple of the largest stride {self.grid}")
        self._build_data()
        optimizer_name = self._build_optimization(resume_ckpt)
        if not resume_ckpt and self.main:
            self._first_run_checks()
        self.train_model = self._wrap_ddp(fresh=not resume_ckpt)
        # SR branch (models with a FeatureSR row): its teacher is the EMA, read at each call
        self.sr = build_sr_branch(self.model, self.hyp, lambda: self.ema.ema, nc, self.device, config.seed)
        if self.sr is not None and resume_ckpt:
            self.sr.load_state_dict(resume_ckpt.get("sr_discriminator"))
        self.spec = self._run_spec(optimizer_name)
        if self.main:
            self.model.info(config.imgsz)

    def _wrap_ddp(self, fresh: bool) -> torch.nn.Module:
        """The model the training loop runs: DistributedDataParallel under torchrun, else the model.

        DDP copies rank 0's weights and buffers (anchors refitted by AutoAnchor included) to every
        process when it wraps the model; the EMA of a new run is rebuilt from them.
        """
        if self.config.sync_bn and not self.dist.enabled:
            print("--sync-bn has no effect in a single process (it synchronises BatchNorm across torchrun processes)")
        if not self.dist.enabled:
            return self.model
        if self.config.sync_bn:
            if self.device.type != "cuda":
                raise ConfigError("--sync-bn needs CUDA devices: PyTorch's SyncBatchNorm has no CPU implementation")
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)  # same parameters
        ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids, output_device=ids and ids[0])
        if fresh:
            self.ema = ModelEMA(self.model)
        return ddp

    def _build_data(self) -> None:
        c, hyp = self.config, self.hyp
        if not self.data.get("train") or not self.data.get("val"):
            raise DatasetError(f"{c.data}: the dataset YAML needs non-empty 'train' and 'val' splits")
        with main_first(self.dist):  # rank 0 scans the labels and writes the cache; the others read it
            self.train_loader, self.train_ds = build_dataloader(
                self.data["train"], c.imgsz, self.batch_size, self.grid, hyp, augment=True, workers=c.workers,
                shuffle=True, cache=c.cache, seed=c.seed, prefix="train: ", nc=self.data["nc"],
                rank=self.dist.rank, world_size=self.dist.world_size)
        self.val_loader = None  # rank 0 alone validates
        if self.main:
            self.val_loader, _ = build_dataloader(
                self.data["val"], self.val_imgsz, self.batch_size * 2, self.grid, hyp, augment=False, rect=True,
                workers=c.workers, cache=c.cache, seed=c.seed, prefix="val: ", nc=self.data["nc"])
        self.loader = StitchingLoader(self.train_loader, hyp["stitch_tau"])

    def _build_optimization(self, ckpt: dict | None) -> str:
        """Optimizer, EMA, lr schedule, AMP scaler and loss; returns the optimizer's name."""
        c, hyp = self.config, self.hyp
        accumulate = max(round(c.nbs / c.batch_size), 1)
        wd = hyp["weight_decay"] * c.batch_size * accumulate / c.nbs
        steps = math.ceil(len(self.train_ds) / max(c.batch_size, c.nbs)) * c.epochs
        name, lr0, momentum = resolve_auto_optimizer(c.optimizer, hyp["lr0"], hyp["momentum"], steps, self.data["nc"],
                                                  pretrained=bool(c.weights))
        chose = " ('auto' chose it)" if c.optimizer == "auto" else ""
        print(f"optimizer: {name}(lr={lr0:g}, momentum={momentum:g}) for {steps} optimizer steps{chose}")
        self.hyp = hyp = {**hyp, "lr0": lr0, "momentum": momentum}
        self.optimizer = build_optimizer(self.model, name, lr0, momentum, wd)
        self.ema = ModelEMA(self.model)
        self.start_epoch, self.best_fitness = 0, 0.0
        self.elapsed_before = 0.0  # training seconds of the run before this process (resume)
        self._t0 = time.time()  # this process's training clock; fit() restarts it
        self.budget = TimeBudget(c.time * 3600, c.epochs) if c.time else None
        if ckpt:
            self._restore(ckpt)
        self.epochs = self.start_epoch + self.budget.epochs if self.budget else c.epochs
        self.lf = lr_lambda(self.epochs, hyp["lrf"], c.cos_lr)
        # built after the optimizer state is restored: it starts at start_epoch with that epoch's lr
        self.scheduler = build_scheduler(self.optimizer, self.lf, self.start_epoch)
        self.amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.compute_loss = build_loss(self.model, hyp, c.imgsz)  # anchor or anchor-free loss, by head
        return name

    def _restore(self, ckpt: dict) -> None:
        """Optimizer, EMA and progress of the interrupted run; results.csv loses rows it did not save."""
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.ema.ema.load_state_dict(ckpt["model"])
        self.ema.updates = ckpt["ema_updates"]
        done = completed_epoch(ckpt)
        self.start_epoch, self.best_fitness = done + 1, ckpt["best_fitness"]
        self.elapsed_before = float(ckpt.get("elapsed", 0.0))
        if self.budget:  # the rest of the budget, for the epochs the interrupted run still planned
            planned = int(ckpt.get("planned_epochs", self.budget.epochs))
            self.budget = TimeBudget(self.budget.seconds - self.elapsed_before, max(planned - self.start_epoch, 1))
        if self.main:
            ResultsLog(self.save_dir).truncate(done)

    def _run_spec(self, optimizer_name: str) -> RunSpec:
        """The fixed settings of the training loop (warmup length from the loader's batches per epoch)."""
        c = self.config
        nw = warmup_iterations(self.hyp["warmup_epochs"], len(self.loader), self.epochs)
        warmup = build_warmup(optimizer_name, self.hyp, nw, c.nbs, c.batch_size)
        return RunSpec(device=self.device, epochs=self.epochs, imgsz=c.imgsz, grid=self.grid, warmup=warmup,
                       lf=self.lf, multi_scale=c.multi_scale, amp=self.amp, seed=c.seed,
                       world_size=self.dist.world_size, main=self.main)

    def _first_run_checks(self) -> None:
        """Run-folder files and AutoAnchor, once per run (not again on resume)."""
        c = self.config
        with open(self.save_dir / "hyp.yaml", "w") as f:
            yaml.safe_dump(self.hyp, f, sort_keys=False)
        with open(self.save_dir / "opt.yaml", "w") as f:
            yaml.safe_dump(c.to_dict(), f, sort_keys=False)
        if not c.noplots:
            plot_labels(self.train_ds.labels, self.names, self.save_dir / "labels.jpg", shapes_wh=self.train_ds.shapes)
        if not c.noautoanchor:
            wh = label_wh_px(self.train_ds.labels, self.train_ds.shapes, c.imgsz)
            check_anchors(self.model, wh, thr=self.hyp["anchor_t"], imgsz=c.imgsz)
            self.ema = ModelEMA(self.model)  # the EMA copy must carry the new anchors too

    def _checkpoint(self, epoch: int, final: bool) -> dict:
        return {
            "task": "detect", "model_cfg": self.model.yaml, "model": _float_state(self.ema.ema),
            "names": list(self.names), "nc": self.data["nc"], "hyp": self.hyp,
            "epoch": -1 if final else epoch, "best_fitness": self.best_fitness,
            "optimizer": None if final else self.optimizer.state_dict(),
            "train_model": None if final else _float_state(self.model),
            "ema_updates": self.ema.updates, "train_args": self.config.to_dict(),
            "elapsed": self.elapsed_before + time.time() - self._t0, "planned_epochs": self.epochs,
            # train-time only: the discriminator never enters "model" (nor exports)
            "sr_discriminator": None if final or self.sr is None else self.sr.state_dict(),
            "date": datetime.now().isoformat(timespec="seconds"),
        }

    def _validate(self) -> dict:
        """Evaluate the EMA model on the val split and print the tables; returns the metrics dict."""
        from utils.eval_output import print_results
        from utils.evaluation import evaluate

        result = evaluate(self.ema.ema, self.val_loader, self.names, coco_gt=self.data.get("val_json"),
                          area_ranges=self.area_ranges,
                          compute_loss=functools.partial(self.compute_loss, update_feedback=False))
        print_results(result, self.names)
        self.last_eval = result  # PR curves for TensorBoard
        return result.as_dict()

    def _close_mosaic(self) -> None:
        """Train the last epochs on whole letterboxed frames: the distribution val sees."""
        c = self.config
        if self.main:
            print(f"Closing mosaic for the last {min(c.close_mosaic, self.epochs)} epochs")
        self.train_ds.mosaic = False
        # persistent workers hold their own copy of the dataset: start new ones; the Stitcher keeps its feedback
        self.train_loader = make_loader(self.train_ds, self.batch_size, c.workers, shuffle=True, seed=c.seed + 1,
                                        rank=self.dist.rank, world_size=self.dist.world_size)
        self.loader.loader = self.train_loader

    def _on_batch(self, ni: int, imgs: torch.Tensor, targets: torch.Tensor, paths) -> None:
        if ni < 3 and not self.config.noplots:
            plot_train_batch(imgs, targets, paths, self.save_dir / f"train_batch{ni}.jpg")

    def fit(self) -> dict:
        """Train from start_epoch to epochs; returns the final validation metrics of best.pt ({} off rank 0).

        With --time the planned epochs (``self.epochs``) are revised after every epoch. Raises
        RunInterrupted after writing last.pt when ``stop`` was requested (SIGTERM, SIGINT).
        """
        c = self.config
        stale, epoch, guard = 0, self.start_epoch, StepGuard(self.device)
        t0 = self._t0 = time.time()
        tb = TensorBoardLogger.create(self.save_dir, c.tensorboard) if self.main else None
        last_opt_step = -1 if self.start_epoch == 0 else self.start_epoch * len(self.loader) - 1
        if self.main:
            procs = f" x {self.dist.world_size} processes" if self.dist.enabled else ""
            budget = f" (re-planned to fit --time {c.time:g} h)" if self.budget else ""
            print(f"Image sizes {c.imgsz} train, {self.val_imgsz} val; {c.workers} workers{procs}; batch "
                  f"{c.batch_size} ({self.batch_size} per process); logging to {self.save_dir}\n"
                  f"Starting training for {self.epochs} epochs{budget}...")
        while epoch < self.epochs:
            if c.close_mosaic and epoch >= self.epochs - c.close_mosaic and self.train_ds.mosaic:
                self._close_mosaic()
            sampler = getattr(self.train_loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):  # DistributedSampler: a new shuffle every epoch
                sampler.set_epoch(epoch)
            result = train_one_epoch(self.train_model, self.loader, self.optimizer, self.compute_loss, self.ema,
                                     self.scaler, spec=self.spec, epoch=epoch, last_opt_step=last_opt_step,
                                     on_batch=self._on_batch if epoch == 0 and self.main else None,
                                     aux_loss=self.sr, stop=self.stop, guard=guard)
            last_opt_step = result.last_opt_step
            if result.stopped:
                self._save_interrupted(epoch)
            lrs = {f"lr/pg{i}": g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
            step_scheduler(self.scheduler)
            # rank 0's clock decides, so every process ends after the same epoch
            final = broadcast_object(epoch + 1 == self.epochs or self._budget_spent(t0), self.dist)
            stale = self._end_epoch(epoch, result.stats, lrs, t0, stale, final, tb) if self.main else 0
            stop = broadcast_object(stale >= c.patience, self.dist)  # rank 0 validated: its verdict counts
            if stop and self.main:
                print(f"Stopping early: no improvement in the last {c.patience} epochs.")
            if stop or final:
                break
            self._replan(epoch, t0)
            epoch += 1
        if not self.main:
            barrier()  # wait while rank 0 validates best.pt
            return {}
        if not c.noplots:
            plot_results(ResultsLog(self.save_dir).path)
        print(f"{epoch + 1 - self.start_epoch} epochs completed in {(time.time() - t0) / 3600:.3f} hours.")
        metrics = self._validate_best()
        if tb:
            tb.on_train_end(epoch)
        barrier()
        return metrics

    def _end_epoch(self, epoch: int, stats: dict, lrs: dict, t0: float, stale: int, final: bool, tb) -> int:
        """Rank 0: validate, log the results.csv row (and TensorBoard), save checkpoints.

        ``stale`` counts the epochs without improvement before this one; returns the new count.
        """
        c = self.config
        self.last_eval = None
        metrics = self._validate() if not c.noval or final else {}
        fit = fitness(metrics) if metrics else 0.0
        improved = fit >= self.best_fitness
        self.best_fitness = max(fit, self.best_fitness)
        row = {"epoch": epoch, **stats, **{f"metrics/{k}": metrics.get(k, 0.0) for k in METRIC_KEYS},
               **{k: metrics.get(k, 0.0) for k in ("val/box_loss", "val/obj_loss", "val/cls_loss")},
               "fitness": fit, **lrs, "time": time.time() - t0}
        ResultsLog(self.save_dir).append(row)
        if tb:
            tb.on_epoch_end(row, epoch, self.last_eval.ap if self.last_eval else None, self.names)
        stale = 0 if improved else stale + 1
        self._save(epoch, final or stale >= c.patience, improved)
        return stale

    def _budget_spent(self, t0: float) -> bool:
        """With --time: whether the epoch just trained used up the budget (it then becomes the last)."""
        return bool(self.budget) and self.budget.spent(time.time() - t0)

    def _replan(self, epoch: int, t0: float) -> None:
        """With --time: re-estimate the run's epochs from the mean epoch time and stretch the lr schedule to them."""
        if not self.budget:
            return
        before = self.epochs
        # the budget and its epochs count from this process's start (a resumed run got what was left);
        # rank 0's plan is everyone's
        done, elapsed = epoch + 1 - self.start_epoch, time.time() - t0
        self.epochs = broadcast_object(self.start_epoch + self.budget.replan(done, elapsed), self.dist)
        self.budget.epochs = self.epochs - self.start_epoch
        if self.epochs != before:
            self.lf = lr_lambda(self.epochs, self.hyp["lrf"], self.config.cos_lr)
            self.scheduler = build_scheduler(self.optimizer, self.lf, epoch + 1)
            self.spec = dataclasses.replace(self.spec, epochs=self.epochs, lf=self.lf)
            if self.main:
                print(f"--time {self.config.time:g} h: {elapsed / done:.0f} s per epoch, planning {self.epochs} epochs")

    def _save_interrupted(self, epoch: int) -> None:
        """Write last.pt of the epoch that a stop request cut short, then end the run with RunInterrupted.

        The checkpoint holds the weights reached so far and says the epoch is partial, so --resume
        starts that epoch again from them.
        """
        if self.main:
            save_checkpoint({**self._checkpoint(epoch, final=False), "partial_epoch": True}, self.wdir / "last.pt")
        barrier()  # the others leave only once last.pt is on disk
        # under torchrun a process may stop because another one was signalled
        signame = getattr(self.stop, "requested", None) or "a stop request of another process"
        code = 128 + signal.Signals[signame].value if signame in signal.Signals.__members__ else 1
        if not self.main:  # rank 0 reports the run; one short line per other process
            raise RunInterrupted(f"rank {self.dist.rank}: stopped by {signame} with the job", exit_code=code)
        again = "`torchrun ... train.py --resume`" if self.dist.enabled else "`python train.py --resume`"
        raise RunInterrupted(f"stopped by {signame} during epoch {epoch + 1}/{self.epochs}; "
                             f"{self.wdir / 'last.pt'} saved; {again} continues the run", exit_code=code)

    def _validate_best(self) -> dict:
        """Validate best.pt with plots (confusion matrix, PR curves, AP by size) in the run folder."""
        best = self.wdir / "best.pt"
        if not best.exists():
            return {}
        from utils.checkpoint import load_model
        from utils.eval_output import BatchPlotter, print_results, save_plots
        from utils.evaluation import evaluate

        model, _ = load_model(best, self.device)
        print(f"\nValidating {best}...")
        result = evaluate(model, self.val_loader, self.names, coco_gt=self.data.get("val_json"),
                          area_ranges=self.area_ranges,
                          callback=None if self.config.noplots else BatchPlotter(self.save_dir, self.names))
        print_results(result, self.names)
        if not self.config.noplots:
            save_plots(result, self.names, self.save_dir)
        return result.as_dict()

    def _save(self, epoch: int, final: bool, improved: bool) -> None:
        if self.config.nosave and not final:
            return
        ckpt = self._checkpoint(epoch, final)
        save_checkpoint(ckpt, self.wdir / "last.pt")
        if improved:
            save_checkpoint({**ckpt, "optimizer": None, "train_model": None, "sr_discriminator": None},
                            self.wdir / "best.pt")


def _float_state(model: torch.nn.Module) -> dict:
    """A detached float32 copy of a state_dict on the CPU (portable, weights_only-loadable)."""
    return {k: (v.detach().float().cpu().clone() if v.dtype.is_floating_point else v.detach().cpu().clone())
            for k, v in model.state_dict().items()}
