"""Stitcher: feedback-driven 2x2 tiling of four collated batches into one.

Chen et al., "Stitcher: Feedback-driven Data Provider for Object Detection", 2020. When the
small objects contributed little to the last loss (feedback ``r_t`` below ``tau``), the next
iteration is built from four collated batches: every image is downscaled by 2 and four of them
are tiled 2x2, so the batch keeps its shape (B, 3, H, W) but every object is half as wide and
half as tall. Stitching runs in the main process on collated tensors because DataLoader workers
cannot see the feedback of the training loop.

Target format everywhere in this file (YOLOv5 collate convention): float Tensor (N, 6), rows
``[batch_index, class, cx, cy, w, h]`` with cx..h normalized to [0, 1] by the batch W, H.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import torch

from utils.boxes import filter_boxes, xywh2xyxy, xyxy2xywh
from utils.data.augment import PAD_VALUE  # letterbox gray, also used for empty tiles
from utils.errors import ConfigError

# A halved box at least one output pixel wide and high still covers a pixel, so it is kept: the
# tiniest objects must stay labelled, not turn into background the loss learns as negatives.
MIN_BOX_PX = 1.0


def _pad_to(imgs: torch.Tensor, targets: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Letterbox-pad uint8 ``imgs`` (B,3,h0,w0) to (B,3,h,w), centred; return pixel xyxy targets.

    Returns (padded imgs (B,3,h,w) uint8, targets (N,6) ``[bi, cls, x1, y1, x2, y2]`` in pixels of
    the padded image).
    """
    b, c, h0, w0 = imgs.shape
    top, left = (h - h0) // 2, (w - w0) // 2
    if (h0, w0) != (h, w):
        out = imgs.new_full((b, c, h, w), PAD_VALUE)
        out[:, :, top:top + h0, left:left + w0] = imgs
        imgs = out
    t = targets.clone().float()
    if len(t):
        scale = t.new_tensor([w0, h0, w0, h0])
        t[:, 2:6] = xywh2xyxy(t[:, 2:6] * scale) + t.new_tensor([left, top, left, top])
    return imgs, t


def _halve(img_hwc: np.ndarray) -> np.ndarray:
    """Area-downscale one uint8 image (H, W, 3) by 2 (H, W even) -> uint8 (H/2, W/2, 3).

    cv2's INTER_AREA at an exact factor of 2 is the rounded 2x2 mean, so a uniform region keeps
    its value; on uint8 HWC data it is much faster than a float pooling in torch.
    """
    h, w = img_hwc.shape[:2]
    return cv2.resize(img_hwc, (w // 2, h // 2), interpolation=cv2.INTER_AREA).reshape(h // 2, w // 2, -1)


def stitch(batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Tile the images of 4 collated batches 2x2 at half size into one batch.

    Args:
        batches: 4 pairs ``(imgs, targets)``: imgs uint8 (B_k, 3, H_k, W_k) RGB, targets float (N_k, 6)
            ``[bi, cls, cx, cy, w, h]`` normalized by (W_k, H_k). Batches of different sizes are
            letterbox-padded to the largest H and W (rounded up to even).

    Returns:
        imgs: uint8 (ceil(sum B_k / 4), 3, H, W); with four equal batches that is (B, 3, H, W).
            Output image j holds images 4j..4j+3 of the concatenated batches, in the tiles
            top-left, top-right, bottom-left, bottom-right. Missing tiles are gray (PAD_VALUE).
        targets: float (M, 6) ``[bi, cls, cx, cy, w, h]`` normalized by the output (W, H); boxes are
            clipped to their tile and dropped when under ``MIN_BOX_PX`` (1) output pixel wide or high.
    """
    if len(batches) != 4:
        raise ValueError(f"stitch needs 4 batches, got {len(batches)}")
    h = max(int(im.shape[2]) for im, _ in batches)
    w = max(int(im.shape[3]) for im, _ in batches)
    h, w = h + h % 2, w + w % 2  # tiles are exactly half the output size
    n_out = (sum(int(im.shape[0]) for im, _ in batches) + 3) // 4
    th, tw = h // 2, w // 2
    # work in HWC numpy: cv2 resizes HWC, and tile writes are then contiguous row copies
    out = np.full((n_out, h, w, 3), PAD_VALUE, dtype=np.uint8)
    tgts_all, i = [], 0  # i: global image index across the 4 batches
    for imgs, targets in batches:
        imgs_p, t = _pad_to(imgs.cpu(), targets.cpu(), h, w)
        t[:, 0] += i
        tgts_all.append(t)
        for img in imgs_p.permute(0, 2, 3, 1).contiguous().numpy():
            j, k = divmod(i, 4)
            oy, ox = (k // 2) * th, (k % 2) * tw
            out[j, oy:oy + th, ox:ox + tw] = _halve(img)
            i += 1
    imgs_out = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    return imgs_out, _stitch_targets(torch.cat(tgts_all), th, tw)


def _stitch_targets(tgts: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    """Map pixel xyxy targets (N,6) of full-size images to the stitched output.

    ``tgts[:, 0]`` is the global image index i; image i goes to output 4j+k -> (j, tile k).
    Returns (M, 6) ``[j, cls, cx, cy, w, h]`` normalized by the output size (2*tw, 2*th).
    """
    if not len(tgts):
        return tgts.new_zeros((0, 6))
    gi = tgts[:, 0].long()
    j, k = gi // 4, gi % 4
    boxes = tgts[:, 2:6] / 2  # pixel xyxy in the tile
    # filter_boxes clips to the tile and drops boxes under 1 px; the row index rides along as "cls"
    # so batch index and class of the kept boxes can be recovered.
    boxes, keep = filter_boxes(boxes, torch.arange(len(tgts)), (th, tw), min_size=MIN_BOX_PX)
    keep = torch.as_tensor(keep).long()
    if not len(keep):
        return tgts.new_zeros((0, 6))
    boxes = torch.as_tensor(boxes, dtype=tgts.dtype)
    k = k[keep]
    offs = torch.stack([(k % 2) * tw, (k // 2) * th], 1).to(boxes.dtype).repeat(1, 2)
    xywh = xyxy2xywh(boxes + offs) / boxes.new_tensor([2 * tw, 2 * th, 2 * tw, 2 * th])
    return torch.cat([j[keep, None].to(tgts.dtype), tgts[keep, 1:2], xywh], 1)


class StitchingLoader:
    """Wrap a DataLoader; stitch 4 batches into one when the last feedback is below ``tau``.

    The loader must yield ``(imgs, targets, paths, shapes)`` (see utils/data/loader.py). Iterating
    yields ``(imgs, targets, paths, shapes, stitched)``. After each iteration the training loop
    sets ``loader.feedback = r_t`` (the small-object share of the last box loss); the next item is
    stitched when ``feedback < tau``. ``tau = 0`` disables stitching. If fewer than 4 batches
    remain in the epoch, the remaining ones are yielded unstitched. Stitched items carry the paths
    of the first image of each tile group and ``shapes = None``.

    Attributes:
        feedback: last r_t, or None before the first report (the first item is never stitched).
        stitched_fraction: stitched items / items yielded in the current (or last) epoch.
    """

    def __init__(self, loader: Iterable, tau: float) -> None:
        if tau < 0:
            raise ConfigError(f"stitch_tau must be >= 0, got {tau}")
        self.loader = loader
        self.tau = float(tau)
        self.feedback: float | None = None
        self.stitched_fraction = 0.0
        self._items = 0
        self._stitched = 0

    def __len__(self) -> int:
        """Upper bound on the items per epoch (stitched items consume 4 batches each)."""
        return len(self.loader)  # type: ignore[arg-type]

    def _want_stitch(self) -> bool:
        return self.tau > 0 and self.feedback is not None and float(self.feedback) < self.tau

    def _count(self, stitched: bool) -> None:
        self._items += 1
        self._stitched += int(stitched)
        self.stitched_fraction = self._stitched / self._items

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        self._items = self._stitched = 0
        self.stitched_fraction = 0.0
        it = iter(self.loader)
        pending: list[tuple] = []  # batches drawn for a stitch that could not be completed
        while True:
            if pending:
                self._count(False)
                yield (*pending.pop(0), False)
                continue
            if not self._want_stitch():
                batch = next(it, None)
                if batch is None:
                    return
                self._count(False)
                yield (*batch, False)
                continue
            group = [b for b in (next(it, None) for _ in range(4)) if b is not None]
            if len(group) < 4:
                pending = group  # end of epoch: yield what is left as normal batches
                if not pending:
                    return
                continue
            self._count(True)
            yield self._stitch_group(group)

    @staticmethod
    def _stitch_group(group: list[tuple]) -> tuple[Any, ...]:
        """Stitch 4 loader batches -> (imgs, targets, paths, None, True)."""
        imgs, targets = stitch([(b[0], b[1]) for b in group])
        all_paths = [p for b in group for p in b[2]]
        paths = tuple(all_paths[4 * j] for j in range(imgs.shape[0]))
        return imgs, targets, paths, None, True
