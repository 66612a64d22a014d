"""Time of small-object copy-paste per image (utils/data/copy_paste.py), as the loader calls it.

    OMP_NUM_THREADS=1 python -m benchmarks.copy_paste_speed

Scenes are square noise images (640 px, or --size) with n random small boxes (6-30 px sides) and a few large ones;
each scene is run ``--repeats`` times with seeded generators. Prints a markdown table of the
median milliseconds per call and the mean number of copies placed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from utils.data.copy_paste import copy_paste_small


def scene(n_small: int, seed: int, size: int = 640) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 (size, size, 3) noise image, (n_small + 3, 4) xyxy boxes (3 large), classes."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    wh = rng.uniform(6, 30, (n_small, 2))
    xy = rng.uniform(0, size - 30, (n_small, 2))
    large = (np.array([[20, 20, 220, 180], [300, 350, 500, 600], [400, 40, 620, 200]]) * size / 640).astype(np.float32)
    boxes = np.concatenate([np.concatenate([xy, xy + wh], 1).astype(np.float32), large])
    return img, boxes, np.arange(len(boxes)) % 4


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--objects", nargs="+", type=int, default=[5, 30, 100])
    p.add_argument("--times", nargs="+", type=int, default=[1, 3])
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--size", type=int, default=640, help="image side; small sides crowd the image")
    a = p.parse_args()
    print(f"{a.size}x{a.size} px")
    print("| small objects | times | ms per call, median (min) | copies placed, mean |")
    print("|---|---|---|---|")
    for n in a.objects:
        img, boxes, cls = scene(n, seed=n, size=a.size)
        for times in a.times:
            ms, placed = [], []
            for r in range(a.repeats):
                rng = np.random.default_rng(r)
                t0 = time.perf_counter()
                _, nb, _, _ = copy_paste_small(img, boxes, cls, p=1.0, max_area=1024, times=times, rng=rng)
                ms.append((time.perf_counter() - t0) * 1e3)
                placed.append(len(nb) - len(boxes))
            print(f"| {n} | {times} | {statistics.median(ms):.2f} ({min(ms):.2f}) | {np.mean(placed):.1f} |")


if __name__ == "__main__":
    main()
