import subprocess
import sys
from pathlib import Path

import onnx
import torch

from models.yolo import build_model
from utils.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _weights(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    model = build_model("models/yolov5n-p2.yaml", nc=2).eval()
    path = tmp_path / "best.pt"
    save_checkpoint({"task": "detect", "model_cfg": model.yaml, "model": model.state_dict(), "names": ["a", "b"],
                     "nc": 2}, path)
    return path, model


def test_torchscript_and_onnx_export_match_the_model(tmp_path):
    weights, model = _weights(tmp_path)
    r = subprocess.run([sys.executable, "export.py", "--weights", str(weights), "--include", "torchscript", "onnx",
                        "--imgsz", "64", "96"], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        expected = model.predict(x)
        scripted = torch.jit.load(str(tmp_path / "best.torchscript"))(x)
    assert scripted.shape == expected.shape == (1, 3 * (16 * 24 + 8 * 12 + 4 * 6 + 2 * 3), 7)
    assert torch.allclose(scripted, expected, atol=1e-3)
    graph = onnx.load(str(tmp_path / "best.onnx"))
    dims = [d.dim_value for d in graph.graph.output[0].type.tensor_type.shape.dim]
    assert dims == list(expected.shape)


def test_export_bad_input_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "export.py", "--weights", str(tmp_path / "none.pt")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "none.pt" in r.stderr
