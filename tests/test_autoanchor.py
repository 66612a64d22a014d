"""AutoAnchor: BPR metric, k-means + evolution, and check_anchors on 4- and 3-level models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.yolo import build_model
from utils.autoanchor import anchor_bpr, anchor_fitness, check_anchors, kmean_anchors, label_wh_px

P2_ANCHORS = [[5, 6, 8, 14, 15, 11], [10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119],
              [116, 90, 156, 198, 373, 326]]


def _tiny_model(levels: int):
    """A 4-level (strides 4..32) or 3-level (8..32) model with YOLOv5's default anchors."""
    convs = [[-1, 1, "Conv", [8, 3, 2]] for _ in range(5)]  # outputs at strides 2, 4, 8, 16, 32
    src = [1, 2, 3, 4][-levels:]
    d = {"nc": 1, "anchors": P2_ANCHORS[-levels:], "backbone": convs,
         "head": [[src, 1, "Detect", ["nc", "anchors"]]]}
    return build_model(d)


def _thin_boxes(n: int = 400, seed: int = 0) -> np.ndarray:
    """3 x 60 px boxes (+-10%): no default anchor is within a ratio of 4 in both w and h."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(2.7, 3.3, n), rng.uniform(54, 66, n)], 1)


def test_anchor_bpr_ratio_metric():
    anchors = np.array([[10.0, 10.0], [100.0, 50.0]])
    wh = np.array([[10.0, 10.0], [39.0, 39.0], [41.0, 41.0], [30.0, 20.0], [2.0, 2.0]])
    bpr, aat = anchor_bpr(anchors, wh, thr=4.0)
    # anchors within ratio 4 in w and h: 10x10 -> a0; 39x39 -> a0 (3.9), a1; 41x41 -> a1 only
    # (a0 at 4.1 fails); 30x20 -> a0, a1; 2x2 -> none (5 > 4)
    assert bpr == pytest.approx(4 / 5)
    assert aat == pytest.approx((1 + 2 + 1 + 2 + 0) / 5)


def test_kmeans_sorted_and_fits_clusters():
    rng = np.random.default_rng(1)
    centres = np.array([[4, 4], [12, 30], [60, 20], [150, 150]], dtype=float)
    wh = np.concatenate([c * rng.uniform(0.95, 1.05, (100, 2)) for c in centres])
    k = kmean_anchors(wh, 4, imgsz=640, thr=4.0, gen=50, verbose=False)
    assert k.shape == (4, 2) and k.dtype == np.float32
    assert np.all(np.diff(k.prod(1)) > 0)  # sorted by area, small first
    assert np.allclose(k, centres, rtol=0.1)
    with pytest.raises(ValueError, match="distinct label sizes"):
        kmean_anchors(wh[:3], 4, gen=1, verbose=False)


def test_check_anchors_recomputes_for_unfit_labels(capsys):
    model = _tiny_model(4)
    wh = _thin_boxes()
    before = model.detect.anchors.clone()
    r = check_anchors(model, wh, thr=4.0, imgsz=64, gen=100)
    assert r["recomputed"] and r["bpr_before"] < 0.5 and r["bpr_after"] > 0.98
    a = model.detect.anchors
    assert a.shape == (4, 3, 2) and not torch.equal(a, before)
    areas = a.view(-1, 2).prod(1)
    assert torch.all(areas[1:] >= areas[:-1])  # small to large across levels, P2 first
    assert anchor_bpr(a, wh, 4.0)[0] > 0.98
    out = capsys.readouterr().out
    assert "Best Possible Recall" in out and "new anchors" in out


def test_check_anchors_keeps_good_anchors_3_levels():
    model = _tiny_model(3)
    rng = np.random.default_rng(2)
    wh = rng.uniform(10, 120, (300, 2))  # well covered by the P3-P5 defaults
    before = model.detect.anchors.clone()
    r = check_anchors(model, wh, thr=4.0, verbose=False)
    assert not r["recomputed"] and r["bpr_before"] >= 0.98 and r["bpr_after"] == r["bpr_before"]
    assert torch.equal(model.detect.anchors, before)


def test_check_anchors_3_levels_recompute_and_too_few_labels():
    model = _tiny_model(3)
    r = check_anchors(model, _thin_boxes(), thr=4.0, gen=50, verbose=False)
    assert r["recomputed"] and model.detect.anchors.shape == (3, 3, 2)
    model = _tiny_model(3)
    before = model.detect.anchors.clone()
    r = check_anchors(model, np.array([[3.0, 60.0]] * 5), verbose=False)  # 1 size < 9 anchors
    assert not r["recomputed"] and torch.equal(model.detect.anchors, before)


def test_label_wh_px_scales_long_side():
    labels = [np.array([[0, 0.5, 0.5, 0.1, 0.2]], np.float32), np.zeros((0, 5), np.float32)]
    shapes = np.array([[1280, 1024], [640, 640]])
    wh = label_wh_px(labels, shapes, imgsz=640)  # 1280x1024 -> 640x512
    assert wh.shape == (1, 2) and np.allclose(wh, [[64.0, 102.4]])


def test_evolution_never_lowers_fitness():
    rng = np.random.default_rng(3)
    wh = np.exp(rng.uniform(np.log(3), np.log(200), (500, 2)))  # spread sizes: k-means is not optimal
    f0 = anchor_fitness(kmean_anchors(wh, 6, gen=0, verbose=False), wh, 4.0)
    f1 = anchor_fitness(kmean_anchors(wh, 6, gen=300, verbose=False), wh, 4.0)
    assert f1 > f0
