import json
import subprocess
import sys
from pathlib import Path

import onnx
import torch

import export
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
    assert r.stdout.count("matches PyTorch at 1x3x64x96") == 2  # each file checked after writing
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        expected = model.predict(x)
        scripted = torch.jit.load(str(tmp_path / "best.torchscript"))(x)
    assert scripted.shape == expected.shape == (1, 3 * (16 * 24 + 8 * 12 + 4 * 6 + 2 * 3), 7)
    assert torch.allclose(scripted, expected, atol=1e-3)
    graph = onnx.load(str(tmp_path / "best.onnx"))
    dims = [d.dim_value for d in graph.graph.output[0].type.tensor_type.shape.dim]
    assert dims == list(expected.shape)
    meta = json.loads({p.key: p.value for p in graph.metadata_props}["sodyolo"])
    assert meta["names"] == ["a", "b"] and meta["imgsz"] == [64, 96] and not meta["dynamic"]
    assert meta["strides"] == [4, 8, 16, 32]


def test_dynamic_export_of_the_decoupled_p2_head_is_checked_at_two_sizes(tmp_path):
    torch.manual_seed(0)
    model = build_model("models/yolov5n-p2-af.yaml", nc=2).eval()
    weights = tmp_path / "best.pt"
    save_checkpoint({"task": "detect", "model_cfg": model.yaml, "model": model.state_dict(), "names": ["a", "b"],
                     "nc": 2}, weights)
    assert export.main(["--weights", str(weights), "--include", "onnx", "--imgsz", "64", "--dynamic"]) == 0
    from utils.backends import load_inference_model

    exported, meta = load_inference_model(tmp_path / "best.onnx")
    x = torch.rand(3, 3, 96, 128)  # neither the traced batch nor size
    with torch.no_grad():
        expected = model.predict(x)
    assert meta["dynamic"] and torch.allclose(exported.predict(x), expected, rtol=1e-3, atol=1e-3)


def test_export_mismatch_is_an_error(tmp_path, monkeypatch, capsys):
    weights, _ = _weights(tmp_path)
    real = export.load_inference_model

    def corrupted(path, device):  # an exported file whose scores are off
        model, meta = real(path, device)
        run = model._run
        model._run = lambda x: run(x) + torch.tensor([0.0] * 4 + [0.01] * 3)
        return model, meta

    monkeypatch.setattr(export, "load_inference_model", corrupted)
    assert export.main(["--weights", str(weights), "--include", "torchscript", "--imgsz", "64"]) == 1
    assert "output differs from PyTorch" in capsys.readouterr().err


def test_export_bad_input_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "export.py", "--weights", str(tmp_path / "none.pt")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "none.pt" in r.stderr
