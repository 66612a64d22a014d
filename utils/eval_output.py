"""Reporting an :class:`~utils.evaluation.EvalResult`: tables, plots, COCO JSON and YOLO txt files.

The evaluation engine (utils/evaluation.py) computes; these functions only print and write, so
val.py and the trainer choose what a run produces. The val_batch* mosaics need the letterboxed
batches, which only exist during the pass: :class:`BatchPlotter` is the engine callback that
draws them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from utils.coco_eval import format_coco_table
from utils.evaluation import EvalCallback, EvalResult
from utils.metrics import format_class_table
from utils.yolo_txt import write_yolo_txt

PLOT_BATCHES = 3  # val_batch0..2 mosaics, as YOLOv5


def format_results(result: EvalResult, names: list[str], verbose: bool = False) -> str:
    """Notes, the YOLOv5 class table (per class with ``verbose``) and the COCO table, as text."""
    class_table = format_class_table(result.ap, names, result.seen, result.images_per_class, verbose)
    coco_table = format_coco_table(result.coco_stats, result.gt_counts)
    return "\n".join([*result.notes, class_table, coco_table])


def print_results(result: EvalResult, names: list[str], verbose: bool = False) -> None:
    """Print :func:`format_results` to stdout."""
    print(format_results(result, names, verbose))


def save_plots(result: EvalResult, names: list[str], save_dir: str | Path) -> list[Path]:
    """confusion_matrix.png, PR/F1/P/R curves and ap_by_size.png in ``save_dir``; returns the paths."""
    from utils import plots  # matplotlib: loaded only when plots are wanted

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    res = result.ap
    paths = [save_dir / "confusion_matrix.png", save_dir / "PR_curve.png"]
    plots.plot_confusion_matrix(result.confusion, names, paths[0])
    plots.plot_pr_curve(np.linspace(0, 1, 101), res.pr_curve, res.ap50, res.classes, names, paths[1])
    for fname, curve, label in (("F1_curve.png", res.f1_curve, "F1"), ("P_curve.png", res.p_curve, "Precision"),
                                ("R_curve.png", res.r_curve, "Recall")):
        paths.append(save_dir / fname)
        plots.plot_metric_curve(res.px, curve, res.classes, names, paths[-1], label)
    paths.append(save_dir / "ap_by_size.png")
    plots.plot_ap_by_size(result.coco_stats, paths[-1], result.gt_counts)
    return paths


class BatchPlotter(EvalCallback):
    """Engine callback: val_batch{i}_labels.jpg and val_batch{i}_pred.jpg for the first batches.

    The prediction mosaic is skipped for sliced inference, whose detections exist only in
    original pixels and cannot be drawn on the letterboxed batch.
    """

    def __init__(self, save_dir: str | Path, names: list[str], max_batches: int = PLOT_BATCHES):
        self.save_dir, self.names, self.max_batches = Path(save_dir), names, max_batches

    def on_batch(self, batch_index: int, imgs: torch.Tensor, targets: torch.Tensor, paths: Sequence[str],
                 out: list[torch.Tensor] | None) -> None:
        if batch_index >= self.max_batches:
            return
        from utils.plots import output_to_target, plot_images

        stem = self.save_dir / f"val_batch{batch_index}"
        plot_images(imgs, targets.cpu(), paths, f"{stem}_labels.jpg", self.names)
        if out is not None:
            plot_images(imgs, output_to_target(out), paths, f"{stem}_pred.jpg", self.names)


def save_json(result: EvalResult, save_dir: str | Path) -> Path:
    """predictions.json (COCO results format) and, when the GT was built from the YOLO labels,
    gt_coco.json with the same image ids, so ``val.py --coco-gt gt_coco.json --pred
    predictions.json`` re-runs the pair. Returns the predictions path."""
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    path = result.coco.save_json(save_dir / "predictions.json")
    if result.gt_from_labels:
        with open(save_dir / "gt_coco.json", "w", encoding="utf-8") as f:
            json.dump(result.coco.gt, f)
    return path


def save_txt(result: EvalResult, save_dir: str | Path, save_conf: bool = False) -> Path:
    """labels/<image stem>.txt per evaluated image (YOLO rows, see utils/yolo_txt.py); returns labels/."""
    txt_dir = Path(save_dir) / "labels"
    txt_dir.mkdir(parents=True, exist_ok=True)
    for im in result.images:
        write_yolo_txt(txt_dir / f"{Path(im.path).stem}.txt", im.det, im.shape_hw, save_conf)
    return txt_dir
