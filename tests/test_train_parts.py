"""Unit tests of the pieces train.py wires together (optimizer, schedule, freezing, logging ...)."""

import math
import os

import pytest
import torch

from models.yolo import build_model
from utils.checkpoint import save_checkpoint
from utils.engine import _multi_scale
from utils.optim import build_optimizer, lr_lambda, resolve_auto_optimizer, warmup_step
from utils.results_log import ResultsLog
from utils.torch_utils import ModelEMA, select_device
from utils.checkpoint import build_train_model
from utils.optim import freeze_layers
from utils.run_dir import find_resume_checkpoint


@pytest.fixture(scope="module")
def model():
    return build_model("models/yolov5n-p2.yaml", nc=2)


def test_optimizer_groups_decay_only_conv_weights(model):
    opt = build_optimizer(model, "SGD", 0.01, 0.937, 5e-4)
    norm, weights, biases = (g["params"] for g in opt.param_groups)
    assert all(p.ndim == 1 for p in norm) and all(p.ndim == 4 for p in weights) and all(p.ndim == 1 for p in biases)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 5e-4, 0.0]
    assert len(norm) + len(weights) + len(biases) == len(list(model.parameters()))
    for name in ("Adam", "AdamW"):
        assert type(build_optimizer(model, name, 1e-3, 0.9, 5e-4)).__name__ == name
    with pytest.raises(ValueError, match="Lion"):
        build_optimizer(model, "Lion", 1e-3, 0.9, 0.0)


def test_auto_optimizer_picks_adamw_for_short_runs_and_sgd_for_long():
    assert resolve_auto_optimizer("auto", 0.01, 0.937, 500, nc=4) == ("AdamW", 0.00125, 0.9)
    assert resolve_auto_optimizer("auto", 0.01, 0.937, 20000, nc=4) == ("SGD", 0.01, 0.937)
    assert resolve_auto_optimizer("SGD", 0.02, 0.9, 5, nc=4) == ("SGD", 0.02, 0.9)


def test_lr_schedules_start_at_one_and_end_at_lrf():
    for cosine in (False, True):
        f = lr_lambda(100, 0.01, cosine)
        assert f(0) == pytest.approx(1.0) and f(100) == pytest.approx(0.01)
        assert 0.01 < f(50) < 1.0
    assert lr_lambda(100, 0.01, True)(25) > lr_lambda(100, 0.01, False)(25)  # cosine stays high longer


def test_warmup_ramps_lr_momentum_and_accumulation(model):
    hyp = {"warmup_bias_lr": 0.1, "warmup_momentum": 0.8, "momentum": 0.937}
    opt = build_optimizer(model, "SGD", 0.01, 0.937, 5e-4)
    torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)  # sets initial_lr
    assert warmup_step(opt, 0, 100, 0, lambda e: 1.0, hyp, 64, 16) == 1
    assert opt.param_groups[2]["lr"] == pytest.approx(0.1) and opt.param_groups[1]["lr"] == 0.0
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.8)
    assert warmup_step(opt, 100, 100, 0, lambda e: 1.0, hyp, 64, 16) == 4
    assert opt.param_groups[2]["lr"] == pytest.approx(0.01) and opt.param_groups[1]["lr"] == pytest.approx(0.01)
    assert warmup_step(opt, 500, 100, 0, lambda e: 1.0, hyp, 64, 16) == 4


def test_freeze_first_rows_or_listed_rows():
    m = build_model("models/yolov5n.yaml", nc=2)
    n = freeze_layers(m, [3])
    frozen = {name.split(".")[1] for name, p in m.named_parameters() if not p.requires_grad}
    assert frozen == {"0", "1", "2"} and n > 0
    m = build_model("models/yolov5n.yaml", nc=2)
    freeze_layers(m, [0, 9])
    assert {name.split(".")[1] for name, p in m.named_parameters() if not p.requires_grad} == {"0", "9"}


def test_multi_scale_sizes_are_grid_multiples_within_half_to_one_and_a_half():
    imgs = torch.rand(2, 3, 64, 96)
    for _ in range(20):
        out = _multi_scale(imgs, 96, 32)
        assert out.shape[:2] == (2, 3)
        assert all(s % 32 == 0 for s in out.shape[2:])
        assert 32 <= max(out.shape[2:]) <= 160


def test_weights_transfer_keeps_matching_tensors(tmp_path):
    src = build_model("models/yolov5n-p2.yaml", nc=3)
    save_checkpoint({"task": "detect", "model_cfg": src.yaml, "model": src.state_dict(), "names": list("abc"),
                     "nc": 3}, tmp_path / "w.pt")
    dst = build_train_model("", str(tmp_path / "w.pt"), nc=5)  # other class count: Detect convs differ
    assert dst.nc == 5
    assert torch.equal(dst.model[0].conv.weight, src.model[0].conv.weight)
    assert dst.detect.m[0].weight.shape != src.detect.m[0].weight.shape  # kept its fresh init


def test_results_log_appends_and_truncates_for_resume(tmp_path):
    log = ResultsLog(tmp_path)
    for e in range(4):
        log.append({"epoch": e, "loss": 1.0 / (e + 1)})
    log.truncate(1)
    rows = log.path.read_text().splitlines()
    assert rows[0] == "epoch,loss" and [r.split(",")[0] for r in rows[1:]] == ["0", "1"]
    with pytest.raises(ValueError, match="columns"):
        log.append({"epoch": 2, "other": 0.0})


def test_find_resume_checkpoint_picks_newest_last_pt(tmp_path):
    for name in ("exp", "exp2"):
        (tmp_path / name / "weights").mkdir(parents=True)
        (tmp_path / name / "weights" / "last.pt").write_bytes(b"x")
    newest = tmp_path / "exp2" / "weights" / "last.pt"
    os.utime(newest, (2e9, 2e9))
    assert find_resume_checkpoint(True, tmp_path) == newest
    with pytest.raises(Exception, match="no last.pt"):
        find_resume_checkpoint(True, tmp_path / "empty")


def test_ema_follows_the_model_with_warmup_decay(model):
    m = build_model("models/yolov5n.yaml", nc=2)
    ema = ModelEMA(m, decay=0.9999, tau=2000)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    ema.update(m)
    d = 0.9999 * (1 - math.exp(-1 / 2000))  # nearly 0: the first update copies the model
    w_m, w_e = m.model[0].conv.weight, ema.ema.model[0].conv.weight
    assert torch.allclose(w_e, w_m - d * 1.0, atol=1e-4)


def test_select_device_errors_are_clear():
    assert select_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="device"):
        select_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available"):
            select_device("0")
