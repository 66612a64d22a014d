"""Attention and reorganisation blocks for small-object models.

Each block is registered for model YAMLs, takes its input channels ``c1`` first and reports
``out_channels`` (see models/registry.py). All attention blocks keep the feature map shape
(B, C, H, W), so any of them can be renamed to ``Identity`` in a YAML row to ablate it.

* SE: squeeze-and-excitation channel gate (Hu et al., 2018).
* CBAM: channel then spatial attention (Woo et al., 2018).
* CoordAtt: coordinate attention, gates factorised along H and W (Hou et al., 2021).
* ECA: efficient channel attention, a 1D conv across channels (Wang et al., 2020).
* SimAM: parameter-free energy-based attention (Yang et al., 2021).
* C3TR: a C3 whose bottlenecks are transformer layers (TPH-YOLOv5, Zhu et al., 2021).
* SpaceToDepth: YOLOv2 reorg / passthrough, (B, C, H, W) -> (B, 4C, H/2, W/2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.common import C3, Conv
from models.registry import register


def _hidden(c1: int, r: int, floor: int) -> int:
    """Reduced channel count c1 // r, but never below ``floor`` so narrow (scaled-n) layers keep capacity."""
    return max(c1 // r, min(floor, c1))


@register
class SE(nn.Module):
    """Squeeze-and-excitation: global average pool -> 1x1 bottleneck MLP -> sigmoid channel gate.

    (B, c1, H, W) -> (B, c1, H, W).
    """

    def __init__(self, c1: int, r: int = 16):
        super().__init__()
        c_ = _hidden(c1, r, 8)
        self.fc = nn.Sequential(nn.Conv2d(c1, c_, 1), nn.SiLU(), nn.Conv2d(c_, c1, 1))
        self.out_channels = c1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(F.adaptive_avg_pool2d(x, 1)))  # gate (B, c1, 1, 1)


class ChannelGate(nn.Module):
    """CBAM channel attention: a shared MLP on avg- and max-pooled descriptors, summed, sigmoid."""

    def __init__(self, c1: int, r: int = 16):
        super().__init__()
        c_ = _hidden(c1, r, 8)
        self.mlp = nn.Sequential(nn.Conv2d(c1, c_, 1, bias=False), nn.SiLU(), nn.Conv2d(c_, c1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1))
        return x * torch.sigmoid(a)  # a: (B, c1, 1, 1)


class SpatialGate(nn.Module):
    """CBAM spatial attention: k x k conv over the channel-wise mean and max maps, sigmoid."""

    def __init__(self, k: int = 7):
        super().__init__()
        if k % 2 == 0:
            raise ValueError(f"CBAM spatial kernel must be odd, got {k}")
        self.conv = nn.Conv2d(2, 1, k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.cat((x.mean(1, keepdim=True), x.amax(1, keepdim=True)), 1)  # (B, 2, H, W)
        return x * torch.sigmoid(self.conv(s))  # gate (B, 1, H, W)


@register
class CBAM(nn.Module):
    """Convolutional block attention module: channel gate, then spatial gate.

    (B, c1, H, W) -> (B, c1, H, W). ``r`` is the channel reduction, ``k`` the spatial kernel.
    """

    def __init__(self, c1: int, r: int = 16, k: int = 7):
        super().__init__()
        self.channel = ChannelGate(c1, r)
        self.spatial = SpatialGate(k)
        self.out_channels = c1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


@register
class CoordAtt(nn.Module):
    """Coordinate attention: pool along W and along H, shared 1x1 transform, two direction gates.

    Keeps the position along each axis, which a global pool would lose; that is what helps to
    localise small objects. (B, c1, H, W) -> (B, c1, H, W).
    """

    def __init__(self, c1: int, r: int = 32):
        super().__init__()
        c_ = _hidden(c1, r, 8)
        self.shared = Conv(c1, c_, 1)  # conv + BN + SiLU (the paper uses h-swish)
        self.conv_h = nn.Conv2d(c_, c1, 1)
        self.conv_w = nn.Conv2d(c_, c1, 1)
        self.out_channels = c1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        xh = x.mean(3, keepdim=True)  # (B, C, H, 1)
        xw = x.mean(2, keepdim=True).transpose(2, 3)  # (B, C, W, 1)
        y = self.shared(torch.cat((xh, xw), 2))  # (B, c_, H + W, 1)
        yh, yw = torch.split(y, [h, w], 2)
        ah = torch.sigmoid(self.conv_h(yh))  # (B, C, H, 1)
        aw = torch.sigmoid(self.conv_w(yw.transpose(2, 3)))  # (B, C, 1, W)
        return x * ah * aw


@register
class ECA(nn.Module):
    """Efficient channel attention: 1D conv of size k across the pooled channel vector.

    ``k=None`` picks the adaptive size of the paper, the odd number nearest |log2(c1) + 1| / 2.
    (B, c1, H, W) -> (B, c1, H, W).
    """

    def __init__(self, c1: int, k: int | None = None):
        super().__init__()
        if k is None:
            t = int(abs((math.log2(c1) + 1) / 2))
            k = t if t % 2 else t + 1
        self.k = k
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)
        self.out_channels = c1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.adaptive_avg_pool2d(x, 1).flatten(1).unsqueeze(1)  # (B, 1, C)
        y = self.conv(y).transpose(1, 2).unsqueeze(-1)  # (B, C, 1, 1)
        return x * torch.sigmoid(y)


@register
class SimAM(nn.Module):
    """Parameter-free attention: each activation is weighted by its inverse energy.

    A neuron that stands out from its channel's mean (a small bright object on a flat
    background) gets a low energy and so a high weight. (B, c1, H, W) -> (B, c1, H, W).
    """

    def __init__(self, c1: int, e_lambda: float = 1e-4):
        super().__init__()
        self.e_lambda = e_lambda
        self.out_channels = c1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = max(x.shape[2] * x.shape[3] - 1, 1)  # 1x1 maps: avoid dividing by zero
        d = (x - x.mean((2, 3), keepdim=True)).pow(2)
        y = d / (4 * (d.sum((2, 3), keepdim=True) / n + self.e_lambda)) + 0.5
        return x * torch.sigmoid(y)


class TransformerLayer(nn.Module):
    """Pre-norm transformer encoder layer on tokens (B, L, c): MHSA + MLP, both residual."""

    def __init__(self, c: int, heads: int, mlp_ratio: float = 2.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(c)
        self.attn = nn.MultiheadAttention(c, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(c)
        hidden = int(c * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(c, hidden), nn.SiLU(), nn.Linear(hidden, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TransformerBlock(nn.Module):
    """Transformer layers on a feature map (B, c, H, W) -> (B, c, H, W).

    Position information is learned as a depth-wise 3x3 conv added to the map before it is
    flattened (a conditional position encoding): unlike a fixed-size embedding table it works at
    every input size, which rectangular and multi-scale training need.
    """

    def __init__(self, c: int, heads: int, n: int):
        super().__init__()
        if c % heads:
            raise ValueError(f"C3TR: hidden channels {c} are not divisible by heads={heads}")
        self.pos = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.layers = nn.Sequential(*(TransformerLayer(c, heads) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x + self.pos(x)
        t = self.layers(x.flatten(2).transpose(1, 2))  # tokens (B, H*W, c)
        return t.transpose(1, 2).reshape(b, c, h, w)


@register
class C3TR(C3):
    """C3 with a transformer block in place of its bottlenecks (TPH-YOLOv5's C3TR).

    (B, c1, H, W) -> (B, c2, H, W); ``n`` transformer layers of ``heads`` heads on c2/2 channels.
    Self-attention is quadratic in H*W, so use it at a low-resolution level (P5). ``shortcut`` is
    accepted so a C3 row can be renamed to C3TR; the transformer layers are always residual.
    """

    width_args = (0,)
    repeat_arg = True

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, heads: int = 4):
        self._heads = heads  # read by _make_blocks, which C3.__init__ calls
        super().__init__(c1, c2, n=n, shortcut=shortcut)

    def _make_blocks(self, c_: int, n: int, shortcut: bool, g: int) -> nn.Module:
        return TransformerBlock(c_, self._heads, n)


@register
class SpaceToDepth(nn.Module):
    """YOLOv2 reorg (passthrough): move each block x block patch into channels.

    Channels are ordered as in ``torch.nn.functional.pixel_unshuffle`` (a fixed permutation of
    Darknet's reorg order; the next conv learns either equally).

    (B, c1, H, W) -> (B, c1 * block**2, H / block, W / block); no information is lost, unlike
    a strided conv or pooling, which matters for objects only a few pixels wide.
    """

    def __init__(self, c1: int, block: int = 2):
        super().__init__()
        self.block = block
        self.out_channels = c1 * block * block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, self.block)
