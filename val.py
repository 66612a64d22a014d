"""Validate a detector: YOLOv5 metrics (P, R, mAP50, mAP50-95) and COCO AP for small/medium/large objects.

Usage:
    python val.py --weights runs/train/exp/weights/best.pt --data data/hit-uav.yaml
    python val.py --weights best.pt --data data/hit-uav.yaml --task test --save-json --verbose
    python val.py --weights best.pt --data data/hit-uav.yaml --slice 640 --overlap 0.2   # sliced
    python val.py --coco-gt instances_val.json --pred predictions.json    # any detector's results

COCO figures are computed on boxes mapped back to original image pixels, with object areas in
original pixels (small < 32^2 <= medium < 96^2 <= large), plus the extra bins of
``--area-ranges`` (default ``tiny=0,16``: boxes smaller than 16x16 px).

Detections per image: without ``--max-det``, NMS keeps up to 300 and the COCO figures count the
top 100 (COCO's maxDets, so AP compares with published figures). ``--max-det N`` sets both to N
(dense scenes: VisDrone frames hold more than 300 objects); the COCO table says which was used.

The work is done by utils/evaluation.py (``evaluate`` -> an EvalResult, no files) and
utils/eval_output.py (tables, plots, JSON, txt); train.py calls the same two every epoch.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from utils.coco_eval import COCO_MAX_DETS, DEFAULT_AREA_RANGES, evaluate_files, format_coco_table, parse_area_ranges
from utils.cli import add_inference_flags, run_cli
from utils.errors import ConfigError, DatasetError
from utils.eval_output import BatchPlotter, print_results, save_json, save_plots, save_txt
from utils.evaluation import EvalResult, evaluate

NMS_MAX_DET = 300  # NMS limit without --max-det: above COCO's 100, so the COCO top 100 are never cut by NMS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags (YOLOv5 names where YOLOv5 has them)."""
    p = argparse.ArgumentParser(description="Validate a detector: YOLOv5 metrics and COCO AP by object size.")
    p.add_argument("--data", type=str, help="dataset YAML")
    p.add_argument("--weights", type=str, help="checkpoint (.pt, ours or official YOLOv5), .onnx or .torchscript")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--imgsz", "--img", "--img-size", type=int, default=640, help="inference size (pixels)")
    add_inference_flags(p, conf_thres=0.001, iou_thres=0.6, max_det=None,
                        max_det_help=f"detections per image kept by NMS and counted by COCO AP/AR (default: NMS "
                                     f"{NMS_MAX_DET}, COCO {COCO_MAX_DETS}, COCO's own maxDets)")
    p.add_argument("--task", choices=("val", "test"), default="val", help="dataset split")
    p.add_argument("--workers", type=int, default=4, help="dataloader workers")
    p.add_argument("--verbose", action="store_true", help="per-class table")
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


def run_files(gt_json: str, pred_json: str, area_ranges: dict, max_dets: int = COCO_MAX_DETS) -> dict[str, float]:
    """``--coco-gt`` + ``--pred``: evaluate an existing results file; prints the COCO table."""
    stats, evaluator = evaluate_files(gt_json, pred_json, area_ranges, max_dets)
    print(f"{len(evaluator.gt['images'])} images, {len(evaluator.gt['annotations'])} GT boxes, "
          f"{evaluator.num_detections} detections")
    print(format_coco_table(stats, evaluator.gt_counts()))
    return stats


def _load(args: argparse.Namespace):
    """Model, device, dataset YAML and the image files of the ``--task`` split; checks their fit."""
    from utils.backends import load_inference_model
    from utils.data.config import load_data_config
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
    model, ckpt = load_inference_model(args.weights, device)  # a checkpoint, .onnx or TorchScript file
    if model.nc != data["nc"]:
        raise ConfigError(f"{args.weights} predicts {model.nc} classes but {args.data} has {data['nc']}")
    return model, ckpt, device, data, files


def _input_size(imgsz: int, fixed_hw: tuple[int, int] | None) -> tuple[int, bool]:
    """(letterbox size, rectangular batches). A fixed-size export gets square frames that fit its input."""
    if fixed_hw is None:
        return imgsz, True
    size = min(imgsz, *fixed_hw)
    if size != imgsz:
        print(f"--imgsz {imgsz} -> {size}: the exported model takes {fixed_hw[0]}x{fixed_hw[1]} inputs")
    return size, False


def _slicer(args: argparse.Namespace, model, half: bool, on_gpu: bool):
    """``--slice``: a function frame (HxWx3 BGR) -> (n, 6) detections in frame pixels, or None."""
    if not args.slice:
        return None
    from utils.slicing import sliced_predict

    return functools.partial(sliced_predict, model, slice_size=args.slice, overlap=args.overlap,
                             imgsz=args.imgsz, conf_thres=args.conf_thres, iou_thres=args.iou_thres,
                             max_det=args.max_det or NMS_MAX_DET, half=half, augment=args.augment,
                             batch_size=8 if on_gpu else 1)  # tile batches only pay on a GPU


def _write_outputs(result: EvalResult, args: argparse.Namespace, names: list[str], save_dir: Path) -> None:
    """Print the tables and write what the flags ask for into ``save_dir``."""
    print_results(result, names, args.verbose)
    if args.plots:
        save_plots(result, names, save_dir)
    if args.save_txt:
        save_txt(result, save_dir, args.save_conf)
    if args.save_json:
        print(f"COCO results saved to {save_json(result, save_dir)}")
    print(f"Results saved to {save_dir}")


def run(args: argparse.Namespace, area_ranges: dict) -> dict:
    """Evaluate ``--weights`` on the ``--task`` split of ``--data``; returns the metrics dict
    (floats, plus ``'per_class'``)."""
    from utils.data.loader import build_dataloader
    from utils.run_dir import increment_path

    model, ckpt, device, data, files = _load(args)
    half = args.half and device.type == "cuda"
    if args.half and not half:
        print("--half needs CUDA; running in FP32")
    model.fuse()
    save_dir = increment_path(Path(args.project) / args.name, exist_ok=args.exist_ok)
    imgsz, rect = _input_size(args.imgsz, getattr(model, "fixed_hw", None))
    loader, _ = build_dataloader(files, imgsz, args.batch_size, int(model.stride.max()), ckpt.get("hyp") or {},
                                 augment=False, rect=rect, workers=args.workers, shuffle=False, prefix=f"{args.task}: ",
                                 nc=data["nc"])
    names = data["names"]
    result = evaluate(model, loader, names, conf_thres=args.conf_thres, iou_thres=args.iou_thres,
                      max_det=args.max_det or NMS_MAX_DET, coco_max_dets=args.max_det or COCO_MAX_DETS,
                      coco_gt=args.coco_gt or data.get(f"{args.task}_json"), area_ranges=area_ranges,
                      augment=args.augment, half=half,
                      slicer=_slicer(args, model, half, device.type == "cuda"),
                      callback=BatchPlotter(save_dir, names) if args.plots else None)
    _write_outputs(result, args, names, save_dir)
    return result.as_dict()


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line to stderr and return 1."""
    args = parse_args(argv)
    return run_cli("val.py", lambda: _dispatch(args))


def _dispatch(args: argparse.Namespace) -> None:
    """A results file against --coco-gt, or --weights on a dataset split."""
    area_ranges = parse_area_ranges(args.area_ranges)
    if args.max_det is not None and args.max_det < 1:
        raise ConfigError(f"--max-det must be >= 1, got {args.max_det}")
    if args.pred or (args.coco_gt and not args.weights):
        if not (args.pred and args.coco_gt):
            raise ConfigError("--pred and --coco-gt go together (or add --weights and --data)")
        run_files(args.coco_gt, args.pred, area_ranges, args.max_det or COCO_MAX_DETS)
    else:
        run(args, area_ranges)


if __name__ == "__main__":
    sys.exit(main())
