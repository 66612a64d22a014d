import torch

from utils.assign import build_targets

ANCHORS = torch.tensor([[[1.0, 1.5], [2.0, 4.0], [4.0, 3.0]],
                        [[1.0, 2.0], [2.0, 1.5], [4.0, 3.5]]])  # (nl=2, na=3, 2) grid units
SHAPES = [(16, 16), (8, 8)]


def test_no_labels_gives_empty_assignments():
    tcls, tbox, indices, anch = build_targets(SHAPES, torch.zeros((0, 6)), ANCHORS)
    assert len(tcls) == 2
    for level in range(2):
        assert tcls[level].numel() == 0 and tbox[level].shape == (0, 4) and anch[level].shape == (0, 2)
        assert all(ix.numel() == 0 for ix in indices[level])


def test_centre_cell_and_two_neighbours_are_assigned():
    # a box centred at (5.3, 9.7) cells on the 16x16 grid, 2x3 cells: near the left and bottom borders
    t = torch.tensor([[0, 2, 5.3 / 16, 9.7 / 16, 2 / 16, 3 / 16]])
    tcls, tbox, indices, anch = build_targets(SHAPES, t, ANCHORS, anchor_t=4.0)
    b, a, gj, gi = indices[0]
    cells = {(int(a_), int(j), int(i)) for a_, j, i in zip(a, gj, gi)}
    for anchor in {int(x) for x in a}:
        assert {(anchor, 9, 5), (anchor, 9, 4), (anchor, 10, 5)} <= cells
        assert (anchor, 8, 5) not in cells and (anchor, 9, 6) not in cells
    assert set(tcls[0].tolist()) == {2}
    # box offsets are relative to the assigned cell and lie in (-0.5, 1.5)
    assert ((tbox[0][:, :2] > -0.5) & (tbox[0][:, :2] < 1.5)).all()
    assert torch.allclose(tbox[0][:, 2:], torch.tensor([2.0, 3.0]).expand_as(tbox[0][:, 2:]))


def test_anchor_ratio_threshold_filters_mismatched_shapes():
    # a very wide box (12x0.5 cells) matches no anchor with ratio < 4
    t = torch.tensor([[0, 0, 0.5, 0.5, 12 / 16, 0.5 / 16]])
    _, _, indices, _ = build_targets(SHAPES, t, ANCHORS, anchor_t=4.0)
    assert indices[0][0].numel() == 0
    _, _, indices, _ = build_targets(SHAPES, t, ANCHORS, anchor_t=100.0)
    assert indices[0][0].numel() > 0
