"""Validate a detector: YOLOv5 metrics (P, R, mAP50, mAP50-95) and COCO AP for small/medium/large objects.

Usage:
    python val.py --weights runs/train/exp/weights/best.pt --data data/hit-uav.yaml
    python val.py --weights best.pt --data data/hit-uav.yaml --task test --save-json --verbose
    python val.py --weights best.pt --data data/hit-uav.yaml --slice 640 --overlap 0.2   # sliced
    python val.py --coco-gt instances_val.json --pred predictions.json    # any detector's results

COCO figures are computed on boxes mapped back to original image pixels, with object areas in
original pixels (small < 32^2 <= medium < 96^2 <= large), plus the extra bins of
``--area-ranges`` (default ``tiny=0,16``: boxes smaller than 16x16 px).
train.py calls :func:`evaluate` every epoch.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from utils.boxes import scale_boxes, xywh2xyxy, xyxy2xywhn
from utils.coco_eval import (DEFAULT_AREA_RANGES, CocoEvaluator, evaluate_files,
                             format_coco_table, load_coco_gt, parse_area_ranges, yolo_labels_to_coco)
from utils.errors import ConfigError, DatasetError, SodError
from utils.metrics import ConfusionMatrix, DetectionStats, format_class_table
from utils.nms import non_max_suppression
from utils.tta import tta_predict

PLOT_BATCHES = 3  # val_batch0..2 mosaics


def _coco_evaluator(dataset, names: list[str], coco_gt: str | Path | dict | None,
                    area_ranges: dict | None) -> tuple[CocoEvaluator, dict[str, int]]:
    """Evaluator for the split and the image id of each image file (by path).

    GT is the COCO JSON (ids matched by file name) when given, else the dataset's YOLO labels
    converted with the true image sizes (``dataset.shapes`` (N, 2) w, h).
    """
    files = [str(f) for f in dataset.img_files]
    if coco_gt is None:
        gt = yolo_labels_to_coco(dataset.labels, dataset.shapes, names, files)
        ev = CocoEvaluator(gt, area_ranges, nc=len(names))
        return ev, {f: i + 1 for i, f in enumerate(files)}
    gt = coco_gt if isinstance(coco_gt, dict) else load_coco_gt(coco_gt)
    ev = CocoEvaluator(gt, area_ranges, nc=len(names))
    if ev.mapping_note:
        print(ev.mapping_note)
    return ev, {f: ev.image_id(f) for f in files}


def _to_original(boxes_xyxy: torch.Tensor, input_hw: tuple[int, int], shape) -> torch.Tensor:
    """Letterboxed-input boxes -> original image pixels; ``shape`` = ((h0, w0), ratio_pad)."""
    return scale_boxes(input_hw, boxes_xyxy.clone(), shape[0], shape[1])


def _save_txt(det: torch.Tensor, shape0_hw: tuple[int, int], path: Path, save_conf: bool) -> None:
    """YOLO txt: ``cls cx cy w h [conf]`` normalized by the original image size."""
    h0, w0 = shape0_hw
    xywhn = xyxy2xywhn(det[:, :4].clone(), w=w0, h=h0)
    with open(path, "w", encoding="utf-8") as f:
        for row, box in zip(det.tolist(), xywhn.tolist()):
            vals = [int(row[5]), *box] + ([row[4]] if save_conf else [])
            f.write(("%g " * len(vals)).rstrip() % tuple(vals) + "\n")


class _Recorder:
    """Per-image bookkeeping of one validation pass (matching, confusion matrix, COCO, txt)."""

    def __init__(self, nc: int, coco: CocoEvaluator, image_ids: dict[str, int], save_dir: Path | None,
                 save_txt: bool, save_conf: bool):
        self.stats = DetectionStats()
        self.cm = ConfusionMatrix(nc)
        self.coco, self.image_ids = coco, image_ids
        self.txt_dir = None
        if save_txt and save_dir is not None:
            self.txt_dir = Path(save_dir) / "labels"
            self.txt_dir.mkdir(parents=True, exist_ok=True)
        self.save_conf = save_conf
        self.seen = 0

    def add(self, det: torch.Tensor, labels: torch.Tensor, path: str, shape0_hw: tuple[int, int]) -> None:
        """det (n, 6) and labels (m, 5) ``[cls, x1, y1, x2, y2]``, both in original pixels."""
        self.seen += 1
        self.stats.update(det, labels)
        self.cm.process_batch(det, labels)
        if str(path) not in self.image_ids:
            raise ValueError(f"image {path} from the dataloader is not in its dataset's file list")
        self.coco.add(self.image_ids[str(path)], det[:, :4], det[:, 4], det[:, 5])
        if self.txt_dir is not None:
            _save_txt(det, shape0_hw, self.txt_dir / f"{Path(path).stem}.txt", self.save_conf)


def _predict_batch(model: nn.Module, x: torch.Tensor, augment: bool, need_pred: bool, need_raw: bool,
                   nms_kw: dict) -> tuple[list[torch.Tensor] | None, list[torch.Tensor] | None]:
    """Forward one batch x (B, 3, H, W) in [0, 1]: (raw level outputs or None, per-image (n, 6) or None)."""
    if not (need_pred or need_raw):
        return None, None
    if augment and need_pred:
        raw, pred = tta_predict(model, x)
    else:
        raw = model(x)
        pred = model.detect.decode(raw) if need_pred else None
    out = non_max_suppression(pred.float(), multi_label=True, **nms_kw) if need_pred else None
    return raw, out


def _record_batch(rec: _Recorder, input_hw: tuple[int, int], out: list[torch.Tensor] | None,
                  targets: torch.Tensor, paths, shapes, slicer: Callable | None) -> list[torch.Tensor]:
    """Map labels and detections of each image to original pixels and record them.

    targets: (N, 6) ``[batch, cls, cx, cy, w, h]`` in input pixels. Returns the detections in
    original pixels (what the sliced path produced, or ``out`` mapped back).
    """
    dets = []
    for si, path in enumerate(paths):
        labels = targets[targets[:, 0] == si, 1:]
        boxes = _to_original(xywh2xyxy(labels[:, 1:5]), input_hw, shapes[si])
        labels = torch.cat((labels[:, :1], boxes), 1)
        if slicer is not None:
            img = cv2.imread(str(path))
            if img is None:
                raise FileNotFoundError(f"cannot read image {path}")
            det = slicer(img).to(labels.device).float()
        else:
            det = out[si].clone()
            det[:, :4] = _to_original(det[:, :4], input_hw, shapes[si])
        rec.add(det, labels, path, tuple(shapes[si][0]))
        dets.append(det)
    return dets


def _plot_batch(save_dir: Path, bi: int, imgs: torch.Tensor, targets: torch.Tensor, paths,
                out: list[torch.Tensor] | None, names: list[str]) -> None:
    """val_batch{bi}_labels.jpg and, when letterbox-space detections exist, val_batch{bi}_pred.jpg."""
    from utils.plots import output_to_target, plot_images

    plot_images(imgs, targets.cpu(), paths, save_dir / f"val_batch{bi}_labels.jpg", names)
    if out is not None:
        plot_images(imgs, output_to_target(out), paths, save_dir / f"val_batch{bi}_pred.jpg", names)


@torch.no_grad()
def evaluate(model: nn.Module, dataloader, names: list[str], *, conf_thres: float = 0.001,
             iou_thres: float = 0.6, max_det: int = 300, coco_gt: str | Path | dict | None = None,
             save_dir: str | Path | None = None, plots: bool = False,
             area_ranges: dict[str, tuple[float, float]] | None = None, compute_loss: Callable | None = None,
             augment: bool = False, half: bool = False, save_json: bool = False, save_txt: bool = False,
             save_conf: bool = False, verbose: bool = False, slicer: Callable | None = None) -> dict:
    """One validation pass: YOLOv5 metrics, COCO metrics, losses, plots and files.

    Args:
        model: DetectionModel (``model(x)`` raw levels, ``model.detect.decode``, ``model.stride``).
        dataloader: yields (imgs uint8 (B, 3, H, W), targets (N, 6) normalized, paths, shapes);
            ``dataloader.dataset`` has ``labels``, ``shapes`` (N, 2) w, h and ``img_files``.
        names: class names (index = class id).
        coco_gt: COCO GT JSON (path or dict) of the split; None = built from the YOLO labels.
        area_ranges: extra COCO size bins ``{name: (min_area, max_area)}`` (original px^2).
        compute_loss: ``loss, loss_items (3,), extras = compute_loss(raw, targets)``.
        augment: test-time augmentation (:data:`utils.tta.TTA_PASSES`); half: FP16 on CUDA only.
        slicer: ``slicer(img_bgr HxWx3) -> (n, 6) [x1, y1, x2, y2, conf, cls]`` in original pixels;
            when given, detections come from it (sliced inference) instead of the batch.

    Returns:
        floats 'P', 'R', 'mAP50', 'mAP50-95', the COCO keys 'AP' ... 'ARl', 'AP_<name>' /
        'AR_<name>' per extra bin, 'val/box_loss', 'val/obj_loss', 'val/cls_loss' (with
        compute_loss), and 'per_class': list of dicts (the only non-float value).
    """
    device = next(model.parameters()).device
    half = half and device.type == "cuda"
    save_dir = Path(save_dir) if save_dir is not None else None
    if save_dir is not None:
        save_dir.mkdir(parents=True, exist_ok=True)
    coco, image_ids = _coco_evaluator(dataloader.dataset, names, coco_gt, area_ranges)
    rec = _Recorder(len(names), coco, image_ids, save_dir, save_txt, save_conf)
    was_training = model.training
    model.eval()
    if half:
        model.half()
    try:
        nms_kw = dict(conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det)
        loss = _run_pass(model, dataloader, rec, names, nms_kw, save_dir if plots else None, compute_loss,
                         augment, half, slicer)
    finally:  # train.py keeps using this (EMA) model: restore FP32 and its mode even on errors
        if half:
            model.float()
        model.train(was_training)
    metrics = _report(rec, names, save_dir, plots, verbose, save_json, coco_gt is None)
    if loss is not None:
        metrics.update({"val/box_loss": loss[0], "val/obj_loss": loss[1], "val/cls_loss": loss[2]})
    return metrics


def _run_pass(model: nn.Module, dataloader, rec: _Recorder, names: list[str], nms_kw: dict,
              plot_dir: Path | None, compute_loss: Callable | None, augment: bool, half: bool,
              slicer: Callable | None) -> list[float] | None:
    """Iterate the dataloader once, recording every image; returns the mean loss items or None."""
    device = next(model.parameters()).device
    loss, nb = torch.zeros(3, device=device), 0
    desc = ("%22s" + "%11s" * 6) % ("Class", "Images", "Instances", "P", "R", "mAP50", "mAP50-95")
    bar = tqdm(dataloader, desc=desc, bar_format="{l_bar}{bar:10}{r_bar}")
    for bi, (imgs, targets, paths, shapes) in enumerate(bar):
        x = imgs.to(device, non_blocking=True)
        x = (x.half() if half else x.float()) / 255
        targets = targets.to(device).float()
        raw, out = _predict_batch(model, x, augment, slicer is None, compute_loss is not None, nms_kw)
        if compute_loss is not None:
            loss += compute_loss([r.float() for r in raw], targets)[1].detach().float()
        h, w = x.shape[2:]
        tpix = targets.clone()
        tpix[:, 2:] *= torch.tensor((w, h, w, h), device=device)
        _record_batch(rec, (h, w), out, tpix, paths, shapes, slicer)
        if plot_dir is not None and bi < PLOT_BATCHES:
            _plot_batch(plot_dir, bi, imgs, targets, paths, out, names)
        nb += 1
    return (loss / max(nb, 1)).tolist() if compute_loss is not None else None


def _report(rec: _Recorder, names: list[str], save_dir: Path | None, plots: bool, verbose: bool,
            save_json: bool, gt_from_labels: bool) -> dict:
    """Compute, print, plot and save the results of a finished pass; returns the metrics dict."""
    res = rec.stats.compute()
    if rec.stats.num_labels == 0:
        print("WARNING: no labels in this split, metrics are zero")
    print(format_class_table(res, names, rec.seen, rec.stats.images_per_class, verbose))
    coco_stats = rec.coco.summarize(rec.coco.seen_ids)
    counts = rec.coco.gt_counts(rec.coco.seen_ids)
    print(format_coco_table(coco_stats, counts))
    if plots and save_dir is not None:
        _save_plots(res, rec.cm.matrix, coco_stats, counts, names, save_dir)
    if save_json and save_dir is not None:
        path = rec.coco.save_json(save_dir / "predictions.json")
        if gt_from_labels:  # ids of the converted GT, so --coco-gt/--pred can re-run the pair
            with open(save_dir / "gt_coco.json", "w", encoding="utf-8") as f:
                json.dump(rec.coco.gt, f)
        print(f"COCO results saved to {path}")
    per_class = [{"class": names[c] if c < len(names) else str(c), "images": rec.stats.images_per_class.get(c, 0),
                  "instances": int(res.nt[i]), "P": float(res.p[i]), "R": float(res.r[i]),
                  "mAP50": float(res.ap50[i]), "mAP50-95": float(res.ap50_95[i])}
                 for i, c in enumerate(res.classes.tolist())]
    return {**res.mean(), **coco_stats, "per_class": per_class}


def _save_plots(res, matrix: np.ndarray, coco_stats: dict, counts: dict, names: list[str], save_dir: Path) -> None:
    """confusion_matrix.png, PR/F1/P/R curves and ap_by_size.png in ``save_dir``."""
    from utils import plots

    plots.plot_confusion_matrix(matrix, names, save_dir / "confusion_matrix.png")
    plots.plot_pr_curve(np.linspace(0, 1, 101), res.pr_curve, res.ap50, res.classes, names, save_dir / "PR_curve.png")
    for fname, curve, label in (("F1_curve.png", res.f1_curve, "F1"), ("P_curve.png", res.p_curve, "Precision"),
                                ("R_curve.png", res.r_curve, "Recall")):
        plots.plot_metric_curve(res.px, curve, res.classes, names, save_dir / fname, label)
    plots.plot_ap_by_size(coco_stats, save_dir / "ap_by_size.png", counts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags (YOLOv5 names where YOLOv5 has them)."""
    p = argparse.ArgumentParser(description="Validate a detector: YOLOv5 metrics and COCO AP by object size.")
    p.add_argument("--data", type=str, help="dataset YAML")
    p.add_argument("--weights", type=str, help="checkpoint (.pt) to evaluate")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="inference size (pixels)")
    p.add_argument("--conf-thres", type=float, default=0.001)
    p.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=300, help="maximum detections per image")
    p.add_argument("--task", choices=("val", "test"), default="val", help="dataset split")
    p.add_argument("--device", default="", help="'' (auto), cpu, 0, cuda:0")
    p.add_argument("--workers", type=int, default=4, help="dataloader workers")
    p.add_argument("--half", action="store_true", help="FP16 inference (CUDA only)")
    p.add_argument("--augment", action="store_true", help="test-time augmentation (flip, scales 0.83/0.67)")
    p.add_argument("--verbose", action="store_true", help="per-class table")
    p.add_argument("--save-json", action="store_true", help="write predictions.json (COCO results format)")
    p.add_argument("--save-txt", action="store_true", help="write YOLO txt predictions to labels/")
    p.add_argument("--save-conf", action="store_true", help="add the confidence to --save-txt lines")
    p.add_argument("--area-ranges", nargs="*", default=list(DEFAULT_AREA_RANGES), metavar="NAME=MIN,MAX",
                   help="extra COCO size bins, box side in original pixels (default: tiny=0,16; none: no extras)")
    p.add_argument("--project", default="runs/val", help="save results to project/name")
    p.add_argument("--name", default="exp")
    p.add_argument("--exist-ok", action="store_true", help="reuse project/name instead of a new expN")
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True, help="save plots")
    p.add_argument("--coco-gt", type=str, help="COCO ground-truth JSON (overrides the dataset YAML's)")
    p.add_argument("--pred", type=str, help="COCO results JSON to evaluate against --coco-gt (no model)")
    p.add_argument("--slice", type=int, default=0, metavar="SIZE", help="sliced inference with SIZE-px tiles")
    p.add_argument("--overlap", type=float, default=0.2, help="tile overlap fraction for --slice")
    return p.parse_args(argv)


def run_files(gt_json: str, pred_json: str, area_ranges: dict) -> dict[str, float]:
    """``--coco-gt`` + ``--pred``: evaluate an existing results file; prints the COCO table."""
    stats, evaluator = evaluate_files(gt_json, pred_json, area_ranges)
    print(f"{len(evaluator.gt['images'])} images, {len(evaluator.gt['annotations'])} GT boxes, "
          f"{evaluator.num_detections} detections")
    print(format_coco_table(stats, evaluator.gt_counts()))
    return stats


def run(args: argparse.Namespace, area_ranges: dict) -> dict:
    """Evaluate ``--weights`` on the ``--task`` split of ``--data``; returns the metrics dict."""
    from utils.checkpoint import load_model
    from utils.data.config import load_data_config
    from utils.data.loader import build_dataloader
    from utils.run_dir import increment_path
    from utils.torch_utils import select_device

    if not args.data or not args.weights:
        raise ConfigError("--data and --weights are required (or --coco-gt with --pred)")
    if args.pred:
        raise ConfigError("--pred evaluates a results file and takes --coco-gt, not --weights/--data")
    device = select_device(args.device)
    data = load_data_config(args.data)
    files = data.get(args.task)
    if not files:
        raise DatasetError(f"dataset YAML {args.data} has no '{args.task}' split")
    model, ckpt = load_model(args.weights, device)
    if model.nc != data["nc"]:
        raise ConfigError(f"{args.weights} predicts {model.nc} classes but {args.data} has {data['nc']}")
    half = args.half and device.type == "cuda"
    if args.half and not half:
        print("--half needs CUDA; running in FP32")
    model.fuse()
    save_dir = increment_path(Path(args.project) / args.name, exist_ok=args.exist_ok)
    loader, _ = build_dataloader(files, args.imgsz, args.batch_size, int(model.stride.max()), ckpt.get("hyp") or {},
                                 augment=False, rect=True, workers=args.workers, shuffle=False, prefix=f"{args.task}: ")
    slicer = None
    if args.slice:
        from utils.slicing import sliced_predict
        slicer = functools.partial(sliced_predict, model, slice_size=args.slice, overlap=args.overlap,
                                   imgsz=args.imgsz, conf_thres=args.conf_thres, iou_thres=args.iou_thres,
                                   max_det=args.max_det, half=half, augment=args.augment,
                                   batch_size=8 if device.type == "cuda" else 1)  # tile batches only pay on a GPU
    metrics = evaluate(model, loader, data["names"], conf_thres=args.conf_thres, iou_thres=args.iou_thres,
                       max_det=args.max_det, coco_gt=args.coco_gt or data.get(f"{args.task}_json"),
                       save_dir=save_dir, plots=args.plots, area_ranges=area_ranges, augment=args.augment,
                       half=half, save_json=args.save_json, save_txt=args.save_txt, save_conf=args.save_conf,
                       verbose=args.verbose, slicer=slicer)
    print(f"Results saved to {save_dir}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line to stderr and return 1."""
    args = parse_args(argv)
    try:
        area_ranges = parse_area_ranges(args.area_ranges)
        if args.pred or (args.coco_gt and not args.weights):
            if not (args.pred and args.coco_gt):
                raise ConfigError("--pred and --coco-gt go together (or add --weights and --data)")
            run_files(args.coco_gt, args.pred, area_ranges)
        else:
            run(args, area_ranges)
    except SodError as e:
        print(f"val.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
