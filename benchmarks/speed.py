"""Speed of our models against their ultralytics counterparts, both measured in one run, taking turns.

    python -m benchmarks.speed --quick            # every row once, few iterations: checks the setup
    python -m benchmarks.speed --threads 1        # the full run (tens of minutes on a 2-core CPU)

Run from the repository root. Ultralytics and SAHI live in their own virtual environment
(``--ultra-python``, see speed.md); a server there (benchmarks/speed_ultra_side.py) times the
ultralytics side on request, so for every row the two sides alternate ``--rounds`` times and a
load spike on a shared machine hits both alike. All models have 80 classes and random weights.

Rows, per model pair (ours / ultralytics, P2 against P2):
  train step (forward, loss, backward, SGD step), batch --batch at --imgsz: on a fixed batch of
      noise images (no loader), and with each project's real training loader (ours: mosaic and
      small-object copy-paste of hyp.sod-all.yaml; ultralytics: its default mosaic pipeline);
  loader alone: batches per second of those two loaders;
  latency at batch 1 and 8, forward + decode + NMS on a ready tensor: eager and fused for both;
      ours also through TorchScript and ONNX Runtime (the runtimes export.py writes);
  sliced inference of --frames (mosaics of HIT-UAV images): ours sliced_predict against SAHI
      driving ultralytics, same tile size, overlap, input size, confidence and full-frame pass.

Prints a markdown table: median ms per call (min), images per second where it applies, and the
speed ratio ultralytics ms / ours ms (> 1: ours is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from benchmarks.sliced_vs_sahi import DATA as HITUAV_VAL, build_ours, mosaic_frame, ours_fn
from benchmarks.speed_ultra_side import random_batch, timed
from benchmarks.vs_ultralytics_data import prepare_data
from export import export_onnx, export_torchscript
from models.yolo import build_model
from utils.data.config import load_data_config
from utils.data.loader import build_dataloader
from utils.hyp import load_hyp
from utils.loss import build_loss
from utils.nms import non_max_suppression
from utils.slicing import _model_predict, tile_coordinates

ROOT = Path(__file__).resolve().parents[1]
PAIRS = {"n": ("models/yolov5n-p2.yaml", "yolov8n-p2.yaml"), "s": ("models/yolov5s-p2.yaml", "yolov8s-p2.yaml")}
SLICED_PAIR = ("models/yolov5n-p2.yaml", "yolov8n-p2.yaml")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="pair n only, 1 round of 2 timed calls after 1 warm-up, frames 1920x1080 only")
    p.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=["n", "s"])
    p.add_argument("--sections", nargs="+", default=["train", "loader", "latency", "sliced"],
                   choices=["train", "loader", "latency", "sliced"])
    p.add_argument("--rounds", type=int, default=3, help="turns each side takes per row")
    p.add_argument("--iters", type=int, default=5, help="timed calls per turn")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per turn")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=8, help="training and loader batch size")
    p.add_argument("--latency-batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--runtimes", nargs="+", default=["eager", "torchscript", "onnx"],
                   choices=["eager", "torchscript", "onnx"], help="our latency rows")
    p.add_argument("--conf", type=float, default=0.25)
    p.add_argument("--iou", type=float, default=0.45)
    p.add_argument("--frames", nargs="+", default=["1920x1080", "4000x2250"], help="sliced inference sizes WxH")
    p.add_argument("--slice", type=int, default=640)
    p.add_argument("--overlap", type=float, default=0.2)
    p.add_argument("--slice-batches", nargs="+", type=int, default=[1, 8], help="tiles per forward pass")
    p.add_argument("--data", default="data/hit-uav-sample.yaml", help="dataset of the loader rows (train split)")
    p.add_argument("--hyp", default="data/hyps/hyp.sod-all.yaml", help="our training hyperparameters")
    p.add_argument("--workers", type=int, default=2, help="loader processes, both sides")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads, both sides")
    p.add_argument("--ultra-python", default="/work/venvs/ultra/bin/python",
                   help="python of the virtual environment with ultralytics and sahi")
    p.add_argument("--work", default="runs/speed", help="link trees, exported models, frames, side log")
    a = p.parse_args(argv)
    if a.quick:
        a.pairs, a.rounds, a.iters, a.warmup, a.frames = ["n"], 1, 2, 1, ["1920x1080"]
    return a


class UltraSide:
    """The ultralytics server (speed_ultra_side.py) in its own environment: one JSON line each way."""

    def __init__(self, python: str, threads: int, work: Path):
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
        self.log = open(work / "ultra_side.log", "w")
        self.proc = subprocess.Popen([python, "-m", "benchmarks.speed_ultra_side", "--threads", str(threads),
                                      "--config-dir", str(work / "ultra-config")], cwd=ROOT, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)

    def ask(self, op: str, **req) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **req}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the ultralytics side stopped; see {self.log.name}")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.log.close()


def cycle(loader):
    """Batches of ``loader`` without end (an epoch of the bundled sample is only a few batches)."""
    while True:
        yield from loader


def fixed_batch(batch: int, imgsz: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ultralytics side's noise batch in our layout: (B, 3, H, W) float 0-1, (n, 6) [image, cls, cx, cy, w, h]."""
    b = random_batch(batch, imgsz)
    return b["img"], torch.cat([b["batch_idx"][:, None], b["cls"], b["bboxes"]], 1)


class Ours:
    """Our side of every row; models are built once and reused across rounds."""

    def __init__(self, a: argparse.Namespace, data_yaml: str, work: Path):
        self.a, self.work, self.hyp = a, work, load_hyp(a.hyp)
        self.train_files = load_data_config(data_yaml)["train"]
        self.models: dict = {}

    def _train_model(self, cfg: str):
        if cfg not in self.models:
            torch.manual_seed(0)
            m = build_model(cfg, nc=80).train()
            self.models[cfg] = (m, build_loss(m, self.hyp, self.a.imgsz),
                                torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9))
        return self.models[cfg]

    def _loader(self, model):
        loader, _ = build_dataloader(self.train_files, self.a.imgsz, self.a.batch, int(model.stride.max()), self.hyp,
                                     augment=True, workers=self.a.workers, shuffle=True, seed=0)
        return cycle(loader)

    def train(self, cfg: str, real_loader: bool) -> list[float]:
        model, loss_fn, opt = self._train_model(cfg)
        if real_loader:
            it = self._loader(model)
            next_batch = lambda: next(it)[:2]  # noqa: E731
        else:
            fixed = fixed_batch(self.a.batch, self.a.imgsz)
            next_batch = lambda: fixed  # noqa: E731

        def step() -> None:
            imgs, targets = next_batch()
            imgs = imgs.float() / 255 if imgs.dtype == torch.uint8 else imgs  # the loader's are uint8
            loss, _, _ = loss_fn(model(imgs), targets)
            loss.backward()
            opt.step()
            opt.zero_grad()

        return timed(step, self.a.iters, self.a.warmup)

    def loader(self, cfg: str) -> list[float]:
        it = self._loader(self._train_model(cfg)[0])
        return timed(lambda: next(it), self.a.iters, self.a.warmup)

    def predictor(self, cfg: str, runtime: str, batch: int):
        """forward + decode + NMS on a ready batch, through ``runtime``; returns the callable."""
        a = self.a
        key = ("fused", cfg)
        if key not in self.models:
            self.models[key] = build_ours([cfg], torch.device("cpu"))[Path(cfg).stem]
        model = self.models[key]
        x = torch.rand(batch, 3, a.imgsz, a.imgsz, generator=torch.Generator().manual_seed(0))
        nms = dict(conf_thres=a.conf, iou_thres=a.iou, max_det=300)
        if runtime == "eager":
            return lambda: non_max_suppression(_model_predict(model, x, False, a.conf), **nms)
        stem = self.work / f"{Path(cfg).stem}_b{batch}_{a.imgsz}"
        if runtime == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still what export.py writes
                ts = torch.jit.load(str(export_torchscript(model, x, stem.with_suffix(".torchscript"))))

            def call_ts():
                with torch.inference_mode():
                    return non_max_suppression(ts(x), **nms)
            return call_ts
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = a.threads, 1
        sess = ort.InferenceSession(str(export_onnx(model, x, stem.with_suffix(".onnx"), 17, False)), opts,
                                    providers=["CPUExecutionProvider"])
        xn = x.numpy()
        return lambda: non_max_suppression(torch.from_numpy(sess.run(None, {"images": xn})[0]), **nms)


def summarise(ms: list[float], per_call: int) -> tuple[float, float, float]:
    """(median ms, min ms, images per second at the median)."""
    med = statistics.median(ms)
    return med, min(ms), per_call * 1e3 / med


def row(label: str, ours_name: str, ours_ms, ultra_name: str, ultra_ms, per_call: int, per_s: bool = True) -> None:
    """One markdown row; a side without times (not measured, or an error string) prints a dash."""
    cells, meds = [label], []
    for name, ms in ((ours_name, ours_ms), (ultra_name, ultra_ms)):
        if isinstance(ms, list) and ms:
            med, lo, ips = summarise(ms, per_call)
            cells += [name, f"{med:.1f} ({lo:.1f})", f"{ips:.2f}" if per_s else "-"]
            meds.append(med)
        else:
            cells += [name, str(ms or "-"), "-"]
            meds.append(None)
    speed = f"{meds[1] / meds[0]:.2f}" if None not in meds else "-"
    print("| " + " | ".join(cells + [speed]) + " |", flush=True)


def alternate(rounds: int, ours_fn, ultra_fn) -> tuple[list[float] | str, list[float] | str]:
    """Each side ``rounds`` times, taking turns; an ultralytics error ends its turns and is reported."""
    ours, ultra = [], []
    for _ in range(rounds):
        if ours_fn is not None:
            ours += ours_fn()
        if ultra_fn is not None and isinstance(ultra, list):
            ans = ultra_fn()
            ultra = ultra + ans["ms"] if "ms" in ans else f"error: {ans.get('error')}"
    return ours, (ultra if ultra_fn is not None else "")


def header(a: argparse.Namespace, side: dict) -> None:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.platform()}")
    print(f"# CPU: {cpu}, {os.cpu_count()} logical cores, load average at start {load}; no GPU used")
    print(f"# ours: torch {torch.__version__}, {torch.get_num_threads()} threads; ultralytics {side.get('ultralytics')} "
          f"(sahi {side.get('sahi', '?')}), torch {side.get('torch')}, {side.get('threads')} threads")
    print(f"# imgsz {a.imgsz}, train/loader batch {a.batch}, {a.workers} loader workers, conf {a.conf}, "
          f"iou {a.iou}; {a.rounds} rounds x ({a.warmup} warm-up + {a.iters} timed) per side, taking turns"
          + ("  [--quick]" if a.quick else ""))
    print("\n| row | ours | ms median (min) | img/s | ultralytics | ms median (min) | img/s | speed ratio (ultra ms / ours ms) |")
    print("|---|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = prepare_data(Path(a.data), work / "data", 0, 0)  # link trees: each tool its own label cache
    side = UltraSide(a.ultra_python, a.threads, work)
    ours = Ours(a, data["ours_yaml"], work)
    try:
        header(a, side.ask("hello"))
        common = dict(batch=a.batch, imgsz=a.imgsz, iters=a.iters, warmup=a.warmup)
        for pair in a.pairs:
            cfg, ucfg = PAIRS[pair]
            on, un = Path(cfg).stem, Path(ucfg).stem
            if "train" in a.sections:
                for real, tag in ((False, "no loader"), (True, "real loader")):
                    req = {**common, "data": data["ultra_yaml"], "workers": a.workers} if real else common
                    o, u = alternate(a.rounds, lambda: ours.train(cfg, real), lambda: side.ask("train", model=ucfg, **req))
                    row(f"train step b{a.batch}, {tag}", on, o, un, u, a.batch)
            if "loader" in a.sections:
                o, u = alternate(a.rounds, lambda: ours.loader(cfg),
                                 lambda: side.ask("loader", model=ucfg, data=data["ultra_yaml"], workers=a.workers,
                                                  **common))
                row(f"loader alone b{a.batch}", "ours (hyp.sod-all)", o, "ultralytics default", u, a.batch)
            if "latency" in a.sections:
                for b in a.latency_batches:
                    for rt in a.runtimes:
                        fn = ours.predictor(cfg, rt, b)
                        ultra = (lambda b=b: side.ask("latency", model=ucfg, batch=b, imgsz=a.imgsz, iters=a.iters,
                                                      warmup=a.warmup, conf=a.conf, iou=a.iou)) if rt == "eager" else None
                        o, u = alternate(a.rounds, lambda: timed(fn, a.iters, a.warmup), ultra)
                        row(f"latency b{b}, {rt} (ultralytics: eager)" if rt != "eager" else f"latency b{b}, eager fused",
                            on, o, un, u if rt == "eager" else "-", b, per_s=True)
        if "sliced" in a.sections:
            sliced(a, side, work)
    finally:
        side.close()
    return 0


def sliced(a: argparse.Namespace, side: UltraSide, work: Path) -> None:
    """Sliced inference rows: ours (batched tiles) against SAHI + ultralytics on the same frames."""
    cfg, ucfg = SLICED_PAIR
    model = build_ours([cfg], torch.device("cpu"))[Path(cfg).stem]
    src = HITUAV_VAL if HITUAV_VAL.is_dir() else Path(load_data_config(a.data)["val"][0]).parent
    args = SimpleNamespace(slice=a.slice, overlap=a.overlap, imgsz=a.imgsz, conf=a.conf)
    for size in a.frames:
        w, h = (int(v) for v in size.lower().split("x"))
        bgr = mosaic_frame(w, h, src)
        frame = work / f"frame_{w}x{h}.npy"
        np.save(frame, np.ascontiguousarray(bgr[..., ::-1]))  # SAHI reads RGB
        tiles = len(tile_coordinates(w, h, a.slice, a.overlap))
        for b in a.slice_batches:
            fn = ours_fn(model, bgr, args, b)
            o, u = alternate(a.rounds, lambda: timed(fn, a.iters, a.warmup),
                             lambda: side.ask("sahi", model=ucfg, frame=str(frame), batch=b, slice=a.slice,
                                              overlap=a.overlap, imgsz=a.imgsz, conf=a.conf, iters=a.iters,
                                              warmup=a.warmup))
            row(f"sliced {w}x{h}, {tiles} tiles + full frame, {b} tiles per pass", Path(cfg).stem, o,
                f"SAHI + {Path(ucfg).stem}", u, 1, per_s=False)
    print(f"\nframes: mosaics of {src}")


if __name__ == "__main__":
    sys.exit(main())
