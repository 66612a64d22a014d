"""One training epoch: forward, loss, accumulated optimizer steps, EMA, progress bar."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils.errors import TrainingError
from utils.optim import warmup_step


@dataclass
class EpochContext:
    """What train_one_epoch needs besides the model, data and optimizer (plain values only)."""

    epoch: int
    epochs: int
    device: torch.device
    nw: int  # warmup iterations
    lf: Callable[[float], float]  # lr schedule factor
    hyp: dict
    nbs: int = 64  # nominal batch size
    batch_size: int = 16
    imgsz: int = 640
    grid: int = 32  # largest stride: multi-scale sizes are multiples of it
    multi_scale: bool = False
    amp: bool = False
    last_opt_step: int = -1
    on_batch: Callable | None = None  # called as on_batch(ni, imgs, targets, paths)
    stats: dict = field(default_factory=dict)


def _multi_scale(imgs: torch.Tensor, imgsz: int, grid: int) -> torch.Tensor:
    """Resize the batch to a random size in [0.5, 1.5] * imgsz, a multiple of the grid."""
    sz = random.randrange(int(imgsz * 0.5), int(imgsz * 1.5) + grid) // grid * grid
    sf = sz / max(imgs.shape[2:])
    if sf == 1:
        return imgs
    ns = [math.ceil(x * sf / grid) * grid for x in imgs.shape[2:]]
    return F.interpolate(imgs, size=ns, mode="bilinear", align_corners=False)


def train_one_epoch(model, loader, optimizer, compute_loss, ema, scaler, ctx: EpochContext) -> dict:
    """Train for one pass over ``loader`` (a StitchingLoader yielding 5-tuples).

    Returns epoch means: 'train/box_loss', 'train/obj_loss', 'train/cls_loss', 'fdl/ratio',
    'fdl/gain', plus 'stitch/fraction' (share of stitched iterations).
    """
    model.train()
    nb = len(loader)
    mloss = torch.zeros(3, device=ctx.device)
    fdl_ratio = fdl_gain = 0.0
    pbar = tqdm(enumerate(loader), total=nb, bar_format="{l_bar}{bar:10}{r_bar}")
    optimizer.zero_grad()
    i = -1
    for i, (imgs, targets, paths, _, stitched) in pbar:
        ni = i + nb * ctx.epoch
        accumulate = warmup_step(optimizer, ni, ctx.nw, ctx.epoch, ctx.lf, ctx.hyp, ctx.nbs, ctx.batch_size)
        imgs = imgs.to(ctx.device, non_blocking=True).float() / 255
        if ctx.multi_scale:
            imgs = _multi_scale(imgs, ctx.imgsz, ctx.grid)
        with torch.autocast(ctx.device.type, enabled=ctx.amp):
            preds = model(imgs)
            loss, items, extras = compute_loss(preds, targets.to(ctx.device))
        if not torch.isfinite(loss):
            raise TrainingError(f"loss is {loss.item()} at epoch {ctx.epoch}, batch {i}; lower lr0 or check labels")
        scaler.scale(loss).backward()
        if ni - ctx.last_opt_step >= accumulate:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
            ema.update(model)
            ctx.last_opt_step = ni
        loader.feedback = extras["fdl_ratio"]
        mloss = (mloss * i + items) / (i + 1)
        fdl_ratio = (fdl_ratio * i + extras["fdl_ratio"]) / (i + 1)
        fdl_gain = (fdl_gain * i + extras["fdl_gain"]) / (i + 1)
        pbar.set_description(f"{ctx.epoch + 1:>5}/{ctx.epochs}  box {mloss[0]:.4f}  obj {mloss[1]:.4f}  "
                             f"cls {mloss[2]:.4f}  inst {targets.shape[0]:>4}  {imgs.shape[-1]:>4}px"
                             + ("  stitched" if stitched else ""))
        if ctx.on_batch is not None:
            ctx.on_batch(ni, imgs, targets, paths)
    if i < 0:
        raise TrainingError("the training loader produced no batches; check the train split")
    return {"train/box_loss": float(mloss[0]), "train/obj_loss": float(mloss[1]),
            "train/cls_loss": float(mloss[2]), "fdl/ratio": fdl_ratio, "fdl/gain": fdl_gain,
            "stitch/fraction": float(getattr(loader, "stitched_fraction", 0.0))}
