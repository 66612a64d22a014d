"""One training epoch: forward, loss, accumulated optimizer steps, EMA, progress bar.

What is fixed for the whole run travels in a frozen :class:`RunSpec` built once by the Trainer;
what changes from epoch to epoch (the epoch index, the iteration of the last optimizer step) is
passed to :func:`train_one_epoch` explicitly and the new value comes back in its result.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils.errors import TrainingError
from utils.optim import Warmup, warmup_step


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


@dataclass
class EpochResult:
    """What an epoch hands back: logged means and the iteration of its last optimizer step."""

    stats: dict[str, float]
    last_opt_step: int


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
    epoch by :meth:`as_dict`, so accumulating them costs no host synchronisation.
    """

    def __init__(self, device: torch.device):
        self.n, self.loss = 0, torch.zeros(3, device=device)
        self.fdl_ratio, self.fdl_gain = torch.zeros((), device=device), torch.zeros((), device=device)

    def add(self, items: torch.Tensor, extras: dict) -> None:
        n = self.n
        self.loss = (self.loss * n + items.detach()) / (n + 1)
        self.fdl_ratio = (self.fdl_ratio * n + extras["fdl_ratio"]) / (n + 1)
        self.fdl_gain = (self.fdl_gain * n + extras["fdl_gain"]) / (n + 1)
        self.n = n + 1

    def as_dict(self, stitched_fraction: float) -> dict[str, float]:
        box, obj, cls = self.loss.tolist()
        return {"train/box_loss": box, "train/obj_loss": obj, "train/cls_loss": cls,
                "fdl/ratio": float(self.fdl_ratio), "fdl/gain": float(self.fdl_gain),
                "stitch/fraction": stitched_fraction}


def _sync_free(device: torch.device) -> bool:
    """Whether to defer the non-finite check to optimizer steps (a read-back stalls a GPU queue).

    On the CPU every op has already run when it returns, so checking each loss costs nothing and
    raises before the bad backward pass.
    """
    return device.type != "cpu"


class _NonFiniteWatch:
    """Remembers the first non-finite loss of an epoch on the device; :meth:`check` raises it.

    ``note`` queues a few device ops (no host read); ``check`` reads one value back. The engine
    checks before every optimizer step, so weights never take a step computed from a bad loss.
    """

    def __init__(self, device: torch.device):
        self.batch = torch.full((), -1, dtype=torch.long, device=device)  # -1: none seen
        self.value = torch.zeros((), device=device)

    def note(self, loss: torch.Tensor, i: int) -> None:
        v = loss.detach().float().sum()  # the loss may be (1,): a 0-d value, nan/inf preserved
        first = ~torch.isfinite(v) & (self.batch < 0)
        self.batch = torch.where(first, i, self.batch)
        self.value = torch.where(first, v, self.value)

    def check(self, epoch: int) -> None:
        i = int(self.batch)
        if i >= 0:
            raise TrainingError(f"loss is {float(self.value)} at epoch {epoch}, batch {i}; "
                                "lower lr0 or check labels")


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
                    last_opt_step: int, on_batch: Callable | None = None) -> EpochResult:
    """Train for one pass over ``loader`` (a StitchingLoader yielding 5-tuples).

    Iteration ``ni = i + len(loader) * epoch`` counts from the start of the run; an optimizer step
    happens once ``ni - last_opt_step`` reaches the (warming-up) accumulation count.
    ``on_batch(ni, imgs, targets, paths)`` is called after each iteration when given.

    Returns epoch means 'train/box_loss', 'train/obj_loss', 'train/cls_loss', 'fdl/ratio',
    'fdl/gain', 'stitch/fraction', and the iteration of the last optimizer step.
    Raises TrainingError on a non-finite loss or a loader with no batches.
    """
    model.train()
    nb, means, rng = len(loader), _RunningMeans(spec.device), random.Random(spec.seed + epoch)
    watch, defer = _NonFiniteWatch(spec.device), _sync_free(spec.device)
    pbar = tqdm(enumerate(loader), total=nb, bar_format="{l_bar}{bar:10}{r_bar}")
    optimizer.zero_grad()
    for i, (imgs, targets, paths, _, stitched) in pbar:
        ni = i + nb * epoch
        accumulate = warmup_step(optimizer, ni, spec.warmup, spec.lf(epoch))
        imgs = imgs.to(spec.device, non_blocking=True).float() / 255
        if spec.multi_scale:
            imgs = multi_scale(imgs, spec.imgsz, spec.grid, rng)
        with torch.autocast(spec.device.type, enabled=spec.amp):
            # CPU targets: the loss moves them itself after reading their sizes on the host
            loss, items, extras = compute_loss(model(imgs), targets)
        watch.note(loss, i)
        step = ni - last_opt_step >= accumulate
        if not defer:
            watch.check(epoch)  # CPU: before the backward pass, at no cost
        scaler.scale(loss).backward()
        if step:
            if defer:
                watch.check(epoch)  # GPU: after the backward is queued, so one stall serves both
            _optimizer_step(model, optimizer, scaler, ema)
            last_opt_step = ni
        loader.feedback = extras["fdl_ratio"]  # a device tensor; the Stitcher reads it only if enabled
        means.add(items, extras)
        if i % PBAR_EVERY == 0 or i == nb - 1:
            pbar.set_description(_describe(means, epoch, spec.epochs, targets.shape[0], imgs.shape[-1], stitched))
        if on_batch is not None:
            on_batch(ni, imgs, targets, paths)
    watch.check(epoch)  # losses after the last step were backpropagated but never stepped
    if means.n == 0:
        raise TrainingError("the training loader produced no batches; check the train split")
    return EpochResult(means.as_dict(float(getattr(loader, "stitched_fraction", 0.0))), last_opt_step)
