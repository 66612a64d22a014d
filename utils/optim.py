"""Optimizer with YOLOv5's parameter groups, learning-rate schedules and warmup."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from utils.errors import ConfigError

OPTIMIZERS = ("auto", "SGD", "Adam", "AdamW")


def resolve_auto_optimizer(name: str, lr0: float, momentum: float, iterations: int, nc: int):
    """``auto``: SGD with the hyp values for long schedules, AdamW for short ones.

    SGD at lr0 = 0.01 needs thousands of optimizer steps; a short run (under 10,000 steps, e.g.
    a small dataset or a quick experiment) learns much faster with AdamW at a small lr, as in
    ultralytics. Returns (name, lr, momentum).
    """
    if name != "auto":
        return name, lr0, momentum
    if iterations > 10000:
        return "SGD", lr0, momentum
    return "AdamW", round(0.002 * 5 / (4 + nc), 6), 0.9


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


def warmup_step(optimizer, ni: int, nw: int, epoch: int, lf, hyp: dict, nbs: int, batch_size: int) -> int:
    """Warm up lr and momentum over the first ``nw`` iterations; returns the accumulation count.

    Bias lr falls from warmup_bias_lr to its scheduled value while the others rise from 0, and the
    number of batches accumulated per optimizer step grows from 1 to nbs / batch_size.
    """
    accumulate = max(round(nbs / batch_size), 1)
    if ni > nw:
        return accumulate
    xi = [0, nw]
    accumulate = max(1, int(np.interp(ni, xi, [1, nbs / batch_size]).round()))
    for j, g in enumerate(optimizer.param_groups):
        start = hyp["warmup_bias_lr"] if j == 2 else 0.0
        g["lr"] = float(np.interp(ni, xi, [start, g["initial_lr"] * lf(epoch)]))
        if "momentum" in g:
            g["momentum"] = float(np.interp(ni, xi, [hyp["warmup_momentum"], hyp["momentum"]]))
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
