"""Speed of our sliced inference against SAHI driving an ultralytics model of similar size.

Both models are randomly initialised (built from their YAML, nothing downloaded): this measures
speed only, not accuracy. The large frames are mosaics of HIT-UAV validation images. Both sides
get the same tile size, overlap, model input size, confidence threshold and full-frame pass;
both run with batch size 1 and --batch tiles per forward pass. SAHI merges with its default
(greedy NMM, IoS 0.5), ours with NMS; merging alone is timed separately on synthetic boxes.

    python -m pip install -r benchmarks/requirements.txt     # sahi, ultralytics (benchmark only)
    python -m benchmarks.sliced_vs_sahi --sizes 1920x1080 4000x2250 --repeats 5

Run from the repository root. Prints one markdown row per (frame size, method).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from models.summary import count_gflops
from models.yolo import build_model
from utils.slicing import merge_detections, sliced_predict, tile_coordinates

DATA = Path("../shared/datasets/hit-uav/images/val")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", default=["1920x1080", "4000x2250"], help="frame sizes WxH")
    p.add_argument("--slice", type=int, default=640, help="tile side (pixels)")
    p.add_argument("--overlap", type=float, default=0.2)
    p.add_argument("--imgsz", type=int, default=640, help="model input size for tiles and the full frame")
    p.add_argument("--batch", type=int, default=8, help="tiles per forward pass (ours, and SAHI's second run)")
    p.add_argument("--conf", type=float, default=0.25)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--ours-cfg", nargs="+", default=["models/yolov5n-p2.yaml", "models/yolov5n.yaml"],
                   help="our model YAMLs (P2-P5 small-object model, and the P3-P5 one like yolov8n)")
    p.add_argument("--ultra-cfg", default="yolov8n.yaml", help="ultralytics model YAML (built, not downloaded)")
    p.add_argument("--merge-objects", nargs="*", type=int, default=[100, 1000],
                   help="also time merging alone on this many synthetic objects seen by 1-4 tiles each")
    return p.parse_args()


def mosaic_frame(w: int, h: int, data: Path = DATA) -> np.ndarray:
    """A w x h BGR frame tiled from HIT-UAV images (640x512 each), row by row."""
    files = sorted(data.glob("*.jpg"))
    if not files:
        raise SystemExit(f"no images in {data}: run from the repository root next to ../shared")
    th, tw = cv2.imread(str(files[0])).shape[:2]
    rows, cols = -(-h // th), -(-w // tw)
    grid = [[cv2.resize(cv2.imread(str(files[(r * cols + c) % len(files)])), (tw, th)) for c in range(cols)]
            for r in range(rows)]
    return np.ascontiguousarray(np.vstack([np.hstack(row) for row in grid])[:h, :w])


def time_interleaved(fns: dict, warmup: int, repeats: int) -> dict[str, tuple[list[float], list[float], int]]:
    """Time each callable ``warmup + repeats`` times, taking turns so that load spikes on a shared
    machine hit every method alike.

    Returns per name (wall ms per run, process CPU ms per run, boxes of the last run). CPU time
    (all threads) is the steadier figure on a busy machine: waiting for a core does not count.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, tuple[list[float], list[float], int]] = {name: ([], [], 0) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            n = fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall, cpu, _ = out[name]
            out[name] = (wall + [(time.perf_counter() - t0) * 1e3], cpu + [(time.process_time() - c0) * 1e3], n)
    return out


def build_sahi(args: argparse.Namespace):
    """SAHI's ultralytics wrapper around a randomly initialised ultralytics model."""
    from sahi.models.ultralytics import UltralyticsDetectionModel
    from ultralytics import YOLO

    yolo = YOLO(args.ultra_cfg)
    det_model = UltralyticsDetectionModel(model=yolo, device=args.device, confidence_threshold=args.conf,
                                          image_size=args.imgsz)
    return yolo, det_model


def ours_fn(model, frame_bgr: np.ndarray, args: argparse.Namespace, batch: int):
    def fn() -> int:
        return len(sliced_predict(model, frame_bgr, args.slice, args.overlap, args.imgsz, conf_thres=args.conf,
                                  batch_size=batch, merge="nms", full_frame=True))
    return fn


def sahi_fn(det_model, frame_rgb: np.ndarray, args: argparse.Namespace, batch: int):
    from sahi.predict import get_sliced_prediction

    def fn() -> int:
        r = get_sliced_prediction(frame_rgb, det_model, slice_height=args.slice, slice_width=args.slice,
                                  overlap_height_ratio=args.overlap, overlap_width_ratio=args.overlap,
                                  perform_standard_pred=True, verbose=0, batch_size=batch)
        return len(r.object_prediction_list)
    return fn


def sahi_tiles(w: int, h: int, args: argparse.Namespace) -> int:
    from sahi.slicing import get_slice_bboxes

    return len(get_slice_bboxes(h, w, args.slice, args.slice, False, args.overlap, args.overlap))


def build_ours(cfgs: list[str], device: torch.device) -> dict[str, torch.nn.Module]:
    """Our models as detect.py runs them: 80 classes (like the ultralytics model), fused, channels-last."""
    return {Path(c).stem: build_model(c, nc=80).to(device).eval().fuse().to(memory_format=torch.channels_last)
            for c in cfgs}


def synthetic_tile_detections(n_objects: int, seed: int = 0) -> torch.Tensor:
    """(n, 6) detections as overlapping tiles report them: each object 1-4 times, jittered by up
    to 2 px, a third of the copies cut short by a tile edge; 3 classes, scores 0.3-1."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_objects):
        x1, y1 = rng.uniform(0, 3900), rng.uniform(0, 2150)
        w, h = rng.uniform(6, 60, size=2)
        cls, score = rng.integers(0, 3), rng.uniform(0.3, 1.0)
        for _ in range(rng.integers(1, 5)):
            j = rng.uniform(-2, 2, size=4)
            cut = rng.uniform(0.4, 1.0) if rng.random() < 1 / 3 else 1.0
            rows.append([x1 + j[0], y1 + j[1], x1 + w * cut + j[2], y1 + h + j[3],
                         score * rng.uniform(0.9, 1.0), cls])
    return torch.tensor(rows, dtype=torch.float32)


def merge_benchmark(n_objects: int, repeats: int) -> None:
    """Merging alone: ours (torch/numpy) vs SAHI's postprocess classes on the same boxes."""
    from sahi.postprocess.combine import GreedyNMMPostprocess, NMSPostprocess
    from sahi.prediction import ObjectPrediction

    det = synthetic_tile_detections(n_objects)
    preds = [ObjectPrediction(bbox=r[:4], category_id=int(r[5]), category_name=str(int(r[5])), score=r[4],
                              full_shape=[2250, 4000]) for r in det.tolist()]
    runs = {"SAHI GreedyNMM (IOS 0.5)": lambda: len(GreedyNMMPostprocess(0.5, "IOS", False)(list(preds))),
            "ours NMM (IoS 0.5)": lambda: len(merge_detections(det, "nmm", 0.5, match_metric="ios")),
            "SAHI NMS (IOU 0.5)": lambda: len(NMSPostprocess(0.5, "IOU", False)(list(preds))),
            "ours NMS (IoU 0.5)": lambda: len(merge_detections(det, "nms", 0.5))}
    results = time_interleaved(runs, 1, repeats)
    for name, (wall, cpu, kept) in results.items():
        print(f"| {len(det)} boxes of {n_objects} objects | {name} | {statistics.median(wall):.1f} | "
              f"{statistics.median(cpu):.1f} | {kept} |")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda:0" if args.device not in ("cpu", "") else "cpu")
    ours = build_ours(args.ours_cfg, device)
    yolo, det_model = build_sahi(args)
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"device {args.device}, torch {torch.__version__}")
    for name, m in (*ours.items(), (args.ultra_cfg, yolo.model)):
        print(f"# {name}: {sum(p.numel() for p in m.parameters()) / 1e6:.2f}M params, "
              f"{count_gflops(m, args.imgsz):.1f} GFLOPs at {args.imgsz}")
    print(f"# slice {args.slice}, overlap {args.overlap}, imgsz {args.imgsz}, conf {args.conf}, full frame on, "
          f"{args.warmup} warm-up + {args.repeats} timed runs, taking turns")
    print("| frame | method | tiles | wall ms median (min) | CPU ms median | boxes | SAHI(b=1) / this, wall | CPU |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        w, h = (int(v) for v in size.lower().split("x"))
        bgr = mosaic_frame(w, h)
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        n_ours, n_sahi = len(tile_coordinates(w, h, args.slice, args.overlap)), sahi_tiles(w, h, args)
        runs = {"SAHI + ultralytics, batch 1": (sahi_fn(det_model, rgb, args, 1), n_sahi),
                f"SAHI + ultralytics, batch {args.batch}": (sahi_fn(det_model, rgb, args, args.batch), n_sahi)}
        for name, model in ours.items():
            for batch in sorted({1, args.batch}):
                runs[f"ours {name}, batch {batch}"] = (ours_fn(model, bgr, args, batch), n_ours)
        results = time_interleaved({name: fn for name, (fn, _) in runs.items()}, args.warmup, args.repeats)
        base_wall, base_cpu = (statistics.median(v) for v in results["SAHI + ultralytics, batch 1"][:2])
        for name, (wall, cpu, boxes) in results.items():
            mw, mc = statistics.median(wall), statistics.median(cpu)
            print(f"| {w}x{h} | {name} | {runs[name][1]} + full | {mw:.0f} ({min(wall):.0f}) | {mc:.0f} | {boxes} | "
                  f"{base_wall / mw:.2f} | {base_cpu / mc:.2f} |", flush=True)

    if args.merge_objects:
        print("\n| merge input | method | wall ms median | CPU ms median | boxes out |")
        print("|---|---|---|---|---|")
        for n in args.merge_objects:
            merge_benchmark(n, args.repeats)


if __name__ == "__main__":
    main()
