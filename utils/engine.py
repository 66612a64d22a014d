"""One training epoch: forward, loss, accumulated optimizer steps, EMA, progress bar.

What is fixed for the whole run travels in a frozen :class:`RunSpec` built once by the Trainer;
what changes from epoch to epoch (the epoch index, the iteration of the last optimizer step) is
passed to :func:`train_one_epoch` explicitly and the new value comes back in its result.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils.distributed import all_reduce_
from utils.errors import TrainingError
from utils.optim import Warmup, warmup_step
from utils.step_guard import MAX_NONFINITE_IN_A_ROW, StepGuard, Verdict

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSpec:
    """Settings of the training loop that do not change during a run (plain values only).

    Attributes:
        device: where images and targets are moved.
        epochs: total epochs of the run (for the progress bar).
        imgsz: nominal training image size (px); multi-scale varies around it.
        grid: largest model stride; multi-scale sizes are multiples of it.
        multi_scale: resize each batch to a random size in [0.5, 1.5] * imgsz.
        amp: mixed precision (CUDA only).
        warmup: lr / momentum / accumulation warmup (utils.optim.Warmup).
        lf: epoch -> lr factor of the schedule (utils.optim.lr_lambda).
        seed: multi-scale sizes of epoch e come from random.Random(seed + e), so a resumed run
            sees the sizes a fresh run would.
        world_size: processes of a DDP job (1 without torchrun).
        main: this process prints (the progress bar, warnings); rank 0 under DDP.
    """

    device: torch.device
    epochs: int
    imgsz: int
    grid: int
    warmup: Warmup
    lf: Callable[[float], float]
    multi_scale: bool = False
    amp: bool = False
    seed: int = 0
    world_size: int = 1
    main: bool = True


@dataclass
class EpochResult:
    """What an epoch hands back: logged means, the iteration of its last optimizer step, and
    whether a stop request (SIGTERM, SIGINT) ended it early."""

    stats: dict[str, float]
    last_opt_step: int
    stopped: bool = False


def multi_scale(imgs: torch.Tensor, imgsz: int, grid: int, rng: random.Random) -> torch.Tensor:
    """Resize a (B, 3, H, W) float batch so its long side is a random grid multiple in [0.5, 1.5] * imgsz.

    The long side is drawn uniformly from the multiples of ``grid`` inside that range (at least
    one grid); the short side keeps the aspect and is rounded up to a multiple of ``grid`` (the
    model needs sides divisible by its largest stride). Boxes are normalized, so targets stay valid.
    """
    lo = max(math.ceil(imgsz * 0.5 / grid), 1) * grid
    hi = max(math.floor(imgsz * 1.5 / grid) * grid, lo)
    sz = rng.randrange(lo, hi + grid, grid)
    sf = sz / max(imgs.shape[2:])
    if sf == 1:
        return imgs
    ns = [math.ceil(x * sf / grid) * grid for x in imgs.shape[2:]]
    return F.interpolate(imgs, size=ns, mode="bilinear", align_corners=False)


PBAR_EVERY = 10  # iterations between progress-bar refreshes (each reads the running means back)


class _RunningMeans:
    """Running means of the loss items (box, obj, cls) and the feedback-driven loss extras.

    They stay on the device (the extras may be 0-d device tensors) and are read back once per
    epoch by :meth:`as_dict`, so accumulating them costs no host synchronisation. A batch whose
    loss was not finite is left out (``weight`` 0), so one bad batch does not turn the epoch's
    means into nan.
    """

    def __init__(self, device: torch.device):
        self.n = torch.zeros((), device=device)
        self.loss = torch.zeros(3, device=device)
        self.fdl_ratio, self.fdl_gain = torch.zeros((), device=device), torch.zeros((), device=device)

    def add(self, items: torch.Tensor, extras: dict, weight: torch.Tensor | float = 1.0) -> None:
        w = torch.as_tensor(weight, dtype=self.loss.dtype, device=self.loss.device)
        n = self.n + w
        d = n.clamp(min=1)

        def mix(old, new):
            new = torch.as_tensor(new, dtype=self.loss.dtype, device=self.loss.device)
            return torch.where(w > 0, old + (new.detach() - old) / d, old)  # a skipped batch leaves it as is

        self.loss, self.fdl_ratio, self.fdl_gain = (mix(self.loss, items), mix(self.fdl_ratio, extras["fdl_ratio"]),
                                                    mix(self.fdl_gain, extras["fdl_gain"]))
        self.n = n

    def as_dict(self, stitched_fraction: float) -> dict[str, float]:
        box, obj, cls = self.loss.tolist()
        return {"train/box_loss": box, "train/obj_loss": obj, "train/cls_loss": cls,
                "fdl/ratio": float(self.fdl_ratio), "fdl/gain": float(self.fdl_gain),
                "stitch/fraction": stitched_fraction}


def _sync_free(device: torch.device) -> bool:
    """Whether to defer the non-finite check to optimizer steps (a read-back stalls a GPU queue).

    On the CPU every op has already run when it returns, so checking each loss costs nothing and
    a bad loss is caught before its backward pass. Deferred (CUDA), the backward pass of a bad
    loss runs, and the whole accumulated step it belongs to is dropped instead.
    """
    return device.type != "cpu"


def _agree_feedback(extras: dict, r_prev, compute_loss, loader, world_size: int) -> None:
    """Hand r_t to the Stitcher and the next loss call: the mean over the job, a non-finite r_t ignored.

    Every process must take the same Stitcher decision (a stitched iteration draws 4 batches), and
    the gain g_i should follow the job's feedback, not one process's share of it. A non-finite r_t
    (from a bad loss) keeps r_{t-1}, so a single nan does not poison every later gain.
    """
    r = torch.as_tensor(extras["fdl_ratio"]).detach().float()
    prev = torch.as_tensor(r_prev, dtype=r.dtype, device=r.device)
    r = torch.where(torch.isfinite(r), r, prev)
    if world_size > 1:
        r = all_reduce_(r.clone(), "mean")
    if hasattr(compute_loss, "r_prev"):
        compute_loss.r_prev = r
    loader.feedback = r  # a device tensor; the Stitcher reads it only if enabled


def _optimizer_step(model, optimizer, scaler, ema) -> None:
    """Unscale, clip (max norm 10, YOLOv5), step, clear gradients and update the EMA."""
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad()
    ema.update(model)


def _describe(means: _RunningMeans, epoch: int, epochs: int, inst: int, size: int, stitched: bool) -> str:
    """Progress-bar text; reads the running means back (one sync), so it is refreshed sparsely."""
    box, obj, cls = means.loss.tolist()
    return (f"{epoch + 1:>5}/{epochs}  box {box:.4f}  obj {obj:.4f}  cls {cls:.4f}  inst {inst:>4}  {size:>4}px"
            + ("  stitched" if stitched else ""))


def train_one_epoch(model, loader, optimizer, compute_loss, ema, scaler, *, spec: RunSpec, epoch: int,
                    last_opt_step: int, on_batch: Callable | None = None, aux_loss=None, stop=None,
                    guard: StepGuard | None = None) -> EpochResult:
    """Train for one pass over ``loader`` (a StitchingLoader yielding 5-tuples).

    Iteration ``ni = i + len(loader) * epoch`` counts from the start of the run; an optimizer step
    happens once ``ni - last_opt_step`` reaches the (warming-up) accumulation count.
    ``on_batch(ni, imgs, targets, paths)`` is called after each iteration when given. ``model``
    may be wrapped in DistributedDataParallel; ``ema`` then follows the wrapped model.

    A non-finite loss skips its step with a warning (:mod:`utils.step_guard`);
    ``MAX_NONFINITE_IN_A_ROW`` in a row raise TrainingError (pass the run's ``guard`` so a run of
    bad losses is counted across epoch boundaries). When ``stop.requested`` (a GracefulStop) is
    set, the epoch ends at the next check and the result says ``stopped``.
    ``aux_loss(imgs, targets, ni)`` (e.g. utils.sr_branch.SRBranch), when given, returns a loss
    added to the detection loss after the forward pass; its ``epoch_stats()`` join the result.

    Returns epoch means 'train/box_loss', 'train/obj_loss', 'train/cls_loss', 'fdl/ratio',
    'fdl/gain', 'stitch/fraction', and the iteration of the last optimizer step.
    Raises TrainingError on too many non-finite losses in a row or a loader with no batches.
    """
    model.train()
    nb, means, rng = len(loader), _RunningMeans(spec.device), random.Random(spec.seed + epoch)
    guard, defer, seen, stopped = guard or StepGuard(spec.device), _sync_free(spec.device), 0, False
    pbar = tqdm(enumerate(loader), total=nb, bar_format="{l_bar}{bar:10}{r_bar}", disable=not spec.main)
    optimizer.zero_grad()
    for i, (imgs, targets, paths, _, stitched) in pbar:
        ni, seen = i + nb * epoch, seen + 1
        accumulate = warmup_step(optimizer, ni, spec.warmup, spec.lf(epoch))
        imgs = imgs.to(spec.device, non_blocking=True).float() / 255
        if spec.multi_scale:
            imgs = multi_scale(imgs, spec.imgsz, spec.grid, rng)
        r_prev = getattr(compute_loss, "r_prev", 0.0)
        with torch.autocast(spec.device.type, enabled=spec.amp):
            # CPU targets: the loss moves them itself after reading their sizes on the host
            loss, items, extras = compute_loss(model(imgs), targets)
            if aux_loss is not None:
                loss = loss + aux_loss(imgs, targets.to(spec.device), ni)
        finite = guard.note(loss, i)
        step = ni - last_opt_step >= accumulate
        if not defer:  # CPU: decide before the backward pass, so a bad loss never reaches the gradients
            verdict = guard.poll(_stop_requested(stop))
            _check_run(verdict, guard, epoch, spec)
            if verdict.stop:
                stopped = True
                break
            if verdict.nonfinite:
                if hasattr(compute_loss, "r_prev"):
                    compute_loss.r_prev = r_prev  # the bad batch gives no feedback
                continue  # no backward, no step, no running means for this batch
        # DDP averages gradients over processes; the loss is a per-process sum (x batch), so scale
        # by the process count to keep the gradient of the global batch (as YOLOv5 does)
        scaler.scale(loss * spec.world_size).backward()
        if step:
            skipped = False
            if defer:  # CUDA: one read-back per optimizer step, before the weights move
                verdict = guard.poll(_stop_requested(stop))
                _check_run(verdict, guard, epoch, spec)
                skipped = verdict.nonfinite > 0
            if skipped:
                optimizer.zero_grad()  # the accumulated gradients hold the bad loss: drop the step
            else:
                _optimizer_step(model, optimizer, scaler, ema)
            last_opt_step = ni
            if defer and verdict.stop:
                stopped = True
                break
        _agree_feedback(extras, r_prev, compute_loss, loader, spec.world_size)
        means.add(items, extras, finite)
        if spec.main and (i % PBAR_EVERY == 0 or i == nb - 1):
            pbar.set_description(_describe(means, epoch, spec.epochs, targets.shape[0], imgs.shape[-1], stitched))
        if on_batch is not None:
            on_batch(ni, imgs, targets, paths)
    if not stopped:  # losses after the last step were backpropagated but never stepped; a late stop request
        verdict = guard.poll(_stop_requested(stop))
        _check_run(verdict, guard, epoch, spec)
        stopped = verdict.stop  # agreed, so every process leaves the run after the same epoch
    if seen == 0:
        raise TrainingError("the training loader produced no batches; check the train split")
    stats = means.as_dict(float(getattr(loader, "stitched_fraction", 0.0)))
    if aux_loss is not None:
        stats.update(aux_loss.epoch_stats())
    return EpochResult(stats, last_opt_step, stopped=stopped)


def _stop_requested(stop) -> bool:
    """Whether this process was asked to stop (``stop`` is a GracefulStop or None)."""
    return stop is not None and stop.requested is not None


def _check_run(verdict: Verdict, guard: StepGuard, epoch: int, spec: RunSpec) -> None:
    """Warn about skipped steps; raise TrainingError when the run has diverged."""
    if verdict.in_a_row >= MAX_NONFINITE_IN_A_ROW:
        raise TrainingError(f"{verdict.in_a_row} non-finite losses in a row (last: {guard.value_text()} at epoch "
                            f"{epoch}, batch {verdict.batch}); the run stops, last.pt keeps the last completed "
                            "epoch; lower lr0 or check labels")
    if verdict.nonfinite and spec.main:
        LOGGER.warning(f"WARNING: non-finite loss ({guard.value_text()}) at epoch {epoch}, batch {verdict.batch}: "
                       "optimizer step skipped")
