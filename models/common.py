"""Convolutional building blocks of the YOLOv5-style graph.

Every block is registered so model YAMLs can name it, takes its input channels ``c1`` first
and exposes ``out_channels`` (see models/registry.py for the contract).
"""

from __future__ import annotations

import torch
from torch import nn

from models.registry import register


@torch.no_grad()
def fuse_conv_and_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """Return a Conv2d with bias equivalent to conv followed by bn in eval mode."""
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, conv.groups, bias=True).to(conv.weight.device)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_(bn.bias + (conv_bias - bn.running_mean) * scale)
    return fused.requires_grad_(False)


def autopad(k: int, p: int | None = None, d: int = 1) -> int:
    """Padding that keeps the spatial size for stride 1 ('same' padding)."""
    if p is None:
        p = (d * (k - 1) + 1) // 2
    return p


@register
class Conv(nn.Module):
    """Conv2d -> BatchNorm2d -> SiLU. (B, c1, H, W) -> (B, c2, H/s, W/s)."""

    width_args = (0,)

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int | None = None,
                 g: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p), groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU(inplace=True) if act else nn.Identity()
        self.out_channels = c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def fuse(self) -> None:
        """Fold the BatchNorm into the conv (eval-mode equivalent, faster inference)."""
        if hasattr(self, "bn"):
            self.conv = fuse_conv_and_bn(self.conv, self.bn)
            delattr(self, "bn")
            self.forward = self.forward_fused

    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """Forward after :meth:`fuse` folded BN into the conv."""
        return self.act(self.conv(x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 convs with an optional residual connection (same channels in and out)."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2
        self.out_channels = c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


@register
class C3(nn.Module):
    """CSP block with 3 convs and ``n`` bottlenecks (YOLOv5's C3)."""

    width_args = (0,)
    repeat_arg = True

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1,
                 e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = self._make_blocks(c_, n, shortcut, g)
        self.out_channels = c2

    def _make_blocks(self, c_: int, n: int, shortcut: bool, g: int) -> nn.Module:
        """The inner blocks; subclasses (e.g. a transformer C3) override only this."""
        return nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


@register
class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained max-pools of size k, concatenated."""

    width_args = (0,)

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)
        self.out_channels = c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


@register
class Concat(nn.Module):
    """Concatenate a list of feature maps along ``dim`` (channels by default)."""

    multi_input = True

    def __init__(self, c1: list[int], dim: int = 1):
        super().__init__()
        self.d = dim
        self.out_channels = sum(c1)

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)


@register
class Identity(nn.Module):
    """Pass the input through unchanged; rename any single-input row to this to ablate it.

    Extra arguments of the row it replaces are accepted and ignored, so only the module name
    has to change in the YAML.
    """

    def __init__(self, c1: int, *args, **kwargs):
        super().__init__()
        self.out_channels = c1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@register
class Upsample(nn.Upsample):
    """``nn.Upsample`` with the registry contract: ``[None, 2, 'nearest']`` rows as in YOLOv5."""

    def __init__(self, c1: int, size=None, scale_factor: float | None = 2, mode: str = "nearest"):
        super().__init__(size=size, scale_factor=scale_factor, mode=mode)
        self.out_channels = c1
