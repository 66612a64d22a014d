"""Feature super-resolution generator: stride-8 features in, stride-4 features out.

The generator of the SR branch (after Gu, Li, Wu, Jia, Chen, "Small Object Detection by Generative
and Discriminative Learning"): it produces for the P2 level the detail that the stride-4 backbone
features of a small object lack. At training time its output is pulled towards the features the
same network computes on the image upsampled 2x (utils/sr_branch.py); at inference it is an
ordinary layer of the graph, and nothing else of the branch exists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.common import Conv
from models.registry import register


class ResidualBlock(nn.Module):
    """Two 3x3 Conv blocks with a skip connection (the second without activation, as in SR nets)."""

    def __init__(self, c: int):
        super().__init__()
        self.cv1 = Conv(c, c, 3, 1)
        self.cv2 = Conv(c, c, 3, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x))


@register
class FeatureSR(nn.Module):
    """Residual blocks at stride 8, 2x sub-pixel upsampling, a 1x1 Conv; plus a nearest-upsampled skip.

    (B, c1, H, W) -> (B, c1, 2H, 2W). The output keeps the input's channels so it can be compared
    with the same layer's features on the 2x image (the training target). The skip makes the
    untrained generator a nearest-neighbour upsampler: the layers learn only the missing detail.
    The blocks run at ``e * c1`` channels and stride 8 to bound the cost (yolov5n-p2-sr, nc=4:
    6.0 GFLOPs at 640 against 4.9 for yolov5n-p2; generator and wider P2 fusion together).

    YAML row: ``[4, 1, FeatureSR, [n_blocks, e]]`` (channels are inferred from the input row).
    """

    def __init__(self, c1: int, n_blocks: int = 2, e: float = 0.5):
        super().__init__()
        if not isinstance(n_blocks, int) or n_blocks < 0:
            raise ValueError(f"FeatureSR n_blocks must be an integer >= 0, got {n_blocks!r}")
        if not 0 < e <= 4:
            raise ValueError(f"FeatureSR e (hidden width / input width) must be in (0, 4], got {e!r}")
        c_ = max(int(c1 * e), 8)
        self.reduce = Conv(c1, c_, 1, 1)
        self.blocks = nn.Sequential(*(ResidualBlock(c_) for _ in range(n_blocks)))
        # sub-pixel convolution (Shi et al. 2016): 4*c_ channels at stride 8 -> c_ channels at stride 4
        self.expand = nn.Conv2d(c_, 4 * c_, 3, 1, 1)
        self.shuffle = nn.PixelShuffle(2)
        self.out = Conv(c_, c1, 1, 1, act=False)
        self.out_channels = c1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        detail = self.out(F.silu(self.shuffle(self.expand(self.blocks(self.reduce(x))))))
        return F.interpolate(x, scale_factor=2.0, mode="nearest") + detail
