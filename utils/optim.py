"""Optimizer with YOLOv5's parameter groups, learning-rate schedules and warmup."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from utils.errors import ConfigError

OPTIMIZERS = ("auto", "SGD", "Adam", "AdamW")


def resolve_auto_optimizer(name: str, lr0: float, momentum: float, iterations: int, nc: int,
                           pretrained: bool = False):
    """``auto``: SGD with the hyp values for long schedules, AdamW at the hyp's lr0 for short ones.

    SGD at lr0 = 0.01 needs thousands of optimizer steps; a short run (under 10,000 steps, e.g.
    a small dataset or a quick experiment) learns much faster with AdamW. Its lr is the hyp's lr0
    (0.01 in the bundled hyps), not the ~0.001 that ultralytics' ``auto`` picks: training from
    scratch for 10 epochs at 640 px on HIT-UAV (47 optimizer steps), AdamW at 0.01 reached AP50
    0.171 against 0.089 at 0.00125, with 0.005 and 0.02 close to 0.01 and 0.04 falling off
    (benchmarks/vs_ultralytics.md, three seeds each). Fine-tuning from ``pretrained`` weights keeps
    ultralytics' small lr, 0.002 * 5 / (4 + nc): 0.01 was measured from scratch only, and a large
    lr can undo what the weights learned. Returns (name, lr, momentum); AdamW's beta1 is 0.9, the
    hyp momentum being SGD's.
    """
    if name != "auto":
        return name, lr0, momentum
    if iterations > 10000:
        return "SGD", lr0, momentum
    return "AdamW", round(0.002 * 5 / (4 + nc), 6) if pretrained else lr0, 0.9


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float):
    """Three groups: pg0 norm weights (no decay), pg1 other weights (decay), pg2 biases (no decay).

    Decaying BatchNorm scales or biases only shrinks them toward zero for no regularizing benefit.
    """
    norm_types = tuple(v for k, v in vars(nn).items() if "Norm" in k and isinstance(v, type))
    g_norm, g_weight, g_bias = [], [], []
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if pname == "bias":
                g_bias.append(p)
            elif isinstance(module, norm_types):
                g_norm.append(p)
            else:
                g_weight.append(p)
    if name == "SGD":
        opt = torch.optim.SGD(g_norm, lr=lr, momentum=momentum, nesterov=True)
    elif name == "Adam":
        opt = torch.optim.Adam(g_norm, lr=lr, betas=(momentum, 0.999))
    elif name == "AdamW":
        opt = torch.optim.AdamW(g_norm, lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    else:
        raise ConfigError(f"unknown optimizer '{name}'; choose one of {OPTIMIZERS}")
    opt.add_param_group({"params": g_weight, "weight_decay": weight_decay})
    opt.add_param_group({"params": g_bias, "weight_decay": 0.0})
    return opt


def lr_lambda(epochs: int, lrf: float, cosine: bool):
    """Epoch -> lr factor: linear from 1 to lrf, or a cosine from 1 to lrf (``--cos-lr``)."""
    if cosine:
        return lambda e: ((1 - math.cos(e * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return lambda e: (1 - e / epochs) * (1.0 - lrf) + lrf


def build_scheduler(optimizer: torch.optim.Optimizer, lf, start_epoch: int = 0) -> LambdaLR:
    """A LambdaLR (lr = initial_lr * lf(epoch)) positioned at the start of ``start_epoch``.

    On resume the optimizer state must be loaded first (it carries each group's initial_lr): the
    scheduler is then in the state a fresh run reaches after ``start_epoch`` steps, last_epoch and
    every group's lr included, so the next ``step()`` moves to ``start_epoch + 1`` as in a fresh run.
    """
    # LambdaLR with last_epoch = k - 1 takes one initial step to epoch k and sets the lrs for it.
    return LambdaLR(optimizer, lr_lambda=lf, last_epoch=start_epoch - 1)


@dataclass(frozen=True)
class Warmup:
    """Linear warmup of lr, momentum and gradient accumulation over the first ``iters`` iterations.

    Attributes:
        iters: warmup iterations (0 = no warmup).
        bias_lr: lr of the bias group at iteration 0 (SGD: hyp warmup_bias_lr; Adam/AdamW: 0).
        momentum: momentum at iteration 0 (hyp warmup_momentum; SGD only, Adam keeps its betas).
        final_momentum: momentum once warmed up (hyp momentum).
        accumulate: nbs / batch_size, batches per optimizer step once warmed up (>= 1 after rounding).
    """

    iters: int
    bias_lr: float
    momentum: float
    final_momentum: float
    accumulate: float

    @property
    def steady_accumulate(self) -> int:
        return max(round(self.accumulate), 1)


def step_scheduler(scheduler: LambdaLR) -> None:
    """Advance the per-epoch schedule. An epoch can end before its first optimizer step (accumulation
    longer than a tiny dataset, or AMP skipping an inf step); PyTorch then warns, but the schedule is right."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        scheduler.step()


def warmup_iterations(warmup_epochs: float, nb: int, epochs: int, minimum: int = 100) -> int:
    """Warmup length in iterations: ``max(round(warmup_epochs * nb), minimum)`` (YOLOv5).

    A floor of ``minimum`` keeps a tiny dataset (a few batches per epoch) from jumping to the full
    lr after one or two steps; the cap of ``(epochs - 1) * nb`` lets the last epoch run at its
    scheduled lr. ``warmup_epochs <= 0`` turns warmup off (0).
    """
    if warmup_epochs <= 0:
        return 0
    return min(max(round(warmup_epochs * nb), minimum), (epochs - 1) * nb)


def build_warmup(optimizer_name: str, hyp: dict, iters: int, nbs: int, batch_size: int) -> Warmup:
    """Warmup settings for ``optimizer_name`` (resolved, not 'auto') from hyp.

    SGD starts the bias lr high (warmup_bias_lr, YOLOv5); Adam and AdamW start it at 0 like the
    other groups, because warmup_bias_lr (0.1) is about 100 times their lr0 and would blow up the
    first steps (ultralytics does the same).
    """
    bias_lr = hyp["warmup_bias_lr"] if optimizer_name == "SGD" else 0.0
    return Warmup(iters, float(bias_lr), float(hyp["warmup_momentum"]), float(hyp["momentum"]), nbs / batch_size)


def warmup_step(optimizer: torch.optim.Optimizer, ni: int, warmup: Warmup, lr_factor: float) -> int:
    """Set lr and momentum for iteration ``ni``; returns the number of batches to accumulate.

    While ``ni <= warmup.iters`` the bias lr moves from warmup.bias_lr and the other lrs rise from
    0 to ``initial_lr * lr_factor`` (``lr_factor`` = lf(epoch) of the schedule), and accumulation
    grows from 1 to nbs / batch_size. Afterwards nothing is touched (the scheduler owns the lr).
    """
    if warmup.iters <= 0 or ni > warmup.iters:
        return warmup.steady_accumulate
    xi = [0, warmup.iters]
    accumulate = max(1, int(np.interp(ni, xi, [1, warmup.accumulate]).round()))
    for j, g in enumerate(optimizer.param_groups):
        start = warmup.bias_lr if j == 2 else 0.0  # group 2 holds the biases (build_optimizer)
        g["lr"] = float(np.interp(ni, xi, [start, g["initial_lr"] * lr_factor]))
        if "momentum" in g:
            g["momentum"] = float(np.interp(ni, xi, [warmup.momentum, warmup.final_momentum]))
    return accumulate


def freeze_layers(model: torch.nn.Module, freeze: list[int]) -> int:
    """Freeze parameters of graph rows: ``[10]`` = the first 10 rows, ``[0, 1, 2]`` = those rows.

    Returns the number of frozen parameter tensors.
    """
    rows = list(range(freeze[0])) if len(freeze) == 1 else freeze
    prefixes = tuple(f"model.{r}." for r in rows)
    n = 0
    for name, p in model.named_parameters():
        if name.startswith(prefixes):
            p.requires_grad_(False)
            n += 1
    return n
