"""Anchor-based YOLO detection head for any number of levels (P2-P5, P3-P5, P2-P6 ...)."""

from __future__ import annotations

import math

import torch
from torch import nn

from models.registry import register

# Candidate thresholds sit this far (in logits) below logit(conf_thres): the prefilter must keep
# every row NMS would keep even when the sigmoid rounds up (fp16 rounding is ~1e-3 in logit units).
LOGIT_MARGIN = 0.05


def candidate_logit(conf_thres: float) -> float:
    """Raw-logit threshold whose survivors include every row with sigmoid(logit) > ``conf_thres``."""
    if conf_thres <= 0:
        return -math.inf
    if conf_thres >= 1:
        return math.inf
    return math.log(conf_thres / (1 - conf_thres)) - LOGIT_MARGIN


def exporting() -> bool:
    """True while tracing or exporting to ONNX: cached tensors would freeze into the graph as constants."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def split_by_image(rows: torch.Tensor, image: torch.Tensor, batch: int) -> list[torch.Tensor]:
    """Rows (n, k) with their image index (n,) -> ``batch`` tensors (n_i, k), each in input order.

    The sort is stable, so within an image rows keep the (level, anchor, y, x) order of the full
    decode and NMS sees them in the same order (ties in its sort resolve the same way).
    """
    order = torch.sort(image, stable=True).indices
    counts = torch.bincount(image, minlength=batch).tolist()
    return list(rows[order].split(counts))


def default_anchors(strides: list[int], na: int = 3) -> list[list[float]]:
    """Generic anchors when a YAML gives only a count: ``na`` boxes of about 2-8 strides per level.

    Used as a starting point for AutoAnchor; returns one flat ``[w0, h0, w1, h1, ...]`` list per level.
    """
    out = []
    for s in strides:
        base = [(1.25, 1.6), (2.0, 3.75), (4.1, 2.9)][:na]
        out.append([v * s for wh in base for v in wh])
    return out


def _make_grid(ny: int, nx: int, device, dtype) -> torch.Tensor:
    """(ny, nx, 2) [x, y] cell indices minus 0.5 (YOLOv5's xy = 2 * sigmoid - 0.5 + cell)."""
    yv, xv = torch.meshgrid(torch.arange(ny, device=device, dtype=dtype),
                            torch.arange(nx, device=device, dtype=dtype), indexing="ij")
    return torch.stack((xv, yv), 2) - 0.5


@register
class Detect(nn.Module):
    """Per-level 1x1 conv predicting ``na * (5 + nc)`` values per cell.

    Args:
        c1: input channels of each level, small stride first.
        nc: number of classes.
        anchors: per level a flat list ``[w0, h0, w1, h1, ...]`` in input pixels, or an int
            (anchors per level) to start from :func:`default_anchors` (AutoAnchor refines them).

    ``forward`` returns raw outputs, a list of (B, na, ny, nx, 5 + nc) tensors;
    ``decode`` turns them into (B, N, 5 + nc) rows ``[cx, cy, w, h (input px), obj, cls...]``;
    ``decode_candidates`` gives per image only the rows that can pass NMS at a threshold.
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
        self._grid_cache: dict = {}

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, x in enumerate(xs):
            b, _, ny, nx = x.shape
            y = self.m[i](x).view(b, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2)
            out.append(y.contiguous())  # (b, na, ny, nx, no)
        return out

    def _grid(self, i: int, ny: int, nx: int, device, dtype) -> torch.Tensor:
        """(ny, nx, 2) cell offsets [x - 0.5, y - 0.5] of level ``i``, cached except while exporting.

        A traced graph must build the grid from the input shape (a cached tensor would become a
        constant and break dynamic-size ONNX). Anchors are not cached: AutoAnchor and checkpoint
        loading rewrite them in place, and reading them is a view anyway.
        """
        if exporting():
            return _make_grid(ny, nx, device, dtype)
        cache = self.__dict__.setdefault("_grid_cache", {})  # models pickled before the cache existed
        key = (i, ny, nx, dtype, str(device))
        if key not in cache:
            if len(cache) > 32:  # multi-scale training sees many sizes; keep it bounded
                cache.clear()
            cache[key] = _make_grid(ny, nx, device, dtype)
        return cache[key]

    def decode(self, raw: list[torch.Tensor]) -> torch.Tensor:
        """Raw level outputs -> (B, N, 5 + nc): xywh in input pixels, sigmoid scores.

        The full, fixed-shape decode of every anchor (export and TTA need it); inference that
        thresholds right after should use :meth:`decode_candidates`.
        """
        z = []
        for i, p in enumerate(raw):
            b, na, ny, nx, no = p.shape
            grid = self._grid(i, ny, nx, p.device, p.dtype).view(1, 1, ny, nx, 2)
            anchor = self.anchors[i].to(p.dtype).view(1, na, 1, 1, 2)
            s = p.sigmoid()
            xy = (s[..., :2] * 2 + grid) * self.stride[i]
            wh = (s[..., 2:4] * 2) ** 2 * anchor
            z.append(torch.cat((xy, wh, s[..., 4:]), -1).view(b, -1, no))
        return torch.cat(z, 1)

    def decode_candidates(self, raw: list[torch.Tensor], conf_thres: float) -> list[torch.Tensor]:
        """Decode only the rows that can pass NMS at ``conf_thres``: per image (n_i, 5 + nc).

        NMS keeps a row only if obj > conf_thres (and obj * cls > conf_thres, which implies it),
        so rows whose objectness logit is below logit(conf_thres) are dropped before the sigmoid
        and box maths. Rows are those of :meth:`decode` (same values, same order) minus the
        dropped ones, so NMS returns the same detections.
        """
        thr = candidate_logit(conf_thres)
        rows, image = [], []
        for i, p in enumerate(raw):
            bi, ai, yi, xi = (p[..., 4] > thr).nonzero(as_tuple=True)  # sorted by (b, a, y, x)
            s = p[bi, ai, yi, xi].sigmoid()  # (n, no)
            grid = self._grid(i, p.shape[2], p.shape[3], p.device, p.dtype)[yi, xi]  # (n, 2)
            xy = (s[:, :2] * 2 + grid) * self.stride[i]
            wh = (s[:, 2:4] * 2) ** 2 * self.anchors[i].to(p.dtype)[ai]
            rows.append(torch.cat((xy, wh, s[:, 4:]), 1))
            image.append(bi)
        return split_by_image(torch.cat(rows), torch.cat(image), raw[0].shape[0])

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
