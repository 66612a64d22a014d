"""The evaluation engine: a model and a validation loader in, an :class:`EvalResult` out.

One pass over the loader computes the YOLOv5 figures (P, R, mAP50, mAP50-95, per class, the
confusion matrix and the P/R/F1 curves, utils/metrics.py) and the COCO figures (AP ... ARl and
the extra size bins, utils/coco_eval.py) on boxes mapped back to original image pixels.
Nothing here prints a table, draws a plot or writes a file: utils/eval_output.py does that from
the result, and a caller that needs the letterboxed batches (the val_batch* mosaics) passes an
:class:`EvalCallback`. val.py and the trainer both call :func:`evaluate`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from utils.boxes import scale_boxes, xywh2xyxy
from utils.coco_eval import COCO_MAX_DETS, CocoEvaluator, load_coco_gt, yolo_labels_to_coco
from utils.errors import CocoFormatError, MissingFileError
from utils.metrics import APResult, ConfusionMatrix, DetectionStats
from utils.nms import non_max_suppression
from utils.torch_utils import model_device
from utils.tta import tta_predict
from utils.annotate import class_name

LOSS_KEYS = ("val/box_loss", "val/obj_loss", "val/cls_loss")


class EvalCallback:
    """Hook into the pass; the base class does nothing. Subclass and override what you need."""

    def on_batch(self, batch_index: int, imgs: torch.Tensor, targets: torch.Tensor, paths: Sequence[str],
                 out: list[torch.Tensor] | None) -> None:
        """After each batch.

        Args:
            imgs: (B, 3, H, W) uint8 letterboxed input, as the loader gave it.
            targets: (N, 6) ``[batch, cls, cx, cy, w, h]`` normalized to the input size.
            out: per image (n, 6) ``[x1, y1, x2, y2, conf, cls]`` in input pixels, or None when
                the detections came from a slicer (they exist only in original pixels).
        """


@dataclass
class ImageDetections:
    """The detections of one image: ``det`` (n, 6) ``[x1, y1, x2, y2, conf, cls]`` original px, CPU."""

    path: str
    shape_hw: tuple[int, int]  # original (height, width)
    det: torch.Tensor


@dataclass
class EvalResult:
    """Everything one validation pass found; printing and writing live in utils/eval_output.py.

    ``metrics``: floats 'P', 'R', 'mAP50', 'mAP50-95', COCO 'AP' ... 'ARl', 'AP_<name>' /
    'AR_<name>' per extra size bin, and 'val/box_loss', 'val/obj_loss', 'val/cls_loss' when a
    loss was given. ``per_class``: one dict per class with labels (class, images, instances, P,
    R, mAP50, mAP50-95). ``ap``: the per-class arrays and P/R/F1/PR curves. ``confusion``:
    (nc + 1, nc + 1) counts, background last. ``coco``: the evaluator holding the GT and every
    detection in COCO form (for predictions.json / gt_coco.json). ``images``: per-image
    detections in dataloader order. ``gt_counts``: GT boxes per size bin of the seen images.
    ``coco_stats``: the COCO subset of ``metrics``. ``notes``: remarks for the user (e.g. how
    COCO category ids were mapped).
    """

    metrics: dict[str, float]
    per_class: list[dict]
    ap: APResult
    confusion: np.ndarray
    coco: CocoEvaluator
    images: list[ImageDetections]
    seen: int
    num_labels: int
    images_per_class: dict[int, int]
    gt_counts: dict[str, int]
    coco_stats: dict[str, float]
    gt_from_labels: bool
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """``metrics`` plus ``'per_class'``: the dict train.py logs and val.run returns."""
        return {**self.metrics, "per_class": self.per_class}


def _coco_evaluator(dataset, names: list[str], coco_gt: str | Path | dict | None, area_ranges: dict | None,
                    max_dets: int) -> tuple[CocoEvaluator, dict[str, int]]:
    """Evaluator for the split and the GT image id of each image file (by path).

    GT is the COCO JSON (ids matched by file name, see utils/coco_eval.py) when given, else the
    dataset's YOLO labels converted with the true image sizes (``dataset.shapes`` (N, 2) w, h).
    Raises CocoFormatError when two images of the split match the same GT image.
    """
    files = [str(f) for f in dataset.img_files]
    if coco_gt is None:
        gt = yolo_labels_to_coco(dataset.labels, dataset.shapes, names, files)
        ev = CocoEvaluator(gt, area_ranges, nc=len(names), max_dets=max_dets)
        return ev, {f: i + 1 for i, f in enumerate(files)}
    gt = coco_gt if isinstance(coco_gt, dict) else load_coco_gt(coco_gt)
    ev = CocoEvaluator(gt, area_ranges, nc=len(names), max_dets=max_dets)
    ids = {f: ev.image_id(f) for f in files}
    by_id: dict[int, list[str]] = {}
    for f, i in ids.items():
        by_id.setdefault(i, []).append(f)
    shared = [fs for fs in by_id.values() if len(fs) > 1]
    if shared:
        raise CocoFormatError(f"images {' and '.join(shared[0])} match the same COCO ground-truth image (file names "
                              f"alike; {len(shared)} such groups): give each file_name its folder, e.g. seq1/000001.jpg")
    return ev, ids


class _Accumulator:
    """Per-image bookkeeping of one pass: matching, confusion matrix, COCO detections, the list."""

    def __init__(self, nc: int, coco: CocoEvaluator, image_ids: dict[str, int]):
        self.stats = DetectionStats()
        self.cm = ConfusionMatrix(nc)
        self.coco, self.image_ids = coco, image_ids
        self.images: list[ImageDetections] = []

    def add(self, det: torch.Tensor, labels: torch.Tensor, path: str, shape0_hw: tuple[int, int]) -> None:
        """det (n, 6) and labels (m, 5) ``[cls, x1, y1, x2, y2]``, both in original pixels."""
        if str(path) not in self.image_ids:
            raise ValueError(f"image {path} from the dataloader is not in its dataset's file list")
        self.stats.update(det, labels)
        self.cm.process_batch(det, labels)
        self.coco.add(self.image_ids[str(path)], det[:, :4], det[:, 4], det[:, 5])
        h0, w0 = (int(v) for v in shape0_hw)
        self.images.append(ImageDetections(str(path), (h0, w0), det.detach().float().cpu()))


def _predict_batch(model: nn.Module, x: torch.Tensor, augment: bool, need_pred: bool, need_raw: bool,
                   nms_kw: dict) -> tuple[list[torch.Tensor] | None, list[torch.Tensor] | None]:
    """Forward x (B, 3, H, W) in [0, 1]: (raw level outputs or None, per-image (n, 6) input px or None)."""
    if not (need_pred or need_raw):
        return None, None
    if augment and need_pred:
        raw, pred = tta_predict(model, x)
        pred = list(pred.float())
    else:
        raw = model(x)
        pred = _decode(model.detect, raw, nms_kw["conf_thres"]) if need_pred else None
    out = non_max_suppression(pred, multi_label=True, **nms_kw) if need_pred else None
    return raw, out


def _decode(head, raw: list[torch.Tensor], conf_thres: float) -> list[torch.Tensor]:
    """Per-image float32 rows (n_i, 5 + nc) that can pass NMS at ``conf_thres``.

    On CPU (yolov5n-p2 at 640) decoding only the candidates was as fast as the full decode at
    conf 0.001 when half the rows pass (NMS dominates) and faster with fewer; heads without
    ``decode_candidates`` (stand-ins) decode fully.
    """
    if hasattr(head, "decode_candidates"):
        return [p.float() for p in head.decode_candidates(raw, conf_thres)]
    return list(head.decode(raw).float())


def _to_original(boxes_xyxy: torch.Tensor, input_hw: tuple[int, int], shape) -> torch.Tensor:
    """Letterboxed-input boxes -> original image pixels; ``shape`` = ((h0, w0), ratio_pad)."""
    return scale_boxes(input_hw, boxes_xyxy.clone(), shape[0], shape[1])


def _read_image(path: str) -> np.ndarray:
    """HxWx3 BGR image for the slicer (which works on the original, not the letterboxed batch)."""
    img = cv2.imread(str(path))
    if img is None:
        raise MissingFileError(f"cannot read image {path}")
    return img


def _record_batch(acc: _Accumulator, input_hw: tuple[int, int], out: list[torch.Tensor] | None,
                  targets: torch.Tensor, paths, shapes, slicer: Callable | None) -> None:
    """Map labels and detections of each image to original pixels and record them.

    targets: (N, 6) ``[batch, cls, cx, cy, w, h]`` in input pixels; ``out`` per image (n, 6) in
    input pixels (ignored when ``slicer`` gives the detections in original pixels).
    """
    for si, path in enumerate(paths):
        labels = targets[targets[:, 0] == si, 1:]
        boxes = _to_original(xywh2xyxy(labels[:, 1:5]), input_hw, shapes[si])
        labels = torch.cat((labels[:, :1], boxes), 1)
        if slicer is not None:
            det = slicer(_read_image(path)).to(labels.device).float()
        else:
            det = out[si].clone()
            det[:, :4] = _to_original(det[:, :4], input_hw, shapes[si])
        acc.add(det, labels, path, tuple(shapes[si][0]))


def _run_pass(model: nn.Module, dataloader, acc: _Accumulator, nms_kw: dict, compute_loss: Callable | None,
              augment: bool, half: bool, slicer: Callable | None,
              callback: EvalCallback | None) -> list[float] | None:
    """Iterate the dataloader once, recording every image; returns the mean loss items or None."""
    device = model_device(model)
    loss, nb = torch.zeros(3, device=device), 0
    desc = ("%22s" + "%11s" * 6) % ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")
    for bi, (imgs, targets, paths, shapes) in enumerate(tqdm(dataloader, desc=desc,
                                                             bar_format="{l_bar}{bar:10}{r_bar}")):
        x = imgs.to(device, non_blocking=True)
        x = (x.half() if half else x.float()) / 255
        targets = targets.to(device).float()
        raw, out = _predict_batch(model, x, augment, slicer is None, compute_loss is not None, nms_kw)
        if compute_loss is not None:
            loss += compute_loss([r.float() for r in raw], targets)[1].detach().float()
        h, w = x.shape[2:]
        tpix = targets.clone()
        tpix[:, 2:] *= torch.tensor((w, h, w, h), device=device)
        _record_batch(acc, (h, w), out, tpix, paths, shapes, slicer)
        if callback is not None:
            callback.on_batch(bi, imgs, targets, paths, out)
        nb += 1
    return (loss / max(nb, 1)).tolist() if compute_loss is not None else None


def _result(acc: _Accumulator, names: list[str], loss: list[float] | None, gt_from_labels: bool) -> EvalResult:
    """Compute the YOLOv5 and COCO figures of a finished pass."""
    res = acc.stats.compute()
    coco_stats = acc.coco.summarize(acc.coco.seen_ids)
    metrics = {**res.mean(), **coco_stats}
    if loss is not None:
        metrics.update(zip(LOSS_KEYS, loss))
    per_class = [{"class": class_name(names, c), "images": acc.stats.images_per_class.get(c, 0),
                  "instances": int(res.nt[i]), "P": float(res.p[i]), "R": float(res.r[i]),
                  "mAP50": float(res.ap50[i]), "mAP50-95": float(res.ap50_95[i])}
                 for i, c in enumerate(res.classes.tolist())]
    notes = [acc.coco.mapping_note] if acc.coco.mapping_note else []  # printed by utils/eval_output.py
    if acc.stats.num_labels == 0:
        notes.append("WARNING: no labels in this split, metrics are zero")
    return EvalResult(metrics=metrics, per_class=per_class, ap=res, confusion=acc.cm.matrix.copy(), coco=acc.coco,
                      images=acc.images, seen=len(acc.images), num_labels=acc.stats.num_labels,
                      images_per_class=dict(acc.stats.images_per_class),
                      gt_counts=acc.coco.gt_counts(acc.coco.seen_ids), coco_stats=coco_stats,
                      gt_from_labels=gt_from_labels, notes=notes)


@torch.no_grad()
def evaluate(model: nn.Module, dataloader, names: list[str], *, conf_thres: float = 0.001,
             iou_thres: float = 0.6, max_det: int = 300, coco_gt: str | Path | dict | None = None,
             area_ranges: dict[str, tuple[float, float]] | None = None, compute_loss: Callable | None = None,
             augment: bool = False, half: bool = False, slicer: Callable | None = None,
             callback: EvalCallback | None = None, coco_max_dets: int = COCO_MAX_DETS) -> EvalResult:
    """One validation pass; writes no file.

    Args:
        model: DetectionModel (``model(x)`` raw levels, ``model.detect.decode``, ``model.stride``).
        dataloader: yields (imgs uint8 (B, 3, H, W), targets (N, 6) normalized, paths, shapes);
            ``dataloader.dataset`` has ``labels``, ``shapes`` (N, 2) w, h and ``img_files``.
        names: class names (index = class id).
        conf_thres, iou_thres, max_det: NMS settings (multi-label, at most max_det per image).
        coco_gt: COCO GT JSON (path or dict) of the split; None = built from the YOLO labels.
        area_ranges: extra COCO size bins ``{name: (min_area, max_area)}`` (original px^2).
        compute_loss: ``loss, loss_items (3,), extras = compute_loss(raw, targets)``.
        augment: test-time augmentation (:data:`utils.tta.TTA_PASSES`); half: FP16 on CUDA only.
        slicer: ``slicer(img_bgr HxWx3) -> (n, 6) [x1, y1, x2, y2, conf, cls]`` in original pixels;
            when given, detections come from it (sliced inference) instead of the batch.
        callback: its ``on_batch`` sees every letterboxed batch (e.g. to draw mosaics).
        coco_max_dets: detections per image the COCO figures count (maxDets; 100 = COCO's). Keep
            ``max_det`` at least as large, or NMS caps what COCO could count.
    """
    device = model_device(model)
    half = half and device.type == "cuda"
    coco, image_ids = _coco_evaluator(dataloader.dataset, names, coco_gt, area_ranges, coco_max_dets)
    acc = _Accumulator(len(names), coco, image_ids)
    was_training = model.training
    model.eval()
    if half:
        model.half()
    try:
        nms_kw = dict(conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det)
        loss = _run_pass(model, dataloader, acc, nms_kw, compute_loss, augment, half, slicer, callback)
    finally:  # the trainer keeps using this (EMA) model: restore FP32 and its mode even on errors
        if half:
            model.float()
        model.train(was_training)
    return _result(acc, names, loss, coco_gt is None)
