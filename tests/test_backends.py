"""detect.py and val.py on models written by export.py (ONNX Runtime, TorchScript) against PyTorch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import onnx
import pytest
import torch
import yaml

import detect
import export
import val
from models.yolo import build_model
from tests.helpers import NAMES4, copy_sample
from utils.backends import load_inference_model
from utils.checkpoint import save_checkpoint
from utils.errors import CheckpointError, ConfigError

IMGSZ = 96


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A yolov5n-p2 checkpoint (P2 decode in the graph) exported dynamic (ONNX, TorchScript) and fixed (ONNX)."""
    root = tmp_path_factory.mktemp("backends")
    torch.manual_seed(0)
    model = build_model("models/yolov5n-p2.yaml", nc=len(NAMES4))
    with torch.no_grad():  # raise objectness so that the untrained model outputs detections, and shrink
        for conv in model.detect.m:  # the anchors to the 96-px input: boxes clipped to the whole frame
            conv.bias.view(model.detect.na, -1)[:, 4] += 5.0  # would be equal, their order a coin toss
        model.detect.anchors /= 8
    weights = root / "dynamic" / "best.pt"
    weights.parent.mkdir()
    save_checkpoint({"task": "detect", "model_cfg": model.yaml, "model": model.state_dict(), "names": NAMES4,
                     "nc": 4, "epoch": -1}, weights)
    assert export.main(["--weights", str(weights), "--include", "onnx", "torchscript", "--imgsz", str(IMGSZ),
                        "--dynamic"]) == 0
    fixed = root / "fixed" / "best.pt"
    fixed.parent.mkdir()
    shutil.copy(weights, fixed)
    assert export.main(["--weights", str(fixed), "--include", "onnx", "--imgsz", str(IMGSZ)]) == 0
    for img in copy_sample(root / "data", 3):  # stretched square: no letterbox padding, whose uniform
        cv2.imwrite(str(img), cv2.resize(cv2.imread(str(img)), (384, 384)))  # grey makes tied scores
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(root / "data"), "train": "images/val", "val": "images/val",
                                    "names": NAMES4}))
    return {"pt": weights, "onnx": weights.with_suffix(".onnx"), "torchscript": weights.with_suffix(".torchscript"),
            "fixed": fixed.with_suffix(".onnx"), "data": data, "images": root / "data" / "images" / "val"}


def _detect_rows(weights: Path, source: Path, out: Path, *extra: str) -> dict[str, torch.Tensor]:
    argv = ["--weights", str(weights), "--source", str(source), "--imgsz", str(IMGSZ), "--conf-thres", "0.05",
            "--max-det", "1000", "--save-txt", "--save-conf", "--nosave", "--device", "cpu", "--project", str(out),
            *extra]
    assert detect.main(argv) == 0
    return {p.stem: torch.tensor([[float(v) for v in row.split()] for row in p.read_text().splitlines()])
            for p in sorted((out / "exp" / "labels").glob("*.txt"))}


def _assert_same_detections(a: dict, b: dict, tol: float = 2e-4) -> None:
    assert a.keys() == b.keys() and sum(len(v) for v in a.values()) > 10  # enough detections to compare
    for k, rows in a.items():  # each row [class, xywh (normalised), conf] has a twin; order may differ
        assert rows.shape == b[k].shape, k  # among equal scores
        dist = torch.cdist(rows, b[k], p=float("inf"))
        assert dist.min(1).values.max() < tol and dist.min(0).values.max() < tol, k


@pytest.mark.parametrize("kind", ["onnx", "torchscript", "fixed"])
def test_detect_on_exported_model_matches_pytorch(exported, tmp_path, kind):
    expected = _detect_rows(exported["pt"], exported["images"], tmp_path / "pt")
    got = _detect_rows(exported[kind], exported["images"], tmp_path / kind)
    _assert_same_detections(got, expected)


def test_val_on_exported_onnx_matches_pytorch(exported, tmp_path, capsys):
    results = {}
    for kind in ("pt", "onnx", "fixed"):
        argv = ["--weights", str(exported[kind]), "--data", str(exported["data"]), "--imgsz", str(IMGSZ),
                "--batch-size", "2", "--device", "cpu", "--workers", "0", "--no-plots", "--save-json",
                "--conf-thres", "0.05", "--max-det", "1000",
                "--project", str(tmp_path / kind)]
        assert val.main(argv) == 0
        results[kind] = json.loads((tmp_path / kind / "exp" / "predictions.json").read_text())
    assert "onnx model" in capsys.readouterr().out
    for kind in ("onnx", "fixed"):  # fixed: batches of 2 cut to the export's batch of 1, square frames
        assert len(results[kind]) == len(results["pt"]) > 10
        _assert_same_detections(_json_rows(results[kind]), _json_rows(results["pt"]), tol=0.05)


def _json_rows(preds: list[dict]) -> dict[int, torch.Tensor]:
    """COCO results per image as rows [category, x, y, w, h (px), 100 * score]."""
    rows: dict[int, list] = {}
    for p in preds:
        rows.setdefault(p["image_id"], []).append([p["category_id"], *p["bbox"], 100 * p["score"]])
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in rows.items()}


def test_fixed_export_takes_inputs_up_to_its_size(exported, tmp_path, caplog):
    argv = ["--weights", str(exported["fixed"]), "--source", str(exported["images"]), "--imgsz", "160",
            "--nosave", "--device", "cpu", "--project", str(tmp_path)]
    assert detect.main(argv) == 0  # --imgsz lowered to the export's 96
    assert "-> 96 96: the exported model's input size" in caplog.text
    model, _ = load_inference_model(exported["fixed"])
    assert model.predict(torch.rand(3, 3, 64, 96)).shape == (3, 3 * (24 * 24 + 12 * 12 + 6 * 6 + 3 * 3), 9)
    with pytest.raises(ConfigError, match="exported for 96x96 inputs and got 128x96.*--dynamic"):
        model.predict(torch.rand(1, 3, 128, 96))


def test_metadata_round_trip_and_missing_metadata(exported, tmp_path):
    model, meta = load_inference_model(exported["onnx"])
    assert meta["names"] == NAMES4 and meta["dynamic"] and model.stride.tolist() == [4, 8, 16, 32]
    _, ts_meta = load_inference_model(exported["torchscript"])
    assert ts_meta == meta
    graph = onnx.load(str(exported["onnx"]))
    del graph.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(graph, str(bare))
    with pytest.raises(CheckpointError, match="no metadata of export.py"):
        load_inference_model(bare)
