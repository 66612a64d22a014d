"""A/B timing: full decode + NMS against candidate decode + NMS, one 640-px image, random weights.

    OMP_NUM_THREADS=1 python -m benchmarks.decode_speed models/yolov5n-p2.yaml
    OMP_NUM_THREADS=1 python -m benchmarks.decode_speed models/yolov5n-p2-af.yaml

The confidence logits of a random-weight model are nearly constant, so they are replaced by
mu + 2 * N(0, 1) with mu chosen so that ``count`` rows pass ``conf``. Prints a markdown table
(median of 5 alternating rounds of 5 calls, min-max in brackets).
"""

import math
import sys
import time

import torch

from models.yolo import build_model
from utils.nms import non_max_suppression as nms

cfg = sys.argv[1]
torch.manual_seed(0)
m = build_model(cfg, nc=4).eval()
with torch.inference_mode():
    raw0 = m(torch.rand(1, 3, 640, 640))
head = m.detect
af = not hasattr(head, "anchors")
g = torch.Generator().manual_seed(1)
noise = [torch.randn((p.shape[0], p.shape[1] - 4 * head.reg_max, *p.shape[2:]) if af else p.shape[:4], generator=g) * 2
         for p in raw0]
allv = torch.cat([(n.amax(1) if af else n).flatten() for n in noise])


def make_raw(conf, count):
    mu = math.log(conf / (1 - conf)) - allv.kthvalue(allv.numel() - count).values.item()
    raw = [p.clone() for p in raw0]
    for p, n in zip(raw, noise):
        if af:
            p[:, 4 * head.reg_max:] = n + mu
        else:
            p[..., 4] = n + mu
            p[..., 5:] += 4.0  # confident classes: obj * cls passes for most survivors
    return raw


def timeit(f, n=10):
    f()
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t0) / n * 1e3


print(f"{cfg}: {allv.numel()} rows")
print("| conf | rows passing | multi_label | full decode + NMS ms | candidates + NMS ms | dets |")
print("|---|---|---|---|---|---|")
with torch.inference_mode():
    for conf, count, ml in ((0.25, 300, False), (0.25, 3000, False), (0.001, 2000, True), (0.001, 10000, True), (0.001, min(50000, allv.numel() * 3 // 4), True)):
        raw = make_raw(conf, count)
        full = lambda: nms(head.decode(raw).float(), conf, multi_label=ml)
        cand = lambda: nms([r.float() for r in head.decode_candidates(raw, conf)], conf, multi_label=ml)
        a, b = full(), cand()
        assert all(u.shape == v.shape and torch.allclose(u, v, atol=1e-4) for u, v in zip(a, b))
        tf, tc = [], []
        for rep in range(5):  # alternate A/B
            tf.append(timeit(full, 5)); tc.append(timeit(cand, 5))
        md = lambda v: sorted(v)[len(v) // 2]
        print(f"| {conf} | {count} | {ml} | {md(tf):.2f} ({min(tf):.2f}-{max(tf):.2f}) | {md(tc):.2f} ({min(tc):.2f}-{max(tc):.2f}) | {a[0].shape[0]} |")
