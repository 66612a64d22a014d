"""Unit tests for utils/metrics.py: matching, AP, P/R/F1, confusion matrix, fitness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.metrics import (ConfusionMatrix, DetectionStats, ap_per_class, compute_ap, fitness,
                           format_class_table, match_predictions)


def test_fitness_weights_map50_95():
    assert fitness({"mAP50": 1.0, "mAP50-95": 0.0}) == pytest.approx(0.1)
    assert fitness({"mAP50": 0.5, "mAP50-95": 0.3}) == pytest.approx(0.05 + 0.27)


def test_match_predictions_thresholds_and_one_to_one():
    labels = torch.tensor([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30]], dtype=torch.float32)
    det = torch.tensor([
        [0, 0, 10, 10, 0.9, 0],    # exact match of label 0
        [0, 0, 10, 10, 0.8, 0],    # duplicate: label 0 already taken
        [20, 20, 30, 31, 0.7, 1],  # IoU 100/110 = 0.909 with label 1
        [20, 20, 30, 30, 0.6, 0],  # right box, wrong class
    ])
    correct = match_predictions(det, labels)
    assert correct.shape == (4, 10) and correct.dtype == torch.bool
    assert correct[0].all()
    assert not correct[1].any() and not correct[3].any()
    # 0.909 passes thresholds 0.50..0.90 (9 of them) but not 0.95
    assert correct[2, :9].all() and not correct[2, 9]


def test_match_predictions_prefers_higher_iou_pair():
    labels = torch.tensor([[0, 0, 0, 10, 10]], dtype=torch.float32)
    det = torch.tensor([[0, 0, 10, 12, 0.9, 0], [0, 0, 10, 10, 0.5, 0]])
    correct = match_predictions(det, labels)
    # at IoU 0.95 only the exact box qualifies; at 0.5 the higher-IoU (exact) box wins the label
    assert correct[1].all() and not correct[0].any()


def test_match_predictions_empty():
    assert match_predictions(torch.zeros((0, 6)), torch.zeros((3, 5))).shape == (0, 10)
    assert not match_predictions(torch.rand(4, 6), torch.zeros((0, 5))).any()


def test_compute_ap_known_value():
    # TP, FP, TP with 2 labels: envelope is 1.0 up to recall 0.5 (51 points), 2/3 above (50 points)
    ap, p101 = compute_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]))
    assert ap == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert p101.shape == (101,)
    assert compute_ap(np.zeros(0), np.zeros(0))[0] == 0.0


def test_ap_per_class_perfect_and_known_case():
    tp = np.ones((3, 10), bool)
    res = ap_per_class(tp, np.array([0.9, 0.8, 0.7]), np.array([0, 0, 1]), np.array([0, 0, 1]))
    assert res.ap.shape == (2, 10)
    np.testing.assert_allclose(res.ap, 1.0)
    assert res.mean()["mAP50-95"] == pytest.approx(1.0)
    assert res.mean()["P"] == pytest.approx(1.0, abs=1e-3) and res.mean()["R"] == pytest.approx(1.0, abs=1e-3)

    tp = np.array([[True], [False], [True]])
    res = ap_per_class(tp, np.array([0.7, 0.8, 0.9])[::-1].copy(), np.zeros(3), np.zeros(2))
    assert res.ap[0, 0] == pytest.approx((51 + 50 * 2 / 3) / 101)


def test_ap_per_class_ignores_class_without_labels_and_counts_missing_class():
    tp = np.array([[True], [False]])
    # class 5 has detections but no labels: left out; class 1 has labels but no detections: AP 0
    res = ap_per_class(tp, np.array([0.9, 0.8]), np.array([0, 5]), np.array([0, 1]))
    assert res.classes.tolist() == [0, 1]
    assert res.ap[:, 0].tolist() == pytest.approx([1.0, 0.0])
    assert res.mean()["mAP50"] == pytest.approx(0.5)


def test_ap_per_class_no_detections_no_labels():
    res = ap_per_class(np.zeros((0, 10), bool), np.zeros(0), np.zeros(0), np.zeros(0))
    assert res.mean() == {"P": 0.0, "R": 0.0, "mAP50": 0.0, "mAP50-95": 0.0}
    res = ap_per_class(np.zeros((0, 10), bool), np.zeros(0), np.zeros(0), np.array([0, 0, 2]))
    assert res.mean()["mAP50"] == 0.0 and res.nt.tolist() == [2, 1]


def test_detection_stats_and_table():
    stats = DetectionStats()
    labels = torch.tensor([[0, 0, 0, 10, 10]], dtype=torch.float32)
    stats.update(torch.tensor([[0, 0, 10, 10, 0.9, 0]]), labels)
    stats.update(torch.zeros((0, 6)), torch.zeros((0, 5)))  # image without labels or detections
    res = stats.compute()
    assert res.mean()["mAP50-95"] == pytest.approx(1.0)
    assert stats.num_labels == 1 and stats.images_per_class == {0: 1}
    table = format_class_table(res, ["person"], 2, stats.images_per_class, verbose=True)
    assert "all" in table and "person" in table and len(table.splitlines()) == 3


def test_confusion_matrix_counts():
    cm = ConfusionMatrix(nc=2, conf=0.25, iou_thres=0.45)
    labels = torch.tensor([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30], [1, 50, 50, 60, 60]], dtype=torch.float32)
    det = torch.tensor([
        [0, 0, 10, 10, 0.9, 0],      # correct
        [20, 20, 30, 30, 0.8, 0],    # class confusion: predicted 0, true 1
        [80, 80, 90, 90, 0.7, 1],    # false positive
        [50, 50, 60, 60, 0.1, 1],    # below conf: label 2 counts as missed
    ])
    cm.process_batch(det, labels)
    m = cm.matrix
    assert m[0, 0] == 1 and m[0, 1] == 1 and m[1, 2] == 1 and m[2, 1] == 1
    assert m.sum() == 4
    cm.process_batch(None, labels[:1])
    assert cm.matrix[2, 0] == 1
