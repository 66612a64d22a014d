"""The ultralytics half of benchmarks/speed.py: a small server that times ultralytics on request.

Runs in the virtual environment that holds ultralytics and SAHI (see speed.md), from the
repository root; speed.py starts it once and sends one JSON request per line on stdin, so the two
sides take turns in the same run without paying the ultralytics import for every measurement:

    <venv>/bin/python -m benchmarks.speed_ultra_side --threads 1 --config-dir WORK/ultra-config

Requests (``{"op": ..., ...}``) and their answers (one JSON line each on stdout; ultralytics' own
messages go to stderr):

    hello                                  -> versions, torch threads
    train   model batch imgsz iters warmup [data workers]   -> {"ms": [per step]}  (data: real loader)
    loader  model batch imgsz iters warmup data workers     -> {"ms": [per batch]}
    latency model batch imgsz iters warmup conf iou         -> {"ms": [per call]}  (fused, + NMS)
    sahi    model frame(.npy, RGB) batch slice overlap imgsz conf iters warmup -> {"ms": [...], "tiles"}

Every model is built from its YAML with random weights (nothing is downloaded). speed.py times
our side with :func:`timed` from this file, so both sides count the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from types import SimpleNamespace

from benchmarks.ultralytics_side import _offline_env

_MODELS: dict = {}  # (yaml, fused) -> model, built once per server


def timed(fn, iters: int, warmup: int) -> list[float]:
    """Milliseconds of each of ``iters`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def _model(name: str, fused: bool, nc: int = 80):
    import torch
    from ultralytics.nn.tasks import DetectionModel

    key = (name, fused, nc)
    if key not in _MODELS:
        m = DetectionModel(name, nc=nc, verbose=False)
        if fused:
            m = m.fuse(verbose=False).eval()
            for p in m.parameters():
                p.requires_grad_(False)
        _MODELS[key] = m
    torch.manual_seed(0)
    return _MODELS[key]


def _train_cfg(r: dict):
    from ultralytics.cfg import get_cfg

    return get_cfg(overrides={"imgsz": r["imgsz"], "batch": r["batch"], "workers": r.get("workers", 0),
                              "task": "detect", "mode": "train", "data": r.get("data")})


def _loader(r: dict, model):
    """ultralytics' training DataLoader (its default augmentation: mosaic, HSV, flips, scale)."""
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    cfg = _train_cfg(r)
    data = check_det_dataset(r["data"])
    gs = max(int(model.stride.max()), 32)
    ds = build_yolo_dataset(cfg, data["train"], r["batch"], data, mode="train", stride=gs)
    return build_dataloader(ds, r["batch"], r["workers"], shuffle=True)


def random_batch(batch: int, imgsz: int, seed: int = 0) -> dict:
    """A fixed batch of noise images with 6 boxes per image, in ultralytics' batch layout."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n = 6 * batch
    return {"img": torch.rand(batch, 3, imgsz, imgsz, generator=g),
            "batch_idx": torch.arange(batch).repeat_interleave(6).float(),
            "cls": torch.randint(0, 80, (n, 1), generator=g).float(),
            "bboxes": torch.cat([torch.rand(n, 2, generator=g) * 0.8 + 0.1, torch.rand(n, 2, generator=g) * 0.1 + 0.01], 1)}


def train(r: dict) -> dict:
    """Forward, loss, backward and an SGD step; batches from the real loader when ``data`` is given."""
    import torch

    model = _model(r["model"], fused=False)
    model.args = _train_cfg(r)
    model.criterion = None
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    if r.get("data"):
        it = iter(_loader(r, model))

        def next_batch() -> dict:
            b = next(it)
            b["img"] = b["img"].float() / 255  # as its trainer's preprocess_batch on the CPU
            return b
    else:
        fixed = random_batch(r["batch"], r["imgsz"])

        def next_batch() -> dict:
            return dict(fixed)

    def step() -> None:
        loss, _ = model.loss(next_batch())
        loss.sum().backward()
        opt.step()
        opt.zero_grad()

    return {"ms": timed(step, r["iters"], r["warmup"])}


def loader(r: dict) -> dict:
    it = iter(_loader(r, _model(r["model"], fused=False)))
    return {"ms": timed(lambda: next(it), r["iters"], r["warmup"])}


def latency(r: dict) -> dict:
    """Fused model forward + NMS on a ready (B, 3, imgsz, imgsz) tensor, as its predictor's inner loop."""
    import torch
    from ultralytics.utils.nms import non_max_suppression

    model = _model(r["model"], fused=True)
    x = torch.rand(r["batch"], 3, r["imgsz"], r["imgsz"], generator=torch.Generator().manual_seed(0))

    def call() -> None:
        with torch.inference_mode():
            non_max_suppression(model(x), r["conf"], r["iou"], max_det=300)

    return {"ms": timed(call, r["iters"], r["warmup"])}


def sahi(r: dict) -> dict:
    """SAHI's sliced prediction driving the model, with the settings of benchmarks/sliced_vs_sahi.py."""
    import numpy as np

    from benchmarks.sliced_vs_sahi import build_sahi, sahi_fn, sahi_tiles

    args = SimpleNamespace(ultra_cfg=r["model"], device="cpu", conf=r["conf"], imgsz=r["imgsz"], slice=r["slice"],
                           overlap=r["overlap"])
    key = ("sahi", r["model"], r["conf"], r["imgsz"])
    if key not in _MODELS:
        _MODELS[key] = build_sahi(args)[1]
    frame = np.load(r["frame"])
    fn = sahi_fn(_MODELS[key], frame, args, r["batch"])
    h, w = frame.shape[:2]
    return {"ms": timed(fn, r["iters"], r["warmup"]), "tiles": sahi_tiles(w, h, args)}


def hello(r: dict) -> dict:
    import torch
    import ultralytics

    out = {"ultralytics": ultralytics.__version__, "torch": torch.__version__, "threads": torch.get_num_threads()}
    with contextlib.suppress(Exception):
        import sahi as sahi_pkg
        out["sahi"] = sahi_pkg.__version__
    return out


OPS = {"hello": hello, "train": train, "loader": loader, "latency": latency, "sahi": sahi}


def serve(threads: int, inp=sys.stdin, out=sys.stdout) -> None:
    """Answer one JSON line per request line until stdin closes; errors are answered, not raised."""
    import torch

    for line in inp:
        if not line.strip():
            continue
        r = json.loads(line)
        if threads > 0:  # ultralytics sets its own thread count in places: put ours back every time
            torch.set_num_threads(threads)
        try:
            with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the answers
                ans = OPS[r["op"]](r)
        except Exception as e:  # noqa: BLE001 - the orchestrator prints it and goes on with the other rows
            ans = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(ans) + "\n")
        out.flush()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--config-dir", default="", help="YOLO_CONFIG_DIR for ultralytics' settings file")
    a = p.parse_args(argv)
    _offline_env(a.config_dir)
    serve(a.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
