"""Attention blocks: shapes, out_channels, forward/backward inside a model, Identity ablation."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from models.attention import C3TR, CBAM, ECA, SE, CoordAtt, SimAM, SpaceToDepth
from models.registry import MODULES
from models.yolo import build_model, load_model_yaml

MODELS = Path(__file__).resolve().parents[1] / "models"
SHAPE_KEEPING = [("SE", []), ("CBAM", [16, 7]), ("CoordAtt", [32]), ("ECA", []), ("SimAM", [])]


def _tiny_cfg(block: str, args: list, n: int = 1) -> dict:
    """Two-level model with ``block`` (repeated ``n`` times) in row 2; row 3 and Detect read row 2,
    so a wrong ``out_channels`` breaks construction."""
    return {
        "nc": 2, "anchors": [[4, 4, 8, 8], [16, 16, 32, 32]],
        "backbone": [[-1, 1, "Conv", [16, 3, 2]],      # 0 /2
                     [-1, 1, "Conv", [32, 3, 2]],      # 1 /4
                     [-1, n, block, args],             # 2
                     [-1, 1, "Conv", [32, 3, 2]]],     # 3 /8
        "head": [[[2, 3], 1, "Detect", ["nc", "anchors"]]],
    }


@pytest.mark.parametrize("name,args", SHAPE_KEEPING + [("C3TR", [48]), ("SpaceToDepth", [])])
def test_block_in_model_forward_backward(name, args):
    model = build_model(_tiny_cfg(name, args, n=2 if name == "C3TR" else 1))
    block = model.model[2]
    assert block.type == name and name in MODULES
    x = torch.rand(2, 3, 32, 32)
    out = model(x)
    side = 4 if name == "SpaceToDepth" else 8  # SpaceToDepth halves H and W
    assert [tuple(o.shape) for o in out] == [(2, 2, side, side, 7), (2, 2, side // 2, side // 2, 7)]
    c_in = model.model[3].conv.in_channels
    assert c_in == block.out_channels == model.detect.m[0].in_channels
    sum(o.float().mean() for o in out).backward()
    params = list(block.parameters())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert all(p.grad.abs().sum() > 0 for p in params if p.dim() > 1)


@pytest.mark.parametrize("cls,kwargs", [(SE, {}), (CBAM, {"r": 4, "k": 3}), (CoordAtt, {}),
                                        (ECA, {}), (SimAM, {})])
def test_attention_keeps_shape_and_gates(cls, kwargs):
    m = cls(24, **kwargs)
    x = torch.randn(2, 24, 5, 7)
    y = m(x)
    assert y.shape == x.shape and m.out_channels == 24
    # every block multiplies by a sigmoid gate in (0, 1): magnitudes never grow
    assert torch.all(y.abs() <= x.abs() + 1e-6) and not torch.allclose(y, x)


def test_eca_adaptive_kernel_and_simam_1x1():
    assert ECA(64).k == 3 and ECA(512).k == 5 and ECA(64, k=7).k == 7
    y = SimAM(8)(torch.randn(1, 8, 1, 1))  # a 1x1 map must not divide by zero
    assert torch.isfinite(y).all()


def test_c3tr_and_space_to_depth_shapes():
    m = C3TR(16, 32, n=2, heads=4)
    assert m.out_channels == 32 and len(m.m.layers) == 2
    assert m(torch.randn(2, 16, 6, 10)).shape == (2, 32, 6, 10)
    with pytest.raises(ValueError, match="heads"):
        C3TR(16, 12, heads=4)  # 6 hidden channels, not divisible by 4 heads
    s2d = SpaceToDepth(3)
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    y = s2d(x)
    assert s2d.out_channels == 12 and y.shape == (2, 12, 2, 3)
    assert torch.equal(torch.sort(y.flatten()).values, torch.sort(x.flatten()).values)  # lossless


@pytest.mark.parametrize("stem", ["yolov5n-p2-cbam", "yolov5n-p2-ca", "yolov5n-p2-tph"])
def test_model_yamls_build_and_ablate(stem):
    d = load_model_yaml(MODELS / f"{stem}.yaml")
    assert d["scale"] == "n"
    model = build_model(d, nc=3)
    out = model(torch.rand(1, 3, 64, 64))
    assert [o.shape[2] for o in out] == [16, 8, 4, 2]  # P2..P5
    sum(o.mean() for o in out).backward()
    attn = [m for m in model.model if m.type in ("CBAM", "CoordAtt")]
    assert len(attn) == 4 and [m.f for m in attn] == [21, 24, 27, 30]
    # ablation by renaming: every attention row -> Identity, all indices stay valid
    ablated = copy.deepcopy(d)
    for row in ablated["head"]:
        if row[2] in ("CBAM", "CoordAtt"):
            row[2] = "Identity"
    m2 = build_model(ablated, nc=3)
    assert len(m2.model) == len(model.model)
    assert sum(m.type == "Identity" for m in m2.model) == 4
    assert [tuple(o.shape) for o in m2(torch.rand(1, 3, 64, 64))] == [tuple(o.shape) for o in out]


def test_scaled_name_resolves_to_base_yaml():
    d = load_model_yaml(MODELS / "yolov5s-p2-cbam.yaml")
    base = load_model_yaml(MODELS / "yolov5-p2-cbam.yaml")
    assert d["scale"] == "s" and d["head"] == base["head"]
    tph = load_model_yaml(MODELS / "yolov5s-p2-tph.yaml")
    assert tph["backbone"][8][2] == "C3TR"
