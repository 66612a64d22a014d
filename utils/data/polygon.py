"""Polygon labels: clip to a rectangle and rebuild boxes, so a box covers only visible object pixels.

Polygons are float32 (k, 2) arrays of (x, y) pixel vertices in the current image; boxes are xyxy
pixels. A transform that shows only part of an image (a mosaic tile, a crop, a warp's output)
clips the polygon to the visible rectangle first: the extent of the clipped polygon is the tight
box of what is left of the object, where clipping the box itself would keep the corners of the
box that now lie over background or over the grey fill.
"""

from __future__ import annotations

import numpy as np


def _clip_half_plane(pts: np.ndarray, axis: int, bound: float, keep_below: bool) -> np.ndarray:
    """One Sutherland-Hodgman pass: keep the part of closed polygon ``pts`` (k, 2) on one side of
    the line ``coordinate[axis] = bound`` (``<= bound`` when ``keep_below``, else ``>= bound``)."""
    out = []
    for j in range(len(pts)):
        p, q = pts[j], pts[(j + 1) % len(pts)]  # edge p -> q, wrapping to close the polygon
        p_in = p[axis] <= bound if keep_below else p[axis] >= bound
        q_in = q[axis] <= bound if keep_below else q[axis] >= bound
        if p_in:
            out.append(p)
        if p_in != q_in:  # the edge crosses the line: add the crossing point
            t = (bound - p[axis]) / (q[axis] - p[axis])
            out.append(p + t * (q - p))
    return np.array(out, np.float32).reshape(-1, 2)


def clip_polygon(poly: np.ndarray, rect: tuple[float, float, float, float]) -> np.ndarray:
    """Clip polygon (k, 2) to the xyxy rectangle ``rect`` -> polygon (m, 2), m = 0 when nothing is left.

    Sutherland-Hodgman against the four sides; exact for any polygon against a convex window (a
    concave polygon cut in two comes back as one outline joined along the window edge, which has
    the same extent).
    """
    pts = np.asarray(poly, np.float32).reshape(-1, 2)
    x1, y1, x2, y2 = (float(v) for v in rect)
    for axis, bound, keep_below in ((0, x1, False), (0, x2, True), (1, y1, False), (1, y2, True)):
        if not len(pts):
            break
        pts = _clip_half_plane(pts, axis, bound, keep_below)
    return pts


def polygon_box(poly: np.ndarray) -> np.ndarray:
    """Extent of a polygon (k, 2) as an xyxy float32 (4,) box; all zeros (degenerate) when k = 0."""
    if not len(poly):
        return np.zeros(4, np.float32)
    return np.array([*poly.min(0), *poly.max(0)], np.float32)


def clip_polygons_and_boxes(boxes: np.ndarray, segments: list[np.ndarray],
                            rect: tuple[float, float, float, float]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Clip boxes (n, 4) xyxy and their n polygons to ``rect``; each box becomes its clipped polygon's extent.

    The box is also intersected with the clipped box, so a polygon that strays outside its box
    cannot grow it. Objects with nothing left inside ``rect`` get a zero box, which
    ``utils.boxes.filter_boxes`` then drops. With no polygons (``segments`` empty), only the boxes
    are clipped. Returns (boxes float32 (n, 4), clipped polygons).
    """
    x1, y1, x2, y2 = rect
    out = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(x1, x2)
    out[:, [1, 3]] = out[:, [1, 3]].clip(y1, y2)
    if len(segments) != len(out):
        return out, []
    clipped = [clip_polygon(p, rect) for p in segments]
    for b, p in zip(out, clipped):
        if not len(p):
            b[:] = 0.0
            continue
        pb = polygon_box(p)
        b[:2] = np.maximum(b[:2], pb[:2])
        b[2:] = np.minimum(b[2:], pb[2:])
    return out, clipped
