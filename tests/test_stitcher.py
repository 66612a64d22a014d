"""Stitcher: pixel-exact box placement, shape, small-box dropping and the feedback loop."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from utils.data.stitcher import StitchingLoader, stitch

PAD_VALUE = 114  # the gray of letterbox padding and empty tiles (YOLOv5 convention)

H, W, B = 32, 48, 2


def _batch(seed: int, b: int = B, h: int = H, w: int = W) -> tuple[torch.Tensor, torch.Tensor]:
    """Black images with two filled rectangles each (even pixel coordinates) and their targets.

    Box j of an image lies in the j-th half of its width, so boxes never overlap; each box has
    its own gray value, stored in the class column so the box can be found after stitching.
    Returns imgs uint8 (b,3,h,w) and targets (n,6) [bi, cls, cx, cy, w, h] normalized.
    """
    g = torch.Generator().manual_seed(seed)

    def rnd(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi, (1,), generator=g))

    imgs = torch.zeros(b, 3, h, w, dtype=torch.uint8)
    rows = []
    for bi in range(b):
        for j in range(2):
            bw, bh = 2 * rnd(2, 6), 2 * rnd(2, 5)
            x1 = j * w // 2 + 2 * rnd(0, (w // 2 - bw) // 2 + 1)
            y1 = 2 * rnd(0, (h - bh) // 2 + 1)
            value = 10 + 12 * (seed * 2 * b + bi * 2 + j)
            imgs[bi, :, y1:y1 + bh, x1:x1 + bw] = value
            rows.append([bi, value, (x1 + bw / 2) / w, (y1 + bh / 2) / h, bw / w, bh / h])
    return imgs, torch.tensor(rows, dtype=torch.float32)


def test_stitched_boxes_land_on_their_pixels():
    batches = [_batch(s) for s in range(4)]
    imgs, targets = stitch(batches)
    assert imgs.shape == (B, 3, H, W) and imgs.dtype == torch.uint8
    assert len(targets) == sum(len(t) for _, t in batches)  # all boxes >= 4 px -> >= 2 px kept
    assert sorted(targets[:, 1].tolist()) == sorted(torch.cat([t for _, t in batches])[:, 1].tolist())
    for bi, value, cx, cy, bw, bh in targets.tolist():
        x1, x2 = (cx - bw / 2) * W, (cx + bw / 2) * W
        y1, y2 = (cy - bh / 2) * H, (cy + bh / 2) * H
        assert all(abs(v - round(v)) < 1e-4 for v in (x1, x2, y1, y2))  # even inputs -> whole pixels
        x1, x2, y1, y2 = round(x1), round(x2), round(y1), round(y2)
        patch = imgs[int(bi), :, y1:y2, x1:x2]
        assert patch.numel() > 0 and (patch == int(value)).all()
        assert int((imgs[int(bi)] == int(value)).sum()) == patch.numel()  # and nowhere else


def test_single_box_pixel_exact_and_tile_order():
    """Image i of the concatenated batches goes to output i // 4, tile i % 4 (TL, TR, BL, BR)."""
    batches = []
    for k in range(4):
        imgs = torch.zeros(1, 3, H, W, dtype=torch.uint8)
        imgs[0, :, 8:16, 4:12] = 200  # 8x8 box at x 4..12, y 8..16
        batches.append((imgs, torch.tensor([[0, k, 8 / W, 12 / H, 8 / W, 8 / H]])))
    out, t = stitch(batches)
    assert out.shape == (1, 3, H, W)
    assert t[:, 1].tolist() == [0, 1, 2, 3]
    for k in range(4):
        oy, ox = (k // 2) * H // 2, (k % 2) * W // 2
        cx, cy, bw, bh = (t[k, 2:] * torch.tensor([W, H, W, H])).tolist()
        assert (cx, cy, bw, bh) == (ox + 4, oy + 6, 4, 4)
        assert (out[0, :, oy + 4:oy + 8, ox + 2:ox + 6] == 200).all()  # the box, halved
    assert int((out == 200).sum()) == 4 * 3 * 16  # nothing else is lit


def test_small_boxes_dropped_and_batch_shape_kept():
    imgs = torch.zeros(2, 3, H, W, dtype=torch.uint8)
    tg = torch.tensor([[0, 0, 0.5, 0.5, 1 / W, 10 / H],   # 0.5 px wide after halving -> dropped
                       [1, 1, 0.5, 0.5, 4 / W, 4 / H]])   # 2 x 2 px -> kept
    out, t = stitch([(imgs, tg)] * 4)
    assert out.shape == (2, 3, H, W)
    assert len(t) == 4 and (t[:, 1] == 1).all()
    assert torch.allclose(t[:, 4] * W, torch.full((4,), 2.0))
    # images 1, 3, 5, 7 -> outputs 0, 0, 1, 1, tiles top-right (1) and bottom-right (3)
    assert t[:, 0].tolist() == [0, 0, 1, 1]
    assert torch.allclose(t[:, 2:4] * torch.tensor([W, H]), torch.tensor([[36.0, 8.0], [36.0, 24.0]] * 2))
    empty = stitch([(imgs, torch.zeros(0, 6))] * 4)[1]
    assert empty.shape == (0, 6)


@pytest.mark.parametrize("side, kept", [(3, True), (2, True), (1, False)])
def test_box_that_still_covers_a_pixel_after_halving_is_kept(side: int, kept: bool):
    """A side x side px box at (10, 10) becomes side/2 px: kept from 1 px up, dropped below."""
    imgs = torch.zeros(1, 3, H, W, dtype=torch.uint8)
    c = 10 + side / 2
    tg = torch.tensor([[0, 5, c / W, c / H, side / W, side / H]])
    _, t = stitch([(imgs, tg)] * 4)
    assert len(t) == (4 if kept else 0)
    if kept:
        wh = t[:, 4:6] * torch.tensor([W, H])
        assert torch.allclose(wh, torch.full((4, 2), side / 2))
        # tile k of output 0 is offset by (k % 2) * W/2, (k // 2) * H/2; the centre halves with the box
        cx = t[:, 2] * W - torch.tensor([0, W / 2, 0, W / 2])
        cy = t[:, 3] * H - torch.tensor([0, 0, H / 2, H / 2])
        assert torch.allclose(cx, torch.full((4,), c / 2)) and torch.allclose(cy, torch.full((4,), c / 2))


def test_different_sizes_are_letterboxed_to_the_largest():
    a = _batch(0)
    small = torch.zeros(B, 3, H - 8, W, dtype=torch.uint8)
    small[0, :, 0:4, 0:4] = 250
    b = (small, torch.tensor([[0, 250, 2 / W, 2 / (H - 8), 4 / W, 4 / (H - 8)]]))
    out, t = stitch([b, a, a, a])
    assert out.shape == (B, 3, H, W)
    # pad of 4 rows on top, halved to 2: the 4x4 box becomes 2x2 at y 2..4, x 0..2 of tile 0
    assert (out[0, :, 2:4, 0:2] == 250).all()
    assert (out[0, :, 0:2, 0:2] == PAD_VALUE).all()
    row = t[t[:, 1] == 250][0]
    assert torch.allclose(row[2:] * torch.tensor([W, H, W, H]), torch.tensor([1.0, 3.0, 2.0, 2.0]))


class _Toy(Dataset):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int):
        img = torch.full((3, 8, 8), i, dtype=torch.uint8)
        return img, torch.tensor([[0, 0, 0.5, 0.5, 0.5, 0.5]]), f"img{i}.jpg", ((8, 8), ((1.0, 1.0), (0, 0)))


def _collate(batch):
    imgs, labels, paths, shapes = zip(*batch)
    for i, lb in enumerate(labels):
        lb[:, 0] = i
    return torch.stack(imgs), torch.cat(labels), paths, shapes


def _loader(workers: int = 0) -> DataLoader:
    return DataLoader(_Toy(), batch_size=2, num_workers=workers, collate_fn=_collate)


def test_loader_stitches_only_below_tau():
    loader = StitchingLoader(_loader(), tau=0.5)
    flags, feedback = [], [0.9, 0.1, 0.9, 0.1, 0.9]  # stitch after every low feedback
    for i, (imgs, targets, paths, shapes, stitched) in enumerate(loader):
        flags.append(stitched)
        assert imgs.shape == (2, 3, 8, 8)
        if stitched:
            assert shapes is None and len(paths) == 2 and len(targets) == 8
            assert int(imgs[1, 0, 0, 0]) == int(paths[1][3:-4])  # first tile holds the named image
        loader.feedback = feedback[i] if i < len(feedback) else 0.9
    # 8 batches: N, N (fb .9), S (fb .1) uses 4, N, S would need 4 but only 1 left -> N
    assert flags == [False, False, True, False, False]
    assert abs(loader.stitched_fraction - 1 / 5) < 1e-9


def test_tau_zero_never_stitches_and_workers_supported():
    loader = StitchingLoader(_loader(workers=2), tau=0.0)
    n = 0
    for *_, stitched in loader:
        loader.feedback = 0.0
        assert not stitched
        n += 1
    assert n == 8 and loader.stitched_fraction == 0.0
    loader = StitchingLoader(_loader(workers=2), tau=0.3)
    loader.feedback = 0.0  # always low: every item is stitched
    flags = [s for *_, s in loader]
    assert flags == [True, True] and loader.stitched_fraction == 1.0
