"""Run a trained detector on images, folders, globs, videos, .txt lists, webcams and streams.

Usage:
    python detect.py --source img.jpg                  # also: folder/, 'dir/*.jpg', list.txt
    python detect.py --source video.mp4 --save-txt     # annotated video + one label file per frame
    python detect.py --source 0                        # webcam; or rtsp://..., http://...
    python detect.py --source big_aerial.jpg --slice 640 --overlap 0.2   # sliced inference

--weights takes a checkpoint of this project, an official YOLOv5 .pt, or an .onnx / .torchscript
file written by export.py (same flags and outputs).
Without --weights the best.pt of the newest run under runs/train is used; without --source, the
validation images of the bundled sample (data/hit-uav-sample). Results go to
runs/detect/exp, exp2, ... (--project/--name). Bad input ends with one line on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from utils.backends import load_inference_model
from utils.cli import add_inference_flags, run_cli
from utils.errors import ConfigError
from utils.run_dir import increment_path
from utils.slicing import MATCH_METRICS, MERGE_MODES, predict_image, sliced_predict, tile_coordinates
from utils.sources import load_source, quiet_video_logs
from utils.torch_utils import select_device, time_sync
from utils.video_writer import ResultWriter

LOGGER = logging.getLogger("detect")
TRAIN_RUNS = Path("runs/train")
SAMPLE_SOURCE = Path(__file__).resolve().parent / "data" / "hit-uav-sample" / "images" / "val"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags (YOLOv5 detect.py names and defaults, plus the --slice group)."""
    p = argparse.ArgumentParser(description="Detect objects in images, videos and streams.")
    p.add_argument("--weights", type=str, default=None,
                   help="checkpoint .pt (ours or official YOLOv5), .onnx or .torchscript from export.py "
                        "(default: best.pt of the newest run under runs/train)")
    p.add_argument("--source", type=str, default=str(SAMPLE_SOURCE),
                   help="image, folder, glob, video, .txt list, webcam index or rtsp/http URL "
                        "(default: the bundled sample's validation images)")
    p.add_argument("--imgsz", "--img", "--img-size", nargs="+", type=int, default=[640], help="inference size h,w")
    add_inference_flags(p, conf_thres=0.25, iou_thres=0.45, max_det=1000)
    p.add_argument("--view-img", action="store_true", help="show results in a window")
    p.add_argument("--save-crop", action="store_true", help="save cropped prediction boxes")
    p.add_argument("--nosave", action="store_true", help="do not save annotated images/videos")
    p.add_argument("--classes", nargs="+", type=int, help="keep only these classes: --classes 0, or --classes 0 2 3")
    p.add_argument("--agnostic-nms", action="store_true", help="class-agnostic NMS")
    p.add_argument("--project", default="runs/detect", help="save results to project/name")
    p.add_argument("--name", default="exp", help="save results to project/name")
    p.add_argument("--exist-ok", action="store_true", help="existing project/name ok, do not increment")
    p.add_argument("--line-thickness", default=None, type=int, help="bounding box thickness (pixels); default from image size")
    p.add_argument("--hide-labels", action="store_true", help="hide labels")
    p.add_argument("--hide-conf", action="store_true", help="hide confidences")
    p.add_argument("--vid-stride", type=int, default=1, help="video frame-rate stride")
    s = p.add_argument_group("sliced inference (SAHI style)")
    s.add_argument("--slice", type=int, default=0, metavar="SIZE", help="tile side in pixels (0: off)")
    s.add_argument("--overlap", type=float, default=0.2, help="fraction of a tile shared with its neighbour")
    s.add_argument("--slice-full", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the whole frame at --imgsz and merge its boxes")
    s.add_argument("--slice-merge", choices=MERGE_MODES, default="nms",
                   help="merge duplicates across tiles by NMS or greedy non-maximum merging")
    s.add_argument("--slice-match", choices=MATCH_METRICS, default="ios", help="overlap measure for --slice-merge nmm")
    s.add_argument("--slice-batch", type=int, default=0,
                   help="tiles per forward pass (0: 8 on CUDA, 1 on CPU, where bigger batches measured slower)")
    return p.parse_args(argv)


def newest_weights(train_dir: Path = TRAIN_RUNS) -> Path:
    """The most recently written ``<train_dir>/*/weights/best.pt``."""
    found = list(train_dir.glob("*/weights/best.pt"))
    if not found:
        raise ConfigError(f"no --weights given and no {train_dir}/*/weights/best.pt found: "
                        "train a model first or pass --weights path/to/best.pt")
    return max(found, key=lambda p: p.stat().st_mtime)


def check_imgsz(imgsz: list[int], stride: int) -> tuple[int, int]:
    """--imgsz (1 or 2 values) -> (h, w), each rounded up to a multiple of the model stride."""
    if len(imgsz) not in (1, 2) or min(imgsz) < 1:
        raise ConfigError(f"--imgsz takes one or two positive sizes (h w), got {imgsz}")
    h, w = (imgsz * 2)[:2]
    new = (-(-h // stride) * stride, -(-w // stride) * stride)
    if new != (h, w):
        LOGGER.warning(f"WARNING: --imgsz {h} {w} must be a multiple of the stride {stride}, using {new[0]} {new[1]}")
    return new


def check_flags(args: argparse.Namespace) -> None:
    """Reject flag values that would fail later with a less clear message."""
    if not 0 <= args.conf_thres <= 1 or not 0 <= args.iou_thres <= 1:
        raise ConfigError(f"--conf-thres and --iou-thres must be in [0, 1], got {args.conf_thres} and {args.iou_thres}")
    if args.max_det < 1 or args.vid_stride < 1 or args.slice_batch < 0 or args.slice < 0:
        raise ConfigError("--max-det and --vid-stride must be >= 1, --slice and --slice-batch >= 0")
    if not 0 <= args.overlap < 1:
        raise ConfigError(f"--overlap must be in [0, 1), got {args.overlap}")


@dataclass(kw_only=True)
class Predictor:
    """Whole-frame or sliced inference with fixed settings; accumulates stage times (seconds)."""

    model: torch.nn.Module
    imgsz: tuple[int, int]
    conf_thres: float
    iou_thres: float
    max_det: int
    classes: list[int] | None
    agnostic: bool
    half: bool
    augment: bool
    slice_size: int = 0
    overlap: float = 0.2
    slice_full: bool = True
    merge: str = "nms"
    match_metric: str = "ios"
    slice_batch: int = 8
    times: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])

    def __call__(self, img0: np.ndarray) -> torch.Tensor:
        """img0 HxWx3 BGR -> (n, 6) [x1, y1, x2, y2, conf, cls] in img0 pixels."""
        nms = dict(conf_thres=self.conf_thres, iou_thres=self.iou_thres, max_det=self.max_det,
                   classes=self.classes, agnostic=self.agnostic, half=self.half)
        if self.slice_size:
            return sliced_predict(self.model, img0, self.slice_size, self.overlap, max(self.imgsz),
                                  full_frame=self.slice_full, batch_size=self.slice_batch, merge=self.merge,
                                  match_metric=self.match_metric, augment=self.augment, times=self.times, **nms)
        return predict_image(self.model, img0, self.imgsz, augment=self.augment, times=self.times, **nms)


def build_predictor(args: argparse.Namespace) -> tuple[Predictor, list[str]]:
    """Resolve weights and device, load the model; returns the predictor and the class names."""
    weights = Path(args.weights) if args.weights else newest_weights()
    if not args.weights:
        print(f"Using weights {weights} (best.pt of the newest run under {TRAIN_RUNS})")
    device = select_device(args.device)
    model, ckpt = load_inference_model(weights, device)  # a checkpoint, .onnx or TorchScript file
    # Fused convs in channels-last layout run ~20% faster on CPU (oneDNN) and feed tensor cores on GPU.
    model.fuse().to(memory_format=torch.channels_last)
    names = list(ckpt["names"])
    if args.classes and not all(0 <= c < len(names) for c in args.classes):
        raise ConfigError(f"--classes {args.classes}: the model has classes 0..{len(names) - 1}")
    half = args.half and device.type == "cuda"
    if args.half and not half:
        LOGGER.warning("WARNING: --half needs a CUDA device; running in FP32")
    if half:
        model.half()
    imgsz = check_imgsz(args.imgsz, int(model.stride.max()))
    fixed = getattr(model, "fixed_hw", None)  # a fixed-size export takes frames up to its input size
    if fixed and (imgsz[0] > fixed[0] or imgsz[1] > fixed[1]):
        LOGGER.warning(f"--imgsz {imgsz[0]} {imgsz[1]} -> {fixed[0]} {fixed[1]}: the exported model's input size")
        imgsz = tuple(fixed)
    # On CPU one tile at a time measured 25-40% faster than batches of 8 (cache-bound convolutions;
    # benchmarks/sliced_inference.md); on GPU batches keep the device busy.
    slice_batch = args.slice_batch or (8 if device.type == "cuda" else 1)
    predictor = Predictor(model=model, imgsz=imgsz, conf_thres=args.conf_thres, iou_thres=args.iou_thres,
                          max_det=args.max_det, classes=args.classes, agnostic=args.agnostic_nms, half=half,
                          augment=args.augment, slice_size=args.slice, overlap=args.overlap,
                          slice_full=args.slice_full, merge=args.slice_merge, match_metric=args.slice_match,
                          slice_batch=slice_batch)
    if device.type != "cpu":  # the first CUDA call is slow: keep it out of the timings
        predictor(np.zeros((*imgsz, 3), np.uint8))
        predictor.times[:] = [0.0, 0.0, 0.0]
    return predictor, names


def describe(det: torch.Tensor, names: list[str]) -> str:
    """'2 person, 1 car' for the classes in ``det`` (most frequent first), or 'no detections'."""
    counts = Counter(int(c) for c in det[:, 5].tolist())
    if not counts:
        return "no detections"
    return ", ".join(f"{n} {names[c] if c < len(names) else c}" for c, n in counts.most_common())


def summary(frames: int, predictor: Predictor, wall: float, shape: tuple[int, int] | None) -> str:
    """One line: frames, mean pre-process / inference / NMS ms per frame, FPS."""
    pre, inf, nms = (t / max(frames, 1) * 1e3 for t in predictor.times)
    if predictor.slice_size and shape:
        tiles = len(tile_coordinates(shape[1], shape[0], predictor.slice_size, predictor.overlap))
        how = f"{tiles} tiles of {predictor.slice_size}px at {max(predictor.imgsz)}px" + \
              (" + full frame" if predictor.slice_full and tiles > 1 else "") + f" for {shape[1]}x{shape[0]} frames"
    else:
        how = f"imgsz {predictor.imgsz[0]}x{predictor.imgsz[1]}"
    fps = frames / wall if wall > 0 else 0.0
    model_fps = 1e3 / (pre + inf + nms) if pre + inf + nms > 0 else 0.0
    return (f"{frames} frames, {pre:.1f}ms pre-process, {inf:.1f}ms inference, {nms:.1f}ms NMS per frame "
            f"({how}); {model_fps:.1f} FPS model, {fps:.1f} FPS end-to-end")


def run(args: argparse.Namespace) -> Path:
    """Detect on every frame of ``args.source`` and write the results; returns the run folder."""
    check_flags(args)
    source = load_source(args.source, args.vid_stride)  # checked before any output is written
    predictor, names = build_predictor(args)
    save_dir = increment_path(Path(args.project) / args.name, exist_ok=args.exist_ok)
    writer = ResultWriter(save_dir, names, save_img=not args.nosave, save_txt=args.save_txt,
                          save_conf=args.save_conf, save_crop=args.save_crop, save_json=args.save_json,
                          view_img=args.view_img, line_thickness=args.line_thickness,
                          hide_labels=args.hide_labels, hide_conf=args.hide_conf, vid_stride=args.vid_stride)
    frames, shape, t0 = 0, None, time.perf_counter()
    try:
        with logging_redirect_tqdm(), tqdm(source, total=len(source) or None, unit="frame") as bar:
            for item in bar:
                t = time_sync()
                det = predictor(item.img0)
                writer.add(item, det)
                frames, shape = frames + 1, item.img0.shape[:2]
                bar.set_postfix_str(f"{describe(det, names)}, {(time_sync() - t) * 1e3:.0f}ms", refresh=False)
    finally:
        writer.close()
        print(summary(frames, predictor, time.perf_counter() - t0, shape))
        print(writer.report())
    return save_dir


def main(argv: list[str] | None = None) -> int:
    """Entry point: returns the process exit code (0 ok, 1 bad input, 130 interrupted)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    quiet_video_logs()
    args = parse_args(argv)
    return run_cli("detect.py", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
