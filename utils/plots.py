"""Evaluation and training plots: curves, confusion matrix, AP by object size, label statistics, image mosaics.

Figures are drawn with matplotlib's Agg canvas created per figure (``Figure`` +
``FigureCanvasAgg``), never through pyplot, so plotting changes no global backend state and
works without a display. Image mosaics are drawn with OpenCV.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.boxes import xyxy2xywh
from utils.annotate import class_color, class_name
from utils.coco_eval import max_dets_of

COCO_SIDE_BINS = (32, 96)  # small < 32^2 <= medium < 96^2 <= large (sides in px)


def new_figure(figsize: tuple[float, float] = (9, 6)):
    """A new matplotlib Figure bound to an Agg canvas (matplotlib imported lazily: it is slow)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, tight_layout=True)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (parent folders created) at 150 dpi."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return path


def plot_pr_curve(recall: np.ndarray, pr_curve: np.ndarray, ap50: np.ndarray, classes: np.ndarray,
                  names: Sequence[str], save_path: str | Path) -> Path:
    """Precision-recall curve at IoU 0.5 per class (legend when <= 20 classes) and their mean.

    Args:
        recall: (101,) recall axis; pr_curve: (k, 101) precision; ap50: (k,) AP@0.5; classes: (k,).
    """
    fig = new_figure()
    ax = fig.add_subplot()
    show_legend = 0 < len(classes) <= 20
    for i, c in enumerate(classes.tolist()):
        label = f"{class_name(names, c)} {ap50[i]:.3f}" if show_legend else None
        ax.plot(recall, pr_curve[i], linewidth=1, label=label)
    if len(classes):
        ax.plot(recall, pr_curve.mean(0), linewidth=3, color="blue", label=f"all classes {ap50.mean():.3f} mAP@0.5")
    ax.set(xlabel="Recall", ylabel="Precision", xlim=(0, 1), ylim=(0, 1), title="Precision-Recall Curve")
    if len(classes):
        ax.legend(loc="lower left", fontsize=7)
    return save_figure(fig, save_path)


def plot_metric_curve(px: np.ndarray, curves: np.ndarray, classes: np.ndarray, names: Sequence[str],
                      save_path: str | Path, ylabel: str) -> Path:
    """A metric (F1, precision or recall) against confidence ``px`` (1000,), per class (k, 1000) and mean."""
    fig = new_figure()
    ax = fig.add_subplot()
    show_legend = 0 < len(classes) <= 20
    for i, c in enumerate(classes.tolist()):
        ax.plot(px, curves[i], linewidth=1, label=class_name(names, c) if show_legend else None)
    if len(classes):
        mean = curves.mean(0)
        best = int(mean.argmax())
        ax.plot(px, mean, linewidth=3, color="blue", label=f"all classes {mean[best]:.2f} at {px[best]:.3f}")
        ax.legend(loc="lower left", fontsize=7)
    ax.set(xlabel="Confidence", ylabel=ylabel, xlim=(0, 1), ylim=(0, 1), title=f"{ylabel}-Confidence Curve")
    return save_figure(fig, save_path)


def plot_confusion_matrix(matrix: np.ndarray, names: Sequence[str], save_path: str | Path,
                          normalize: bool = True) -> Path:
    """Heat map of a (nc+1, nc+1) confusion matrix (rows predicted, columns true, last = background).

    With ``normalize`` each column (true class) sums to 1, so the diagonal is per-class recall.
    """
    m = matrix.astype(np.float64)
    if normalize:
        m = m / (m.sum(0, keepdims=True) + 1e-9)
    m[m < 0.005] = np.nan  # blank cells read better than a sea of zeros
    nc = matrix.shape[0] - 1
    labels = [*(class_name(names, i) for i in range(nc)), "background"]
    fig = new_figure((10, 8))
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None)
    fig.colorbar(im, ax=ax)
    if nc < 30:  # tick labels and numbers only stay legible for a few classes
        ax.set_xticks(range(nc + 1), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(nc + 1), labels, fontsize=7)
        for (i, j), v in np.ndenumerate(m):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.2f}" if normalize else f"{int(v)}", ha="center", va="center", fontsize=6)
    ax.set(xlabel="True", ylabel="Predicted", title="Confusion Matrix" + (" (normalized)" if normalize else ""))
    return save_figure(fig, save_path)


def plot_ap_by_size(stats: dict[str, float], save_path: str | Path,
                    gt_counts: dict[str, int] | None = None) -> Path:
    """Bar chart of COCO AP and AR for each object-size bin (extra bins such as ``tiny`` first).

    ``stats`` is the dict from ``CocoEvaluator.summarize`` (keys APs/APm/APl, AP_<name> ...);
    ``gt_counts`` (bin -> number of GT boxes) is written under each bar pair.
    """
    bins = [(k[3:], k, "AR_" + k[3:]) for k in stats if k.startswith("AP_")]
    max_dets = max_dets_of(stats)
    bins += [("small", "APs", "ARs"), ("medium", "APm", "ARm"), ("large", "APl", "ARl"), ("all", "AP", f"AR{max_dets}")]
    x = np.arange(len(bins))
    fig = new_figure((8, 5))
    ax = fig.add_subplot()
    ap = [stats.get(a, 0.0) for _, a, _ in bins]
    ar = [stats.get(r, 0.0) for _, _, r in bins]
    ax.bar(x - 0.2, ap, 0.4, label="AP@[.5:.95]")
    ax.bar(x + 0.2, ar, 0.4, label=f"AR@{max_dets}")
    for xi, v in zip(x, ap):
        ax.text(xi - 0.2, v + 0.01, f"{v:.3f}", ha="center", fontsize=7)
    ticks = [f"{n}\n({gt_counts[n]} obj)" if gt_counts and n in gt_counts else n for n, _, _ in bins]
    ax.set_xticks(x, ticks)
    ax.set(ylabel="score", ylim=(0, 1), title="COCO AP and AR by object size (original pixels)")
    ax.legend()
    return save_figure(fig, save_path)


def plot_labels(labels_list: Sequence[np.ndarray], names: Sequence[str], save_path: str | Path,
                shapes_wh: np.ndarray | None = None, imgsz: int = 640) -> Path:
    """Label statistics: instances per class and a histogram of box width and height in pixels.

    Args:
        labels_list: per image an (n, 5) array ``[cls, cx, cy, w, h]`` normalized.
        names: class names.
        shapes_wh: (N, 2) original image (width, height); box sizes are then in original pixels,
            the space of the COCO size bins. Without it sizes are ``w * imgsz`` (input pixels).
    The COCO bin edges 32 and 96 px are marked on the size histogram.
    """
    labels = [np.asarray(x, np.float64).reshape(-1, 5) for x in labels_list]
    if shapes_wh is not None:
        scale = [np.asarray(s, np.float64)[None] for s in np.asarray(shapes_wh).reshape(-1, 2)]
    else:
        scale = [np.array([[imgsz, imgsz]], np.float64)] * len(labels)
    wh = np.concatenate([lab[:, 3:5] * s for lab, s in zip(labels, scale)] or [np.zeros((0, 2))], 0)
    cls = np.concatenate([lab[:, 0] for lab in labels] or [np.zeros(0)]).astype(int)
    nc = max(len(names), int(cls.max()) + 1 if cls.size else 0)
    fig = new_figure((12, 5))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax1.bar(range(nc), np.bincount(cls, minlength=nc))
    if nc <= 30:
        ax1.set_xticks(range(nc), [class_name(names, i) for i in range(nc)], rotation=90, fontsize=7)
    ax1.set(ylabel="instances", title=f"{cls.size} instances")
    top = max(float(wh.max()) if wh.size else 1.0, 128.0)
    edges = np.linspace(0, top, 60)
    ax2.hist(wh[:, 0], bins=edges, alpha=0.6, label="width")
    ax2.hist(wh[:, 1], bins=edges, alpha=0.6, label="height")
    for side in COCO_SIDE_BINS:
        ax2.axvline(side, color="red", linestyle="--", linewidth=1)
        ax2.text(side, ax2.get_ylim()[1] * 0.95, f" {side}px", color="red", fontsize=8)
    small = int((wh.prod(1) < COCO_SIDE_BINS[0] ** 2).sum()) if wh.size else 0
    unit = "original" if shapes_wh is not None else "input"
    ax2.set(xlabel=f"box side ({unit} pixels)", ylabel="boxes",
            title=f"box sizes: {small} of {len(wh)} COCO-small (< 32x32)")
    ax2.legend()
    return save_figure(fig, save_path)


def plot_images(imgs: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray,
                paths: Sequence[str] | None, save_path: str | Path, names: Sequence[str] | None = None,
                max_size: int = 1920, max_subplots: int = 16, conf_thres: float = 0.25) -> Path:
    """Mosaic of a batch with boxes drawn (val_batch*_labels/pred.jpg, train_batch*.jpg).

    Args:
        imgs: (B, 3, H, W) RGB, uint8 or float in [0, 1].
        targets: (N, 6) ``[batch_index, cls, cx, cy, w, h]`` (labels) or (N, 7) with a trailing
            ``conf`` (predictions). cx..h normalized to [0, 1] or in input pixels (detected by
            value range). Predictions under ``conf_thres`` are not drawn.
        paths: image paths; the file name is written on each tile.
    """
    imgs = imgs.detach().cpu().float().numpy() if isinstance(imgs, torch.Tensor) else np.asarray(imgs, np.float32)
    if isinstance(targets, torch.Tensor):
        targets = targets.detach().cpu().float().numpy()
    targets = np.asarray(targets, np.float32)
    targets = targets.reshape(-1, targets.shape[-1] if targets.ndim == 2 else 6)
    if imgs.size and imgs.max() <= 1.0:
        imgs = imgs * 255
    bs = min(len(imgs), max_subplots)
    h, w = imgs.shape[2:4] if imgs.ndim == 4 else (64, 64)
    ns = max(1, math.ceil(bs ** 0.5))  # tiles per side
    scale = min(1.0, max_size / (ns * max(h, w)))
    th, tw = max(1, int(h * scale)), max(1, int(w * scale))
    mosaic = np.full((ns * th, ns * tw, 3), 255, dtype=np.uint8)
    normalized = targets.shape[0] > 0 and targets[:, 2:6].max() <= 1.01
    for i in range(bs):
        x0, y0 = (i % ns) * tw, (i // ns) * th
        tile = np.ascontiguousarray(imgs[i].transpose(1, 2, 0)[:, :, ::-1]).clip(0, 255).astype(np.uint8)
        mosaic[y0:y0 + th, x0:x0 + tw] = cv2.resize(tile, (tw, th), interpolation=cv2.INTER_AREA)
        cv2.rectangle(mosaic, (x0, y0), (x0 + tw - 1, y0 + th - 1), (255, 255, 255), 2)
        if paths is not None and i < len(paths):
            cv2.putText(mosaic, Path(paths[i]).name[:40], (x0 + 5, y0 + 15), cv2.FONT_HERSHEY_SIMPLEX,
                        0.4, (220, 220, 220), 1, cv2.LINE_AA)
        _draw_targets(mosaic, targets[targets[:, 0] == i], (x0, y0), (w, h), scale, normalized, names, conf_thres)
    save_path = Path(save_path)
    save_path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(save_path), mosaic)
    return save_path


def _draw_targets(mosaic: np.ndarray, t: np.ndarray, origin: tuple[int, int], size_wh: tuple[int, int],
                  scale: float, normalized: bool, names: Sequence[str] | None, conf_thres: float) -> None:
    """Draw rows ``[b, cls, cx, cy, w, h(, conf)]`` of one tile onto the mosaic in place."""
    has_conf = t.shape[1] > 6
    if has_conf:
        t = t[t[:, 6] >= conf_thres]
    boxes = t[:, 2:6].copy()
    if normalized:
        boxes *= np.array(size_wh * 2, dtype=np.float32)
    boxes *= scale
    x0, y0 = origin
    for row, (cx, cy, bw, bh) in zip(t, boxes):
        c = int(row[1])
        p1 = (int(x0 + cx - bw / 2), int(y0 + cy - bh / 2))
        p2 = (int(x0 + cx + bw / 2), int(y0 + cy + bh / 2))
        colour = class_color(c)
        cv2.rectangle(mosaic, p1, p2, colour, 1, cv2.LINE_AA)
        label = class_name(names, c) if names is not None else str(c)
        if has_conf:
            label = f"{label} {row[6]:.2f}"
        cv2.putText(mosaic, label, (p1[0], max(p1[1] - 2, y0 + 8)), cv2.FONT_HERSHEY_SIMPLEX, 0.3, colour, 1,
                    cv2.LINE_AA)


def output_to_target(out: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-image (n, 6) ``[x1, y1, x2, y2, conf, cls]`` -> (N, 7) ``[batch, cls, cx, cy, w, h, conf]``
    (input pixels, CPU), the row format :func:`plot_images` draws predictions from."""
    rows = [torch.cat((torch.full((d.shape[0], 1), i, device=d.device), d[:, 5:6], xyxy2xywh(d[:, :4]),
                       d[:, 4:5]), 1) for i, d in enumerate(out)]
    return torch.cat(rows, 0).cpu() if rows else torch.zeros((0, 7))


def plot_train_batch(imgs: torch.Tensor, targets: torch.Tensor, paths: Sequence[str] | None,
                     save_path: str | Path, names: Sequence[str] | None = None) -> Path:
    """train_batch*.jpg: a training batch (B, 3, H, W) uint8 with its (N, 6) normalized targets."""
    return plot_images(imgs, targets, paths, save_path, names=names)
