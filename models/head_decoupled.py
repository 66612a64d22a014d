"""Anchor-free decoupled detection head (box and class branches per level, DFL box regression).

Every grid cell centre of every level is one prediction point. The box branch predicts, for each
of the four distances from the point to the box sides (left, top, right, bottom), a distribution
over ``reg_max`` bins in stride units (distribution focal loss, Li et al. 2020, "Generalized Focal
Loss"); the distance is the distribution's expectation, so a level reaches up to
``(reg_max - 1) * stride`` pixels from its points. The class branch predicts ``nc`` logits. There
is no objectness and there are no anchors; training targets come from the task-aligned assigner
(utils/assign_tal.py) and the loss is utils/loss_decoupled.py.

``decode`` honours the same contract as the anchor head (models/head.py ``Detect.decode``), so NMS,
slicing, TTA, validation and export do not need to know which head ran.
"""

from __future__ import annotations

import torch
from torch import nn

from models.common import Conv
from models.head import candidate_logit, exporting, split_by_image
from models.registry import register


def grid_points(shapes: list[tuple[int, int]], strides, device=None,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Prediction points of all levels, in the order the head flattens them (level, row, column).

    ``strides``: one per level, floats or 0-d tensors (tensors keep a traced graph reading the
    stride buffer instead of Python constants). Returns (points (N, 2) [x, y] cell centres in input pixels,
    strides (N,)) with N = sum of ny * nx over the levels.
    """
    pts, strd = [], []
    for (ny, nx), s in zip(shapes, strides):
        ys = (torch.arange(ny, device=device, dtype=dtype) + 0.5) * s
        xs = (torch.arange(nx, device=device, dtype=dtype) + 0.5) * s
        yv, xv = torch.meshgrid(ys, xs, indexing="ij")
        pts.append(torch.stack((xv, yv), -1).view(-1, 2))
        strd.append((torch.ones_like(xv) * s).view(-1))  # ones_like: the traced shape stays dynamic
    return torch.cat(pts), torch.cat(strd)


def dfl_expectation(box_logits: torch.Tensor, reg_max: int) -> torch.Tensor:
    """(..., 4 * reg_max) per-side bin logits -> (..., 4) expected distances in stride units."""
    p = box_logits.unflatten(-1, (4, reg_max)).softmax(-1)
    bins = torch.arange(reg_max, device=p.device, dtype=p.dtype)
    return (p * bins).sum(-1)


def ltrb_to_xyxy(dist: torch.Tensor, points: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """Distances (..., N, 4) [l, t, r, b] in stride units around points (N, 2) px -> (..., N, 4) xyxy px."""
    d = dist * strides.unsqueeze(-1)
    return torch.cat((points - d[..., :2], points + d[..., 2:]), -1)


def _branch(c_in: int, c_mid: int, c_out: int) -> nn.Sequential:
    """Two 3x3 Conv blocks then a 1x1 prediction conv with bias."""
    return nn.Sequential(Conv(c_in, c_mid, 3), Conv(c_mid, c_mid, 3), nn.Conv2d(c_mid, c_out, 1))


@register
class DecoupledDetect(nn.Module):
    """Anchor-free head with separate box (DFL) and class branches on each input level.

    Args:
        c1: input channels of each level, small stride first (P2-P5, P3-P5 ... any count).
        nc: number of classes.
        reg_max: bins per side distance; distances span 0 .. reg_max - 1 strides.

    ``forward`` returns raw outputs, one (B, 4 * reg_max + nc, ny, nx) tensor per level (box bin
    logits for l, t, r, b, then class logits), the same in train and eval mode.
    ``decode`` turns them into (B, N, 5 + nc) rows ``[cx, cy, w, h (input px), 1.0, cls...]``;
    ``decode_candidates`` gives per image only the rows that can pass NMS at a threshold.
    """

    multi_input = True

    def __init__(self, c1: list[int], nc: int = 80, reg_max: int = 16):
        super().__init__()
        if reg_max < 2:
            raise ValueError(f"DecoupledDetect needs reg_max >= 2, got {reg_max}")
        self.nc, self.nl, self.reg_max = nc, len(c1), reg_max
        self.no = 4 * reg_max + nc  # channels of each raw output
        self.register_buffer("stride", torch.zeros(self.nl))  # set by DetectionModel
        # branch widths scale with the finest input but never starve the 4 * reg_max box outputs
        c_box = max(16, c1[0] // 4, 4 * reg_max)
        c_cls = max(c1[0], min(nc, 100))
        self.box = nn.ModuleList(_branch(c, c_box, 4 * reg_max) for c in c1)
        self.cls = nn.ModuleList(_branch(c, c_cls, nc) for c in c1)
        self.out_channels = self.no
        self._grid_cache: dict = {}

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.cat((self.box[i](x), self.cls[i](x)), 1) for i, x in enumerate(xs)]  # (b, no, ny, nx)

    def _grid(self, shapes: list[tuple[int, int]], device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Points and strides for these level shapes, cached except while tracing for export.

        A traced graph must compute the grid from the input shape (a cached tensor would become a
        constant and break dynamic-size ONNX).
        """
        if exporting():
            return grid_points(shapes, self.stride.to(dtype).unbind(0), device, dtype)
        strides = self.stride.tolist()
        key = (tuple(shapes), tuple(strides), str(device), dtype)
        if key not in self._grid_cache:
            if len(self._grid_cache) > 16:  # multi-scale training sees many sizes; keep it bounded
                self._grid_cache.clear()
            self._grid_cache[key] = grid_points(shapes, strides, device, dtype)
        return self._grid_cache[key]

    def flatten(self, raw: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw level outputs -> (box logits (B, N, 4 * reg_max), class logits (B, N, nc))."""
        b = raw[0].shape[0]
        y = torch.cat([p.reshape(b, self.no, -1) for p in raw], 2).transpose(1, 2)
        return y[..., : 4 * self.reg_max], y[..., 4 * self.reg_max:]

    def decode(self, raw: list[torch.Tensor]) -> torch.Tensor:
        """Raw level outputs -> (B, N, 5 + nc): xywh in input pixels, objectness 1.0, sigmoid scores.

        The constant objectness column keeps the anchor head's row layout (NMS multiplies it in).
        """
        box, cls = self.flatten(raw)
        points, strides = self._grid([tuple(p.shape[2:]) for p in raw], box.device, box.dtype)
        xyxy = ltrb_to_xyxy(dfl_expectation(box, self.reg_max), points, strides)
        xywh = torch.cat(((xyxy[..., :2] + xyxy[..., 2:]) / 2, xyxy[..., 2:] - xyxy[..., :2]), -1)
        return torch.cat((xywh, torch.ones_like(cls[..., :1]), cls.sigmoid()), -1)

    def decode_candidates(self, raw: list[torch.Tensor], conf_thres: float) -> list[torch.Tensor]:
        """Decode only the points that can pass NMS at ``conf_thres``: per image (n_i, 5 + nc).

        The objectness column is 1.0, so NMS keeps a point only if some class score exceeds
        conf_thres: points whose best class logit is below logit(conf_thres) are dropped before
        the DFL softmax and the box maths. Rows are those of :meth:`decode` minus the dropped ones,
        in the same order, so NMS returns the same detections.
        """
        shapes = [tuple(p.shape[2:]) for p in raw]
        points, strides = self._grid(shapes, raw[0].device, raw[0].dtype)  # (N, 2), (N,)
        thr, nbox, offset = candidate_logit(conf_thres), 4 * self.reg_max, 0
        rows, image = [], []
        for p, (ny, nx) in zip(raw, shapes):
            bi, yi, xi = (p[:, nbox:].amax(1) > thr).nonzero(as_tuple=True)  # sorted by (b, y, x)
            q = p[bi, :, yi, xi]  # (n, no)
            k = offset + yi * nx + xi  # flat point index, as in flatten()
            xyxy = ltrb_to_xyxy(dfl_expectation(q[:, :nbox], self.reg_max), points[k], strides[k])
            xywh = torch.cat(((xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]), 1)
            # contiguous: the sigmoid then runs on the same SIMD path as decode()'s (float32 results
            # of the vector and scalar exp can differ in the last bit)
            cls = q[:, nbox:].contiguous().sigmoid()
            rows.append(torch.cat((xywh, torch.ones_like(cls[:, :1]), cls), 1))
            image.append(bi)
            offset += ny * nx
        return split_by_image(torch.cat(rows), torch.cat(image), raw[0].shape[0])

    @torch.no_grad()
    def initialize_biases(self, class_freq: torch.Tensor | None = None) -> None:
        """Box bins start uniform (bias 1.0); class scores near 5 objects per 640x640 image per level.

        Tensor arithmetic on the strides (no ``.tolist()``) keeps this usable on the meta device.
        """
        for box, cls, s in zip(self.box, self.cls, self.stride):
            box[-1].bias.fill_(1.0)
            share = 1 / self.nc if class_freq is None else class_freq.to(s) / class_freq.sum()
            prior = 5 * share * (s / 640) ** 2  # expected objects of a class per cell of this level
            cls[-1].bias.copy_(torch.log(torch.as_tensor(prior, dtype=s.dtype).clamp(min=1e-12)).expand(self.nc))
