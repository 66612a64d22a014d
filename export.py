"""Export a trained detector to TorchScript or ONNX for deployment.

    python export.py --weights runs/train/exp/weights/best.pt --include torchscript onnx --imgsz 640

The exported graph takes float images (B, 3, H, W) in [0, 1] and returns decoded predictions
(B, N, 5 + nc): cx, cy, w, h in input pixels, objectness and class scores (sigmoided), the same as
``DetectionModel.predict``; apply NMS (utils/nms.py) after it. BatchNorm is folded into the convs.
ONNX needs ``pip install onnx``. Files are written beside the weights (best.torchscript, best.onnx).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from utils.checkpoint import load_model
from utils.cli import run_cli
from utils.errors import ConfigError

FORMATS = ("torchscript", "onnx")


class PredictWrapper(nn.Module):
    """Expose ``model.predict`` as ``forward`` so tracers see the decoded output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.predict(x)


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # tracing is deprecated in favour of torch.export
        traced = torch.jit.trace(PredictWrapper(model), example, strict=False)
    traced.save(str(path))
    return path


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic: bool) -> Path:
    try:
        import onnx
    except ImportError:
        raise ConfigError("ONNX export needs the onnx package: pip install onnx") from None
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 1: "anchors"}} if dynamic else None
    torch.onnx.export(PredictWrapper(model), (example,), str(path), dynamo=False, opset_version=opset,
                      input_names=["images"], output_names=["output"], dynamic_axes=axes)
    onnx.checker.check_model(onnx.load(str(path)))
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="checkpoint to export (best.pt)")
    p.add_argument("--include", nargs="+", default=["torchscript"], choices=FORMATS)
    p.add_argument("--imgsz", "--img", type=int, nargs="+", default=[640], help="export size: H [W]")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--opset", type=int, default=17, help="ONNX opset")
    p.add_argument("--dynamic", action="store_true", help="ONNX: dynamic batch and image size")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_cli("export.py", lambda: run(args))


def run(args: argparse.Namespace) -> None:
    """Export --weights to each --include format beside the checkpoint."""
    model, _ = load_model(args.weights, "cpu")
    model.fuse()
    h, w = (args.imgsz * 2)[:2]
    stride = int(model.stride.max())
    if h % stride or w % stride:
        raise ConfigError(f"--imgsz {h} {w} must be multiples of the largest stride {stride}")
    example = torch.zeros(args.batch_size, 3, h, w)
    with torch.no_grad():
        shape = tuple(model.predict(example).shape)
    weights = Path(args.weights)
    for fmt in args.include:
        if fmt == "torchscript":
            out = export_torchscript(model, example, weights.with_suffix(".torchscript"))
        else:
            out = export_onnx(model, example, weights.with_suffix(".onnx"), args.opset, args.dynamic)
        print(f"{fmt}: {out} ({out.stat().st_size / 1e6:.1f} MB), input {tuple(example.shape)}, output {shape}")


if __name__ == "__main__":
    sys.exit(main())
