"""YOLOv5-style detection metrics: matching, per-class AP, P/R/F1 curves, confusion matrix, fitness.

Box format everywhere in this file: ``x1, y1, x2, y2`` in pixels of one common image space
(the evaluation uses original image pixels). Detections are rows ``[x1, y1, x2, y2, conf, cls]``,
labels are rows ``[cls, x1, y1, x2, y2]``.

AP here is COCO's 101-point interpolated AP: the mean, over recall thresholds 0, 0.01, ..., 1,
of the best precision reached at that recall or higher (0 when never reached). It is the same
definition the COCO evaluator uses, so mAP50-95 here and AP in the COCO table differ only by how
detections are matched (YOLOv5 matches greedily by IoU over all detections of an image; COCO
matches by score with at most ``maxDets`` per image and ignores crowd boxes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.ops import box_iou
from utils.annotate import class_name

IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10)  # mAP@0.5:0.95, the 10 COCO IoU thresholds


def fitness(metrics: dict[str, float]) -> float:
    """Single number used to pick ``best.pt``: ``0.1 * mAP50 + 0.9 * mAP50-95`` (as YOLOv5).

    ``metrics`` is ``EvalResult.metrics`` from ``utils.evaluation.evaluate`` (or any dict with
    the keys ``'mAP50'`` and ``'mAP50-95'``).
    mAP50-95 dominates because it rewards tight boxes, which matter most for small objects.
    """
    return 0.1 * float(metrics["mAP50"]) + 0.9 * float(metrics["mAP50-95"])


def match_predictions(detections: torch.Tensor, labels: torch.Tensor,
                      iouv: torch.Tensor = IOU_THRESHOLDS) -> torch.Tensor:
    """Mark each detection as a true positive at each IoU threshold (YOLOv5 ``process_batch``).

    Args:
        detections: (n, 6) ``[x1, y1, x2, y2, conf, cls]``.
        labels: (m, 5) ``[cls, x1, y1, x2, y2]`` in the same pixel space.
        iouv: (t,) IoU thresholds.

    Returns:
        (n, t) bool: ``True`` where the detection matches a label of its class with IoU >= iouv[j].
        Each label matches at most one detection and vice versa; pairs are taken in order of
        decreasing IoU (a greedy one-to-one assignment per threshold).
    """
    n, t = detections.shape[0], iouv.numel()
    correct = np.zeros((n, t), dtype=bool)
    if n == 0 or labels.shape[0] == 0:
        return torch.from_numpy(correct)
    iou = box_iou(labels[:, 1:5].float(), detections[:, :4].float())  # (m, n)
    same_class = labels[:, 0:1] == detections[:, 5]  # (m, n)
    iou = (iou * same_class).cpu().numpy()
    for j, thr in enumerate(iouv.tolist()):
        _, di = greedy_match(iou, iou >= thr)
        correct[di, j] = True
    return torch.from_numpy(correct)


def greedy_match(iou: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one label/detection pairs among ``candidates``, highest IoU first (YOLOv5's matching).

    Args:
        iou: (m, n) IoU of labels (rows) and detections (columns).
        candidates: (m, n) bool, the pairs allowed to match (e.g. IoU above a threshold).

    Returns:
        (label indices, detection indices), equal length, each index used at most once.
    """
    li, di = np.nonzero(candidates)
    order = np.argsort(-iou[li, di], kind="stable")
    li, di = li[order], di[order]
    # np.unique keeps the first (highest-IoU) occurrence: one label per detection...
    _, keep = np.unique(di, return_index=True)
    li, di = li[keep], di[keep]
    order = np.argsort(-iou[li, di], kind="stable")
    li, di = li[order], di[order]
    # ...then one detection per label
    _, keep = np.unique(li, return_index=True)
    return li[keep], di[keep]


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> tuple[float, np.ndarray]:
    """101-point interpolated AP of one precision/recall sequence (detections sorted by score).

    Args:
        recall: (k,) non-decreasing recall after each detection.
        precision: (k,) precision after each detection.

    Returns:
        (ap, p101): AP, and the (101,) interpolated precision at recall 0, 0.01, ..., 1.
    """
    rec_thrs = np.linspace(0.0, 1.0, 101)
    if recall.size == 0:
        return 0.0, np.zeros(101)
    # precision envelope: best precision at this recall or any higher recall
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, rec_thrs, side="left")
    p101 = np.zeros(101)
    ok = idx < recall.size
    p101[ok] = envelope[idx[ok]]
    return float(p101.mean()), p101


def _smooth(y: np.ndarray, frac: float = 0.05) -> np.ndarray:
    """Box filter over a fraction of the points; keeps the F1 argmax off noisy single spikes."""
    nf = round(len(y) * frac * 2) // 2 + 1  # odd number of points
    pad = np.ones(nf // 2)
    yp = np.concatenate((pad * y[0], y, pad * y[-1]))
    return np.convolve(yp, np.ones(nf) / nf, mode="valid")


@dataclass
class APResult:
    """Output of :func:`ap_per_class`; arrays are indexed by ``classes`` (classes that have labels).

    ``p``, ``r``, ``f1``: (k,) at the confidence that maximizes the mean F1 (``conf_best``);
    ``ap``: (k, t) AP per class and IoU threshold; ``nt``: (k,) label count;
    curves over confidence ``px`` (1000,): ``p_curve``, ``r_curve``, ``f1_curve`` (k, 1000);
    ``pr_curve``: (k, 101) interpolated precision at recall 0..1 for IoU 0.5.
    """

    classes: np.ndarray
    nt: np.ndarray
    p: np.ndarray
    r: np.ndarray
    f1: np.ndarray
    ap: np.ndarray
    conf_best: float = 0.0
    px: np.ndarray = field(default_factory=lambda: np.linspace(0, 1, 1000))
    p_curve: np.ndarray = field(default_factory=lambda: np.zeros((0, 1000)))
    r_curve: np.ndarray = field(default_factory=lambda: np.zeros((0, 1000)))
    f1_curve: np.ndarray = field(default_factory=lambda: np.zeros((0, 1000)))
    pr_curve: np.ndarray = field(default_factory=lambda: np.zeros((0, 101)))

    @property
    def ap50(self) -> np.ndarray:
        """(k,) AP at IoU 0.5."""
        return self.ap[:, 0] if self.ap.size else np.zeros(0)

    @property
    def ap50_95(self) -> np.ndarray:
        """(k,) AP averaged over the IoU thresholds."""
        return self.ap.mean(1) if self.ap.size else np.zeros(0)

    def mean(self) -> dict[str, float]:
        """Means over classes: ``{'P', 'R', 'mAP50', 'mAP50-95'}`` (zeros when no class has labels)."""
        if self.classes.size == 0:
            return {"P": 0.0, "R": 0.0, "mAP50": 0.0, "mAP50-95": 0.0}
        return {"P": float(self.p.mean()), "R": float(self.r.mean()),
                "mAP50": float(self.ap50.mean()), "mAP50-95": float(self.ap50_95.mean())}


def ap_per_class(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray,
                 eps: float = 1e-16) -> APResult:
    """AP, precision, recall and F1 per class from matched detections (all images pooled).

    Args:
        tp: (n, t) bool, detection i is a true positive at IoU threshold j.
        conf: (n,) detection confidence.
        pred_cls: (n,) detection class.
        target_cls: (m,) class of every label.

    Classes without labels are left out (their detections cannot be scored), as in YOLOv5 and COCO.
    """
    tp = np.asarray(tp, dtype=bool)
    tp = tp.reshape(len(conf), -1) if tp.ndim != 2 else tp
    order = np.argsort(-np.asarray(conf), kind="stable")
    tp, conf, pred_cls = tp[order], np.asarray(conf)[order], np.asarray(pred_cls)[order]
    classes, nt = np.unique(np.asarray(target_cls), return_counts=True)
    k, t = classes.size, tp.shape[1]
    px = np.linspace(0, 1, 1000)
    ap, pr_curve = np.zeros((k, t)), np.zeros((k, 101))
    p_curve, r_curve = np.zeros((k, 1000)), np.zeros((k, 1000))
    for ci, c in enumerate(classes):
        i = pred_cls == c
        if not i.any():
            continue
        tpc = tp[i].cumsum(0)
        fpc = (~tp[i]).cumsum(0)
        recall = tpc / (nt[ci] + eps)  # (n_c, t)
        precision = tpc / (tpc + fpc)
        # curves against confidence (conf is decreasing, so interpolate on -conf)
        r_curve[ci] = np.interp(-px, -conf[i], recall[:, 0], left=0)
        p_curve[ci] = np.interp(-px, -conf[i], precision[:, 0], left=1)
        for j in range(t):
            ap[ci, j], p101 = compute_ap(recall[:, j], precision[:, j])
            if j == 0:
                pr_curve[ci] = p101
    f1_curve = 2 * p_curve * r_curve / (p_curve + r_curve + eps)
    best = int(_smooth(f1_curve.mean(0), 0.1).argmax()) if k else 0
    return APResult(classes=classes.astype(int), nt=nt, p=p_curve[:, best], r=r_curve[:, best],
                    f1=f1_curve[:, best], ap=ap, conf_best=float(px[best]), px=px,
                    p_curve=p_curve, r_curve=r_curve, f1_curve=f1_curve, pr_curve=pr_curve)


class DetectionStats:
    """Accumulates per-image matches over a validation pass, then computes :class:`APResult`."""

    def __init__(self, iouv: torch.Tensor = IOU_THRESHOLDS):
        self.iouv = iouv
        self._tp: list[np.ndarray] = []
        self._conf: list[np.ndarray] = []
        self._pred_cls: list[np.ndarray] = []
        self._target_cls: list[np.ndarray] = []
        self.images_per_class: dict[int, int] = {}

    def update(self, detections: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one image: detections (n, 6) ``[x1, y1, x2, y2, conf, cls]``, labels (m, 5) ``[cls, x1..y2]``."""
        correct = match_predictions(detections, labels, self.iouv.to(detections.device))
        self._tp.append(correct.numpy())
        self._conf.append(detections[:, 4].detach().cpu().numpy())
        self._pred_cls.append(detections[:, 5].detach().cpu().numpy())
        target_cls = labels[:, 0].detach().cpu().numpy()
        self._target_cls.append(target_cls)
        for c in np.unique(target_cls).astype(int).tolist():
            self.images_per_class[c] = self.images_per_class.get(c, 0) + 1

    def compute(self) -> APResult:
        """Pool all images and run :func:`ap_per_class`."""
        t = self.iouv.numel()
        tp = np.concatenate(self._tp, 0) if self._tp else np.zeros((0, t), bool)
        cat = lambda xs: np.concatenate(xs, 0) if xs else np.zeros(0)  # noqa: E731
        return ap_per_class(tp, cat(self._conf), cat(self._pred_cls), cat(self._target_cls))

    @property
    def num_labels(self) -> int:
        """Total number of labels seen."""
        return int(sum(x.size for x in self._target_cls))


class ConfusionMatrix:
    """Detection confusion matrix with a background row/column (YOLOv5 layout).

    ``matrix[p, g]`` counts detections of class ``p`` matched to labels of class ``g``;
    index ``nc`` is background: ``matrix[nc, g]`` are missed labels, ``matrix[p, nc]`` are
    detections that match no label.
    """

    def __init__(self, nc: int, conf: float = 0.25, iou_thres: float = 0.45):
        self.nc = nc
        self.conf = conf
        self.iou_thres = iou_thres
        self.matrix = np.zeros((nc + 1, nc + 1), dtype=np.int64)

    def process_batch(self, detections: torch.Tensor | None, labels: torch.Tensor) -> None:
        """Add one image: detections (n, 6) ``[x1, y1, x2, y2, conf, cls]`` or None, labels (m, 5)."""
        gt_cls = labels[:, 0].long().cpu().numpy()
        if detections is None or detections.shape[0] == 0:
            np.add.at(self.matrix, (self.nc, gt_cls), 1)
            return
        detections = detections[detections[:, 4] > self.conf]
        det_cls = detections[:, 5].long().cpu().numpy()
        gi, di = np.zeros(0, int), np.zeros(0, int)
        if labels.shape[0] and detections.shape[0]:
            iou = box_iou(labels[:, 1:5].float(), detections[:, :4].float()).cpu().numpy()
            gi, di = greedy_match(iou, iou > self.iou_thres)
        np.add.at(self.matrix, (det_cls[di], gt_cls[gi]), 1)
        missed = np.setdiff1d(np.arange(gt_cls.size), gi)
        np.add.at(self.matrix, (self.nc, gt_cls[missed]), 1)
        unmatched = np.setdiff1d(np.arange(det_cls.size), di)
        np.add.at(self.matrix, (det_cls[unmatched], self.nc), 1)


def format_class_table(result: APResult, names: list[str], num_images: int,
                       images_per_class: dict[int, int] | None = None, verbose: bool = False) -> str:
    """YOLOv5 table: an ``all`` row and, with ``verbose``, one row per class that has labels."""
    head = ("%22s" + "%11s" * 6) % ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")
    fmt = "%22s" + "%11i" * 2 + "%11.3g" * 4
    m = result.mean()
    rows = [head, fmt % ("all", num_images, int(result.nt.sum()), m["P"], m["R"], m["mAP50"], m["mAP50-95"])]
    if verbose:
        images_per_class = images_per_class or {}
        for i, c in enumerate(result.classes.tolist()):
            name = class_name(names, c)
            rows.append(fmt % (name, images_per_class.get(c, 0), result.nt[i], result.p[i],
                               result.r[i], result.ap50[i], result.ap50_95[i]))
    return "\n".join(rows)
