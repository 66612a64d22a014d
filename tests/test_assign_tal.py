"""Task-aligned assigner on hand-built cases: known points, known GT boxes, known predictions."""

import pytest
import torch

from utils.assign_tal import TaskAlignedAssigner, candidates


def _points(n: int, stride: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell centres of an n x n grid, row-major, written out by hand: (i + 0.5) * stride."""
    pts = [[(i + 0.5) * stride, (j + 0.5) * stride] for j in range(n) for i in range(n)]
    return torch.tensor(pts), torch.full((n * n,), stride)


def _iou(a, b) -> float:
    """IoU of two xyxy boxes given as plain lists."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


GT = [8.0, 8.0, 40.0, 24.0]  # 32 x 16 px; stride-8 centres inside: x 12, 20, 28, 36 and y 12, 20


def _shifted_predictions(points: torch.Tensor) -> torch.Tensor:
    """Each point predicts the GT box shifted by |x - 28| in x and |y - 20| in y.

    The point at (28, 20) predicts the GT exactly; its neighbours on that row predict it 8 px off.
    """
    dx = (points[:, 0] - 28).abs()
    dy = (points[:, 1] - 20).abs()
    return torch.tensor(GT) + torch.stack((dx, dy, dx, dy), 1)


def test_topk_inside_points_and_normalised_scores():
    points, strides = _points(8, 8.0)  # 64 x 64 px image
    preds = _shifted_predictions(points)[None]
    scores = torch.full((1, 64, 3), 0.5)
    assigner = TaskAlignedAssigner(topk=3, alpha=0.5, beta=6.0)
    tb, ts, fg, gt_idx = assigner(scores, preds, points, strides, torch.tensor([[2]]), torch.tensor([[GT]]),
                                  torch.tensor([[True]]))
    fg_xy = {tuple(p) for p in points[fg[0]].tolist()}
    assert fg_xy == {(28.0, 20.0), (20.0, 20.0), (36.0, 20.0)}
    # alignment 0.5^0.5 * IoU^6, divided by the best (IoU 1) and times the best IoU (1): IoU^6
    iou_side = _iou(GT, [GT[0] + 8, GT[1], GT[2] + 8, GT[3]])
    assert iou_side == pytest.approx(24 / 40)
    for n in fg[0].nonzero().view(-1).tolist():
        x = points[n, 0].item()
        expected = 1.0 if x == 28 else iou_side ** 6
        assert ts[0, n, 2].item() == pytest.approx(expected, rel=1e-4)
        assert ts[0, n, :2].abs().sum() == 0  # other classes stay 0
        assert tb[0, n].tolist() == GT
    assert ts[0, ~fg[0]].abs().sum() == 0 and tb[0, ~fg[0]].abs().sum() == 0
    assert (gt_idx == 0).all()


def test_point_claimed_by_two_gts_keeps_the_higher_iou():
    points = torch.tensor([[20.0, 20.0], [52.0, 20.0]])
    strides = torch.full((2,), 8.0)
    big = [0.0, 0.0, 64.0, 40.0]  # contains both points
    small = [10.0, 10.0, 30.0, 30.0]  # contains only the first
    preds = torch.tensor([[[10.0, 10.0, 30.0, 30.0], [40.0, 0.0, 64.0, 40.0]]])  # point 0 predicts `small`
    tb, ts, fg, gt_idx = TaskAlignedAssigner(topk=10)(
        torch.full((1, 2, 1), 0.8), preds, points, strides, torch.tensor([[0, 0]]),
        torch.tensor([[big, small]]), torch.tensor([[True, True]]))
    assert fg.tolist() == [[True, True]]
    assert gt_idx.tolist() == [[1, 0]]  # point 0: IoU 1 with small beats IoU 400/2560 with big
    assert tb[0, 0].tolist() == small and tb[0, 1].tolist() == big
    # each GT keeps one positive: its target score is its own IoU (960 / 2560 for the big box)
    assert ts[0, :, 0].tolist() == pytest.approx([1.0, _iou(big, [40.0, 0.0, 64.0, 40.0])], rel=1e-5)


def test_no_targets_and_padding_rows_assign_nothing():
    points, strides = _points(4, 8.0)
    scores, preds = torch.rand(2, 16, 2), torch.rand(2, 16, 4) * 32
    assigner = TaskAlignedAssigner()
    for labels, boxes, mask in ((torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool)),
                                (torch.zeros(2, 1, dtype=torch.long), torch.tensor([[GT], [GT]]), torch.zeros(2, 1, dtype=torch.bool))):
        tb, ts, fg, _ = assigner(scores, preds, points, strides, labels, boxes, mask)
        assert not fg.any() and ts.abs().sum() == 0 and tb.shape == (2, 16, 4) and ts.shape == (2, 16, 2)


def test_padding_row_in_one_image_does_not_leak():
    points, strides = _points(8, 8.0)
    preds = _shifted_predictions(points)[None].repeat(2, 1, 1)
    boxes = torch.tensor([[GT], [GT]])
    _, _, fg, _ = TaskAlignedAssigner(topk=3)(torch.full((2, 64, 1), 0.5), preds, points, strides,
                                              torch.zeros(2, 1, dtype=torch.long), boxes, torch.tensor([[True], [False]]))
    assert fg[0].sum() == 3 and fg[1].sum() == 0


def test_tiny_box_between_cell_centres_falls_back_to_centre_radius():
    points, strides = _points(8, 8.0)  # centres at 4, 12, 20, ...
    tiny = torch.tensor([[[13.0, 13.0, 15.0, 15.0]]])  # 2 x 2 px: no centre inside
    mask = torch.tensor([[True]])
    assert not candidates(points, strides, tiny, mask, radius=0).any()
    cand = candidates(points, strides, tiny, mask, radius=2.5)[0, 0]
    # centre (14, 14), radius 2.5 * 8 = 20 px: x and y in {4, 12, 20, 28}
    expected = {(x, y) for x in (4.0, 12.0, 20.0, 28.0) for y in (4.0, 12.0, 20.0, 28.0)}
    assert {tuple(p) for p in points[cand].tolist()} == expected
    preds = torch.cat((points - 3, points + 3), 1)[None]  # 6 x 6 boxes around each point
    _, ts, fg, _ = TaskAlignedAssigner(topk=4)(torch.full((1, 64, 1), 0.5), preds, points, strides,
                                               torch.zeros(1, 1, dtype=torch.long), tiny, mask)
    assert fg.sum() == 1  # only the point at (12, 12) overlaps the tiny box at all
    assert points[fg[0]].tolist() == [[12.0, 12.0]]
    assert ts[0, fg[0], 0].item() == pytest.approx(_iou([9, 9, 15, 15], [13, 13, 15, 15]), rel=1e-4)
    assert TaskAlignedAssigner(radius=0)(torch.full((1, 64, 1), 0.5), preds, points, strides,
                                         torch.zeros(1, 1, dtype=torch.long), tiny, mask)[2].sum() == 0


def test_candidates_cover_every_level():
    p8, s8 = _points(8, 8.0)
    p16, s16 = _points(4, 16.0)
    points, strides = torch.cat((p8, p16)), torch.cat((s8, s16))
    box = torch.tensor([[[0.0, 0.0, 32.0, 32.0]]])
    cand = candidates(points, strides, box, torch.tensor([[True]]))[0, 0]
    assert cand[:64].sum() == 16 and cand[64:].sum() == 4  # 4x4 stride-8 and 2x2 stride-16 centres
