"""Plots: every plotting function writes a readable, non-empty image."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from utils.metrics import ConfusionMatrix, ap_per_class
from utils.plots import (plot_ap_by_size, plot_confusion_matrix, plot_images, plot_labels, plot_metric_curve,
                         plot_pr_curve, plot_train_batch)
from utils.results_plot import plot_results


def _read(path) -> np.ndarray:
    img = cv2.imread(str(path))
    assert img is not None, f"{path} is not a readable image"
    return img


def test_curves_confusion_and_size_chart(tmp_path):
    rng = np.random.default_rng(0)
    tp = rng.random((50, 10)) < 0.6
    res = ap_per_class(tp, rng.random(50), rng.integers(0, 3, 50), rng.integers(0, 3, 40))
    names = ["person", "car", "bike"]
    plot_pr_curve(np.linspace(0, 1, 101), res.pr_curve, res.ap50, res.classes, names, tmp_path / "PR_curve.png")
    plot_metric_curve(res.px, res.f1_curve, res.classes, names, tmp_path / "F1_curve.png", "F1")
    cm = ConfusionMatrix(3)
    cm.process_batch(torch.tensor([[0, 0, 10, 10, 0.9, 1]]), torch.tensor([[0, 0, 0, 10, 10.0]]))
    plot_confusion_matrix(cm.matrix, names, tmp_path / "confusion_matrix.png")
    stats = {"AP": 0.4, "APs": 0.2, "APm": 0.5, "APl": 0.6, "AR100": 0.5, "ARs": 0.3, "ARm": 0.6, "ARl": 0.7,
             "AP_tiny": 0.1, "AR_tiny": 0.2}
    plot_ap_by_size(stats, tmp_path / "ap_by_size.png", {"tiny": 5, "small": 10, "medium": 3, "large": 1})
    for name in ("PR_curve.png", "F1_curve.png", "confusion_matrix.png", "ap_by_size.png"):
        assert _read(tmp_path / name).std() > 0  # not a blank canvas


def test_plot_images_draws_boxes(tmp_path):
    imgs = torch.zeros((2, 3, 64, 80), dtype=torch.uint8)
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.5, 0.5], [1, 1, 0.25, 0.25, 0.2, 0.2]])
    out = plot_train_batch(imgs, targets, ["a.jpg", "b.jpg"], tmp_path / "train_batch0.jpg", ["x", "y"])
    img = _read(out)
    assert img.shape[:2] == (128, 160)  # 2x2 grid of 64x80 tiles
    assert (img[:64, :80] > 0).any()  # a box was drawn on the black first tile
    preds = torch.tensor([[0, 0, 40, 32, 20, 20, 0.9], [0, 1, 10, 10, 5, 5, 0.1]])  # pixels, with conf
    img = _read(plot_images(imgs, preds, None, tmp_path / "pred.jpg"))
    assert (img[:64, :80] > 0).any()


def test_plot_labels_and_results(tmp_path):
    labels = [np.array([[0, 0.5, 0.5, 0.02, 0.03], [1, 0.3, 0.3, 0.3, 0.4]]), np.zeros((0, 5))]
    _read(plot_labels(labels, ["a", "b"], tmp_path / "labels.jpg", shapes_wh=np.array([[640, 512], [640, 512]])))
    csv = tmp_path / "results.csv"
    csv.write_text("epoch,train/box_loss,metrics/AP,metrics/APs,note\n0,0.10,0.1,0.05,x\n1,0.08,0.2,0.07,y\n")
    out = plot_results(csv)
    assert out == tmp_path / "results.png" and _read(out).std() > 0
    csv.write_text("epoch,note\n0,x\n")
    with pytest.raises(ValueError, match="no numeric column"):
        plot_results(csv)
