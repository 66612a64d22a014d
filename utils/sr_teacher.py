"""The high-resolution target of the SR branch: stride-8 features of the batch upsampled 2x.

A stride-8 layer run on an image upsampled 2x has one cell per 4x4 input pixels of the original,
the grid of the generator's stride-4 output: cell (i, j) of both covers original pixels
[4i, 4i + 4) x [4j, 4j + 4). The target is computed without gradient, optionally on a crop
(a window of the batch, the same for every image) to bound its cost.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
import torch.nn.functional as F

GEN_STRIDE = 4  # stride of the generated features (and of the target grid) in input pixels
WINDOW_ALIGN = 8  # crop corners and sides in input pixels: whole target cells, and a 2x crop whose sides the stride-8 layer divides


def upsample_2x(imgs: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, 2H, 2W), bilinear with half-pixel centres (no shift of the grid)."""
    return F.interpolate(imgs, scale_factor=2.0, mode="bilinear", align_corners=False)


@torch.no_grad()
def teacher_target(teacher: Callable[[torch.Tensor], torch.Tensor], imgs: torch.Tensor,
                   window: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """Stride-8 features of ``imgs`` (cropped to ``window``) upsampled 2x, without gradient.

    Args:
        teacher: (B, 3, 2h, 2w) image -> (B, C, h/4, w/4) features (a stride-8 layer).
        imgs: (B, 3, H, W) float images in [0, 1].
        window: (x0, y0, x1, y1) in input pixels, multiples of 8; None for the whole image.

    Returns:
        (B, C, h/4, w/4) float features aligned with ``crop_to_window(generated, window)``.
    """
    if window is not None:
        x0, y0, x1, y1 = window
        imgs = imgs[..., y0:y1, x0:x1]
    return teacher(upsample_2x(imgs)).float()


def crop_to_window(features: torch.Tensor, window: tuple[int, int, int, int] | None) -> torch.Tensor:
    """The cells of stride-4 features (B, C, H/4, W/4) inside ``window`` (input pixels, or None)."""
    if window is None:
        return features
    x0, y0, x1, y1 = (v // GEN_STRIDE for v in window)
    return features[..., y0:y1, x0:x1]


def choose_window(height: int, width: int, fraction: float, centres_xy: torch.Tensor,
                  rng: random.Random) -> tuple[int, int, int, int] | None:
    """A crop of ``fraction`` of each side, centred on a random one of ``centres_xy`` (or anywhere).

    Args:
        height, width: batch image size in input pixels (multiples of 8).
        fraction: crop side / image side; 0 or >= 1 means the whole image (returns None).
        centres_xy: (n, 2) candidate centres in input pixels (small objects); may be empty.
        rng: the branch's random generator (not the global one: training randomness stays put).

    Returns:
        (x0, y0, x1, y1) in input pixels, multiples of 8, inside the image; None for no crop.
    """
    if fraction <= 0 or fraction >= 1:
        return None
    cw = max(round(width * fraction / WINDOW_ALIGN), 1) * WINDOW_ALIGN
    ch = max(round(height * fraction / WINDOW_ALIGN), 1) * WINDOW_ALIGN
    if len(centres_xy):
        cx, cy = (float(v) for v in centres_xy[rng.randrange(len(centres_xy))])
    else:
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    x0 = _snap(cx - cw / 2, width - cw)
    y0 = _snap(cy - ch / 2, height - ch)
    return x0, y0, x0 + cw, y0 + ch


def _snap(start: float, max_start: int) -> int:
    """Round a window start down to the alignment and keep the window inside the image."""
    return int(min(max(start, 0), max_start) // WINDOW_ALIGN * WINDOW_ALIGN)
