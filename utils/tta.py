"""Test-time augmentation: predictions of flipped and downscaled copies of a batch, merged by NMS."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from utils.data.augment import PAD_VALUE

TTA_PASSES = ((1.0, False), (1.0, True), (0.83, False), (0.67, False))  # (scale, left-right flip)


def tta_predict(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run the image, its mirror, and 0.83 / 0.67 scales through ``model``.

    Each copy is shrunk and padded right/bottom to the model stride (so boxes need no shift); its
    boxes are divided by the scale and mirrored back. Returns (raw outputs of the plain pass,
    (B, N1 + ... + N4, 5 + nc) decoded predictions in ``x`` pixels) for one NMS over all passes.
    """
    h, w = x.shape[-2:]
    stride = int(model.stride.max())
    raw0, outs = None, []
    for scale, flip in TTA_PASSES:
        xi = x.flip(-1) if flip else x
        if scale != 1.0:
            sh, sw = int(h * scale), int(w * scale)
            xi = F.interpolate(xi, size=(sh, sw), mode="bilinear", align_corners=False)
            xi = F.pad(xi, (0, -sw % stride, 0, -sh % stride), value=PAD_VALUE / 255)
        raw = model(xi)
        raw0 = raw if raw0 is None else raw0
        y = model.detect.decode(raw)
        y[..., :4] /= scale
        if flip:
            y[..., 0] = w - y[..., 0]
        outs.append(y)
    return raw0, torch.cat(outs, 1)
