"""Anchor-based YOLO detection head for any number of levels (P2-P5, P3-P5, P2-P6 ...)."""

from __future__ import annotations

import math

import torch
from torch import nn

from models.registry import register


def default_anchors(strides: list[int], na: int = 3) -> list[list[float]]:
    """Generic anchors when a YAML gives only a count: ``na`` boxes of about 2-8 strides per level.

    Used as a starting point for AutoAnchor; returns one flat ``[w0, h0, w1, h1, ...]`` list per level.
    """
    out = []
    for s in strides:
        base = [(1.25, 1.6), (2.0, 3.75), (4.1, 2.9)][:na]
        out.append([v * s for wh in base for v in wh])
    return out


@register
class Detect(nn.Module):
    """Per-level 1x1 conv predicting ``na * (5 + nc)`` values per cell.

    Args:
        c1: input channels of each level, small stride first.
        nc: number of classes.
        anchors: per level a flat list ``[w0, h0, w1, h1, ...]`` in input pixels, or an int
            (anchors per level) to start from :func:`default_anchors` (AutoAnchor refines them).

    ``forward`` returns raw outputs, a list of (B, na, ny, nx, 5 + nc) tensors;
    ``decode`` turns them into (B, N, 5 + nc) rows ``[cx, cy, w, h (input px), obj, cls...]``.
    """

    multi_input = True

    def __init__(self, c1: list[int], nc: int = 80, anchors: list | int = 3):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(c1)
        if isinstance(anchors, int):
            anchors = default_anchors([2 ** (i + 3) for i in range(self.nl)], anchors)
        if len(anchors) != self.nl:
            raise ValueError(f"Detect has {self.nl} inputs but {len(anchors)} anchor levels")
        self.na = len(anchors[0]) // 2
        a = torch.tensor(anchors, dtype=torch.float32).view(self.nl, self.na, 2)
        self.register_buffer("anchors", a)  # (nl, na, 2) w, h in input pixels
        self.register_buffer("stride", torch.zeros(self.nl))  # set by DetectionModel
        self.m = nn.ModuleList(nn.Conv2d(c, self.no * self.na, 1) for c in c1)
        self.out_channels = self.no * self.na

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, x in enumerate(xs):
            b, _, ny, nx = x.shape
            y = self.m[i](x).view(b, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2)
            out.append(y.contiguous())  # (b, na, ny, nx, no)
        return out

    def decode(self, raw: list[torch.Tensor]) -> torch.Tensor:
        """Raw level outputs -> (B, N, 5 + nc): xywh in input pixels, sigmoid scores."""
        z = []
        for i, p in enumerate(raw):
            b, na, ny, nx, no = p.shape
            yv, xv = torch.meshgrid(torch.arange(ny, device=p.device, dtype=p.dtype),
                                    torch.arange(nx, device=p.device, dtype=p.dtype), indexing="ij")
            grid = torch.stack((xv, yv), 2).view(1, 1, ny, nx, 2) - 0.5
            anchor = self.anchors[i].to(p.dtype).view(1, na, 1, 1, 2)
            s = p.sigmoid()
            xy = (s[..., :2] * 2 + grid) * self.stride[i]
            wh = (s[..., 2:4] * 2) ** 2 * anchor
            z.append(torch.cat((xy, wh, s[..., 4:]), -1).view(b, -1, no))
        return torch.cat(z, 1)

    @torch.no_grad()
    def initialize_biases(self, class_freq: torch.Tensor | None = None) -> None:
        """Start objectness near 8 objects per 640x640 image and classes near uniform (YOLOv5)."""
        for conv, s in zip(self.m, self.stride.tolist()):
            b = conv.bias.view(self.na, -1)
            b[:, 4] += math.log(8 / (640 / s) ** 2)
            if class_freq is None:
                b[:, 5:] += math.log(0.6 / (self.nc - 0.99999))
            else:
                b[:, 5:] += torch.log(class_freq / class_freq.sum())
            conv.bias = nn.Parameter(b.view(-1), requires_grad=True)
