"""Model summary: layers, parameters and GFLOPs at a given image size."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_gflops(model: nn.Module, imgsz: int = 640) -> float:
    """GFLOPs of one forward pass at (1, 3, imgsz, imgsz), counting a multiply-add as 2 FLOPs."""
    p = next(model.parameters())
    x = torch.zeros(1, 3, imgsz, imgsz, device=p.device, dtype=p.dtype)
    training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(training)
    return counter.get_total_flops() / 1e9


def model_summary(model: nn.Module, imgsz: int = 640, verbose: bool = False) -> str:
    """Return (and print) ``name: N layers, P parameters, G GFLOPs`` plus a table when verbose."""
    lines = []
    if verbose:
        lines.append(f"{'':>3}{'from':>18}{'n':>3}{'params':>10}  {'module':<12}")
        for m in model.model:
            n = len(m) if isinstance(m, nn.Sequential) else 1
            np_ = sum(p.numel() for p in m.parameters())
            lines.append(f"{m.i:>3}{str(m.f):>18}{n:>3}{np_:10.0f}  {m.type:<12}")
    n_p = sum(p.numel() for p in model.parameters())
    n_l = len(list(model.modules()))
    name = model.yaml.get("yaml_file", "model")
    lines.append(f"{name}: {n_l} layers, {n_p:,} parameters, {count_gflops(model, imgsz):.1f} GFLOPs at {imgsz}")
    text = "\n".join(lines)
    print(text)
    return text
