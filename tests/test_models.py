import copy
from pathlib import Path

import pytest
import torch
import yaml

from models.registry import ModelConfigError
from models.yolo import build_model, load_model_yaml

MODEL_DIR = Path(__file__).resolve().parents[1] / "models"
YAMLS = sorted(MODEL_DIR.glob("*.yaml"))


def test_model_files_exist():
    names = {p.name for p in YAMLS}
    assert {"yolov5.yaml", "yolov5-p2.yaml"} <= names


@pytest.mark.parametrize("cfg", YAMLS, ids=[p.stem for p in YAMLS])
def test_every_model_yaml_builds_runs_forward_and_backward(cfg):
    torch.manual_seed(0)
    model = build_model(cfg, nc=3)  # scaled files default to their first (smallest) scale
    x = torch.rand(2, 3, 64, 96)
    out = model(x)
    nl = model.detect.nl
    assert len(out) == nl
    for o, s in zip(out, model.stride.tolist()):
        assert o.shape == (2, model.detect.na, 64 // s, 96 // s, 8)
    sum(o.sum() for o in out).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if "p2" in cfg.stem:
        assert model.stride.tolist() == [4.0, 8.0, 16.0, 32.0]
    else:
        assert model.stride.tolist() == [8.0, 16.0, 32.0]


@pytest.mark.parametrize("name,scale", [("yolov5n.yaml", "n"), ("yolov5s-p2.yaml", "s"), ("yolov5x-p2.yaml", "x")])
def test_scale_letter_resolves_to_base_file(name, scale):
    d = load_model_yaml(MODEL_DIR / name)
    assert d["scale"] == scale
    assert d["yaml_file"] == name


def test_scales_change_width_and_depth():
    n = build_model(MODEL_DIR / "yolov5n-p2.yaml", nc=2)
    s = build_model(MODEL_DIR / "yolov5s-p2.yaml", nc=2)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(s) > 3 * count(n)
    assert n.model[0].out_channels == 16 and s.model[0].out_channels == 32


def test_identity_ablation_keeps_graph_valid():
    d = load_model_yaml(MODEL_DIR / "yolov5-p2.yaml")
    ablated = copy.deepcopy(d)
    ablated["backbone"][9][2] = "Identity"  # SPPF -> Identity: same channels in and out of the row
    m = build_model(ablated, nc=1)
    assert type(m.model[9]).__name__ == "Identity"
    assert len(m(torch.rand(1, 3, 64, 64))) == 4


def test_unknown_key_and_module_are_errors(tmp_path):
    d = load_model_yaml(MODEL_DIR / "yolov5.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**{k: v for k, v in d.items() if k not in ("yaml_file", "scale")}, "depth": 1}))
    with pytest.raises(ValueError, match="depth"):
        load_model_yaml(bad)
    d2 = copy.deepcopy(d)
    d2["head"][0][2] = "NoSuchBlock"
    with pytest.raises(ValueError, match="NoSuchBlock"):
        build_model(d2, nc=1)
    with pytest.raises(ModelConfigError, match="not found"):
        load_model_yaml(MODEL_DIR / "yolov9q.yaml")


def test_fuse_keeps_outputs_and_predict_decodes():
    torch.manual_seed(0)
    m = build_model(MODEL_DIR / "yolov5n-p2.yaml", nc=2).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = m.predict(x)
        after = m.fuse().predict(x)
    assert before.shape == (1, 3 * (16 * 16 + 8 * 8 + 4 * 4 + 2 * 2), 7)
    assert torch.allclose(before, after, atol=1e-3)
    assert ((before[..., 4:] >= 0) & (before[..., 4:] <= 1)).all()


def test_info_reports_parameters_and_gflops():
    m = build_model(MODEL_DIR / "yolov5n.yaml", nc=80)
    text = m.info(640)
    assert "parameters" in text and "GFLOPs" in text
    gflops = float(text.split("parameters, ")[1].split(" GFLOPs")[0])
    assert 3.5 < gflops < 5.5  # YOLOv5n is about 4.5 GFLOPs at 640
