import copy
import re
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
    det = model.detect
    for o, s in zip(out, model.stride.tolist()):
        if hasattr(det, "na"):  # anchor head: (B, na, ny, nx, 5 + nc)
            assert o.shape == (2, det.na, 64 // s, 96 // s, 8)
        else:  # anchor-free decoupled head: (B, 4 * reg_max + nc, ny, nx)
            assert o.shape == (2, 4 * det.reg_max + 3, 64 // s, 96 // s)
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


README_ROW = re.compile(r"^\| (yolov5[\w-]*), nc=(\d+)[^|]*\| ([\d.]+) M \| ([\d.]+) \|$")


def readme_model_rows() -> list[tuple[str, int, float, float]]:
    """(model name, nc, params in M, GFLOPs at 640) of every row of README.md's model table."""
    text = (MODEL_DIR.parent / "README.md").read_text(encoding="utf-8")
    return [(m[1], int(m[2]), float(m[3]), float(m[4]))
            for m in map(README_ROW.match, text.splitlines()) if m]


def conv_gflops_hooked(model: torch.nn.Module) -> tuple[list, list[float]]:
    """Forward hooks adding up 2 * multiply-adds of every Conv2d (the only layers with FLOPs here)."""
    flops: list[float] = []

    def hook(m, inputs, out):
        flops.append(2.0 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1])

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    return handles, flops


def test_readme_table_has_rows():
    rows = readme_model_rows()
    assert len(rows) >= 5 and {r[0] for r in rows} >= {"yolov5n", "yolov5s", "yolov5n-p2", "yolov5s-p2"}


@pytest.mark.parametrize("name,nc,params_m,gflops", readme_model_rows(),
                         ids=[f"{r[0]}-nc{r[1]}" for r in readme_model_rows()])
def test_readme_params_and_gflops(name, nc, params_m, gflops):
    model = build_model(MODEL_DIR / f"{name}.yaml", nc=nc)
    n_params = sum(p.numel() for p in model.parameters())
    assert abs(n_params / 1e6 - params_m) <= 0.005 + 1e-9, f"{name}: {n_params / 1e6:.3f} M parameters"
    handles, conv_flops = conv_gflops_hooked(model)
    text = model.info(640)  # the README's command; its forward also runs the hooks
    for h in handles:
        h.remove()
    reported = float(re.search(r"([\d.]+) GFLOPs", text)[1])
    assert abs(reported - gflops) <= 0.05 + 1e-9, f"{name}: info() says {reported} GFLOPs"
    assert abs(sum(conv_flops) / 1e9 - gflops) <= 0.05 + 1e-9, f"{name}: {sum(conv_flops) / 1e9:.2f} GFLOPs by hooks"


def test_negative_from_reads_the_channels_of_that_row():
    """`from: -2` takes the output two rows back: its channels, not the previous row's."""
    cfg = {"nc": 2, "depth_multiple": 1.0, "width_multiple": 1.0, "anchors": 1,
           "backbone": [[-1, 1, "Conv", [16, 3, 2]],      # 0: 16 ch
                        [-1, 1, "Conv", [24, 3, 1]],      # 1: 24 ch
                        [-2, 1, "Conv", [32, 3, 2]]],     # 2: reads row 0 (16 ch)
           "head": [[[2], 1, "Detect", ["nc", "anchors"]]]}
    model = build_model(cfg)
    assert model.model[2].conv.in_channels == 16
    out = model(torch.zeros(1, 3, 64, 64))
    assert out[0].shape[2:4] == (16, 16)
