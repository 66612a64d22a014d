"""Export a trained detector to TorchScript or ONNX for deployment.

    python export.py --weights runs/train/exp/weights/best.pt --include torchscript onnx --imgsz 640

The exported graph takes float images (B, 3, H, W) in [0, 1] and returns decoded predictions
(B, N, 5 + nc): cx, cy, w, h in input pixels, objectness and class scores (sigmoided), the same as
``DetectionModel.predict``; apply NMS (utils/nms.py) after it. The decode of every level (P2
included) and of either head is part of the graph; BatchNorm is folded into the convs.
Files are written beside the weights (best.torchscript, best.onnx) with metadata (class names,
strides, input size, batch, dynamic) that val.py and detect.py read back (utils/backends.py):

    python detect.py --weights runs/train/exp/weights/best.onnx --source img.jpg
    python val.py --weights runs/train/exp/weights/best.torchscript --data data/hit-uav.yaml

After writing, each file is loaded (ONNX Runtime, torch.jit) and its output compared with
PyTorch's on random images (also at a second batch and size with --dynamic); a difference beyond
tolerance is an error. Official YOLOv5 checkpoints export too (converted on load).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from utils.backends import META_FILE, META_KEY, export_metadata, load_inference_model
from utils.checkpoint import load_model
from utils.cli import run_cli
from utils.errors import ConfigError, ExportError

FORMATS = ("torchscript", "onnx")
RTOL, ATOL = 1e-3, 1e-3  # exported vs PyTorch: boxes are pixels (relative), scores in [0, 1] (absolute)


class PredictWrapper(nn.Module):
    """Expose ``model.predict`` as ``forward`` so tracers see the decoded output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.predict(x)


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, meta: str | None = None) -> Path:
    """Trace ``model.predict`` and save it, with the metadata (utils/backends.py) as an extra file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # tracing is deprecated in favour of torch.export
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape-dependent decode: checked after saving
        traced = torch.jit.trace(PredictWrapper(model), example, strict=False, check_trace=False)
    traced.save(str(path), _extra_files={META_FILE: meta} if meta else {})
    return path


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic: bool,
                meta: str | None = None) -> Path:
    """Export ``model.predict`` to ONNX, with the metadata (utils/backends.py) in ``metadata_props``."""
    try:
        import onnx
    except ImportError:
        raise ConfigError("ONNX export needs the onnx package: pip install onnx") from None
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 1: "anchors"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript-based exporter; dynamo=True needs onnxscript
        torch.onnx.export(PredictWrapper(model), (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=["images"], output_names=["output"], dynamic_axes=axes)
    graph = onnx.load(str(path))
    if meta:
        graph.metadata_props.add(key=META_KEY, value=meta)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    return path


def check_exported(path: Path, model: nn.Module, shapes: list[tuple[int, int, int, int]]) -> str:
    """Run the written file and PyTorch on random images of each shape; raise ExportError beyond tolerance.

    Returns a short summary (largest differences of box and score columns).
    """
    exported, _ = load_inference_model(path, "cpu")
    worst_box = worst_score = 0.0
    for shape in shapes:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            expected = model.predict(x)
            got = exported.predict(x)
        if got.shape != expected.shape or not torch.allclose(got, expected, rtol=RTOL, atol=ATOL):
            diff = (got - expected).abs().max().item() if got.shape == expected.shape else "shape"
            raise ExportError(f"{path}: output differs from PyTorch at input {shape} (max difference {diff}; "
                              f"shapes {tuple(got.shape)} vs {tuple(expected.shape)})")
        worst_box = max(worst_box, (got[..., :4] - expected[..., :4]).abs().max().item())
        worst_score = max(worst_score, (got[..., 4:] - expected[..., 4:]).abs().max().item())
    return (f"matches PyTorch at {', '.join('x'.join(map(str, s)) for s in shapes)} "
            f"(max difference {worst_box:.1e} px, scores {worst_score:.1e})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="checkpoint to export (best.pt)")
    p.add_argument("--include", nargs="+", default=["torchscript"], choices=FORMATS)
    p.add_argument("--imgsz", "--img", type=int, nargs="+", default=[640], help="export size: H [W]")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--dynamic", action="store_true", help="dynamic batch and image size (checked at a second size)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli("export.py", lambda: run(args))


def run(args: argparse.Namespace) -> None:
    """Export --weights to each --include format beside the checkpoint, then check each file."""
    model, ckpt = load_model(args.weights, "cpu")
    model.fuse()
    h, w = (args.imgsz * 2)[:2]
    stride = int(model.stride.max())
    if h % stride or w % stride:
        raise ConfigError(f"--imgsz {h} {w} must be multiples of the largest stride {stride}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    example = torch.zeros(args.batch_size, 3, h, w)
    with torch.no_grad():
        shape = tuple(model.predict(example).shape)
    meta = export_metadata(ckpt["names"], model.stride.tolist(), (h, w), args.batch_size, args.dynamic)
    checks = [tuple(example.shape)]
    if args.dynamic:  # another batch and size than the example the graph was traced with
        checks.append((args.batch_size + 1, 3, h + stride, w + 2 * stride))
    weights = Path(args.weights)
    for fmt in args.include:
        if fmt == "torchscript":
            out = export_torchscript(model, example, weights.with_suffix(".torchscript"), meta)
        else:
            out = export_onnx(model, example, weights.with_suffix(".onnx"), args.opset, args.dynamic, meta)
        print(f"{fmt}: {out} ({out.stat().st_size / 1e6:.1f} MB), input {tuple(example.shape)}, output {shape}"
              f"{', dynamic batch and size' if args.dynamic else ''}")
        print(f"{fmt}: {check_exported(out, model, checks)}")


if __name__ == "__main__":
    sys.exit(main())
