"""Small PyTorch helpers: device selection, seeding, EMA of weights, timing."""

from __future__ import annotations

import copy
import math
import os
import random
import time

import numpy as np
import torch
from torch import nn

from utils.errors import ConfigError


def select_device(device: str = "") -> torch.device:
    """'' (CUDA if available else CPU), 'cpu', '0' or 'cuda:0'. Raises ConfigError when unavailable."""
    device = str(device).strip().lower().replace("cuda:", "")
    if device in ("", "auto"):
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "mps":
        return torch.device("mps")
    first = device.split(",")[0]
    if not first.isdigit():
        raise ConfigError(f"invalid --device '{device}': use '', 'cpu', or a CUDA index such as 0")
    if not torch.cuda.is_available() or int(first) >= torch.cuda.device_count():
        raise ConfigError(f"--device {device} requested but CUDA device {first} is not available; use --device cpu")
    return torch.device(f"cuda:{first}")


def model_device(model: nn.Module) -> torch.device:
    """Where a model runs: its ``device`` attribute (exported models), else its first parameter's."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def init_seeds(seed: int = 0, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch RNGs (and optionally request deterministic kernels)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def time_sync() -> float:
    """time.time() after waiting for pending CUDA work, for honest timings."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.time()


class ModelEMA:
    """Exponential moving average of model weights with YOLOv5's warm-up of the decay.

    decay_t = decay * (1 - exp(-updates / tau)), so early updates follow the model closely.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000, updates: int = 0):
        self.ema = copy.deepcopy(model).eval()
        self.updates = updates
        self.decay = lambda x: decay * (1 - math.exp(-x / tau))
        for p in self.ema.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay(self.updates)
        msd = getattr(model, "module", model).state_dict()  # DDP wraps the model: same keys without "module."
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach(), alpha=1 - d)
