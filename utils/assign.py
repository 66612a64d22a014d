"""YOLOv5 target assignment: match ground-truth boxes to anchors and grid cells of every level.

A target matches an anchor when max(w/aw, aw/w, h/ah, ah/h) < anchor_t. Each matched target is
assigned to its own cell and to the two neighbouring cells whose border its centre is nearest to
(within half a cell), which triples the positives and lets predictions reach -0.5..1.5 of a cell.
"""

from __future__ import annotations

import torch

# centre cell, then left, up, right, down neighbours (in units of half a cell)
_OFFSETS = torch.tensor([[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]], dtype=torch.float32) * 0.5


def build_targets(shapes: list[tuple[int, int]], targets: torch.Tensor, anchors: torch.Tensor,
                  anchor_t: float = 4.0):
    """Assign targets to (image, anchor, cell) positions on every level.

    Args:
        shapes: (ny, nx) of each level's grid.
        targets: (nt, 6) rows [batch_index, class, cx, cy, w, h], xywh normalized to [0, 1].
        anchors: (nl, na, 2) anchor w, h in grid units of their level (pixels / stride).
        anchor_t: width/height ratio threshold.

    Returns, per level, lists of:
        tcls (n,) class ids; tbox (n, 4) [dx, dy, w, h] in grid units relative to the cell corner;
        indices (b, a, gj, gi) long tensors; anch (n, 2) matched anchors in grid units.
    """
    device = targets.device
    nl, na = anchors.shape[:2]
    nt = targets.shape[0]
    ai = torch.arange(na, device=device).float().view(na, 1).repeat(1, nt)
    t_all = torch.cat((targets.repeat(na, 1, 1), ai[..., None]), 2)  # (na, nt, 7): + anchor index
    off = _OFFSETS.to(device)
    tcls, tbox, indices, anch = [], [], [], []
    for i, (ny, nx) in enumerate(shapes):
        gain = torch.tensor([1, 1, nx, ny, nx, ny, 1], device=device, dtype=torch.float32)
        t = t_all * gain  # boxes in grid units
        offsets = torch.zeros((0, 2), device=device)
        if nt:
            r = t[..., 4:6] / anchors[i][:, None]
            matched = torch.max(r, 1 / r).max(2)[0] < anchor_t  # (na, nt)
            gxy = t[..., 2:4]
            gxi = gain[[2, 3]] - gxy  # distance to the right/bottom border
            j, k = ((gxy % 1 < 0.5) & (gxy > 1)).unbind(-1)
            l, m = ((gxi % 1 < 0.5) & (gxi > 1)).unbind(-1)
            sel = torch.stack((matched, j & matched, k & matched, l & matched, m & matched))  # (5, na, nt)
            # one nonzero per level (a device read-back on a GPU); its (offset, anchor, target)
            # order is that of filtering the matches first and then picking their cells
            o, ia, it = sel.nonzero(as_tuple=True)
            t, offsets = t[ia, it], off[o]
        else:
            t = t[0]
        b, c = t[:, 0].long(), t[:, 1].long()
        gxy, gwh, a = t[:, 2:4], t[:, 4:6], t[:, 6].long()
        gij = (gxy - offsets).long()
        gi, gj = gij[:, 0].clamp(0, nx - 1), gij[:, 1].clamp(0, ny - 1)
        indices.append((b, a, gj, gi))
        tbox.append(torch.cat((gxy - torch.stack((gi, gj), 1), gwh), 1))
        anch.append(anchors[i][a])
        tcls.append(c)
    return tcls, tbox, indices, anch
