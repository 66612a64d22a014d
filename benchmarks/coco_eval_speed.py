"""Speed of the COCO box evaluation: faster-coco-eval (as used by val.py) against pycocotools.

Run from the repository root:
    python -m benchmarks.coco_eval_speed                    # 5,000 images x 100 detections
    python -m benchmarks.coco_eval_speed --images 500       # quicker

Both libraries evaluate the same synthetic ground truth and detections from memory (load, index,
evaluate, accumulate, summarize); the figures must agree, and the script says by how much.
Needs pycocotools (benchmarks/requirements.txt).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import time

import numpy as np

from utils.coco_eval import COCO_KEYS, CocoEvaluator, gc_paused


def synthetic_dataset(n_images: int, dets_per_image: int, n_classes: int = 20,
                      seed: int = 0) -> tuple[dict, list[dict]]:
    """COCO GT (1-15 boxes per 640x480 image, sides 4-300 px log-uniform, many small) and
    ``dets_per_image`` detections per image: jittered copies of the GT plus random boxes."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for img_id in range(1, n_images + 1):
        images.append({"id": img_id, "width": 640, "height": 480, "file_name": f"{img_id:06d}.jpg"})
        n = int(rng.integers(1, 16))
        wh = np.exp(rng.uniform(np.log(4), np.log(300), (n, 2)))
        xy = rng.uniform(0, 1, (n, 2)) * (np.array([640, 480]) - wh).clip(1)
        cls = rng.integers(1, n_classes + 1, n)
        for b, c in zip(np.concatenate((xy, wh), 1).tolist(), cls.tolist()):
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": c, "bbox": b,
                         "area": b[2] * b[3], "iscrowd": 0})
        k = min(n, dets_per_image)
        jitter = rng.normal(0, 0.1, (k, 4))
        boxes = np.concatenate((xy[:k] + jitter[:, :2] * wh[:k], wh[:k] * np.exp(jitter[:, 2:])), 1)
        rwh = np.exp(rng.uniform(np.log(4), np.log(300), (dets_per_image - k, 2)))
        rxy = rng.uniform(0, 1, (dets_per_image - k, 2)) * (np.array([640, 480]) - rwh).clip(1)
        boxes = np.concatenate((boxes, np.concatenate((rxy, rwh), 1)), 0)
        dcls = np.concatenate((cls[:k], rng.integers(1, n_classes + 1, dets_per_image - k)))
        for b, c, s in zip(boxes.tolist(), dcls.tolist(), rng.random(dets_per_image).tolist()):
            dets.append({"image_id": img_id, "category_id": c, "bbox": b, "score": s})
    cats = [{"id": i, "name": f"class{i}"} for i in range(1, n_classes + 1)]
    return {"images": images, "annotations": anns, "categories": cats}, dets


def time_ours(gt: dict, dets: list[dict]) -> tuple[float, np.ndarray]:
    """utils.coco_eval.CocoEvaluator (faster-coco-eval underneath): seconds and the 12 figures."""
    t0 = time.perf_counter()
    ev = CocoEvaluator(gt)
    ev.add_results(dets)
    stats = ev.summarize()
    return time.perf_counter() - t0, np.array([stats[k] for k in COCO_KEYS])


def time_pycocotools(gt: dict, dets: list[dict], gc_off: bool = False) -> tuple[float, np.ndarray]:
    """pycocotools COCO + loadRes + COCOeval.evaluate/accumulate/summarize: seconds and figures.

    ``gc_off`` pauses Python's cyclic GC during the run, as utils.coco_eval does for its own
    dict building, to show how much of the gap is the library and how much is GC.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), (gc_paused() if gc_off else contextlib.nullcontext()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return time.perf_counter() - t0, np.asarray(ev.stats)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--dets", type=int, default=100, help="detections per image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pycocotools-gc-off", action="store_true", help="also pause the GC for pycocotools")
    p.add_argument("--repeat", type=int, default=1,
                   help="runs per library; the fastest counts (shared machines are noisy)")
    args = p.parse_args()
    gt, dets = synthetic_dataset(args.images, args.dets, seed=args.seed)
    print(f"{len(gt['images'])} images, {len(gt['annotations'])} GT boxes, {len(dets)} detections")
    # each library mutates the dicts it is given: hand each run its own copy, outside the timing
    runs = [time_ours(copy.deepcopy(gt), copy.deepcopy(dets)) for _ in range(args.repeat)]
    t_ours, s_ours = min(runs, key=lambda r: r[0])
    print(f"faster-coco-eval (utils.coco_eval): {t_ours:8.2f} s  (runs: {', '.join(f'{r[0]:.2f}' for r in runs)})")
    runs = [time_pycocotools(copy.deepcopy(gt), copy.deepcopy(dets), args.pycocotools_gc_off)
            for _ in range(args.repeat)]
    t_ref, s_ref = min(runs, key=lambda r: r[0])
    gc_note = " (GC paused)" if args.pycocotools_gc_off else ""
    times = ", ".join(f"{r[0]:.2f}" for r in runs)
    print(f"pycocotools{gc_note}:{' ' * (24 - len(gc_note))}{t_ref:8.2f} s  (runs: {times})")
    print(f"ratio: faster-coco-eval takes {t_ours / t_ref:.3f} of pycocotools' time ({t_ref / t_ours:.1f}x faster)")
    print(f"max |difference| over the 12 COCO figures: {np.abs(s_ours - s_ref).max():.2e}")
    print("  ".join(f"{k} {v:.3f}" for k, v in zip(COCO_KEYS, s_ours)))


if __name__ == "__main__":
    main()
