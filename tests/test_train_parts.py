"""Unit tests of the pieces train.py wires together (optimizer, schedule, freezing, logging ...)."""

import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from models.yolo import build_model
from utils.checkpoint import build_train_model, load_checkpoint, save_checkpoint
from utils.optim import (Warmup, build_optimizer, build_scheduler, build_warmup, freeze_layers, lr_lambda,
                         resolve_auto_optimizer, warmup_iterations, warmup_step)
from utils.results_log import ResultsLog
from utils.run_dir import find_resume_checkpoint
from utils.torch_utils import ModelEMA, select_device
from utils.train_config import TrainConfig
from utils.trainer import Trainer

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "hit-uav-sample"
HYP = {"warmup_bias_lr": 0.1, "warmup_momentum": 0.8, "momentum": 0.937}


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
    assert resolve_auto_optimizer("auto", 0.01, 0.937, 500, nc=4) == ("AdamW", 0.01, 0.9)
    assert resolve_auto_optimizer("auto", 0.004, 0.937, 500, nc=4) == ("AdamW", 0.004, 0.9)  # the hyp's lr0
    # fine-tuning keeps ultralytics' small lr
    assert resolve_auto_optimizer("auto", 0.01, 0.937, 500, nc=4, pretrained=True) == ("AdamW", 0.00125, 0.9)
    assert resolve_auto_optimizer("auto", 0.01, 0.937, 20000, nc=4) == ("SGD", 0.01, 0.937)
    assert resolve_auto_optimizer("SGD", 0.02, 0.9, 5, nc=4) == ("SGD", 0.02, 0.9)


def test_lr_schedules_start_at_one_and_end_at_lrf():
    for cosine in (False, True):
        f = lr_lambda(100, 0.01, cosine)
        assert f(0) == pytest.approx(1.0) and f(100) == pytest.approx(0.01)
        assert 0.01 < f(50) < 1.0
    assert lr_lambda(100, 0.01, True)(25) > lr_lambda(100, 0.01, False)(25)  # cosine stays high longer


def _sgd_with_initial_lr(model, name="SGD", lr=0.01):
    opt = build_optimizer(model, name, lr, 0.937, 5e-4)
    torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)  # sets initial_lr
    return opt


def test_warmup_ramps_lr_momentum_and_accumulation(model):
    opt = _sgd_with_initial_lr(model)
    warmup = build_warmup("SGD", HYP, iters=100, nbs=64, batch_size=16)
    assert warmup_step(opt, 0, warmup, 1.0) == 1
    assert opt.param_groups[2]["lr"] == pytest.approx(0.1) and opt.param_groups[1]["lr"] == 0.0
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.8)
    assert warmup_step(opt, 50, warmup, 0.5) == 2  # halfway: accumulation 2.5 -> 2, lr half of 0.01 * 0.5
    assert opt.param_groups[1]["lr"] == pytest.approx(0.0025) and opt.param_groups[2]["lr"] == pytest.approx(0.0525)
    assert warmup_step(opt, 100, warmup, 1.0) == 4
    assert opt.param_groups[2]["lr"] == pytest.approx(0.01) and opt.param_groups[1]["lr"] == pytest.approx(0.01)
    opt.param_groups[1]["lr"] = 0.123
    assert warmup_step(opt, 500, warmup, 1.0) == 4 and opt.param_groups[1]["lr"] == 0.123  # after warmup: untouched


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_warmup_starts_the_bias_lr_at_zero_under_adam(model, name):
    # warmup_bias_lr (0.1) is ~100x an Adam lr0 (1e-3): the bias group must rise from 0 like the others
    opt = _sgd_with_initial_lr(model, name, lr=0.001)
    warmup = build_warmup(name, HYP, iters=100, nbs=64, batch_size=16)
    warmup_step(opt, 0, warmup, 1.0)
    assert [g["lr"] for g in opt.param_groups] == [0.0, 0.0, 0.0]
    warmup_step(opt, 50, warmup, 1.0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.0005] * 3)
    assert build_warmup("SGD", HYP, 100, 64, 16).bias_lr == 0.1  # SGD keeps YOLOv5's high start


def test_warmup_lasts_at_least_100_iterations_but_ends_before_the_last_epoch():
    assert warmup_iterations(3.0, nb=2, epochs=300) == 100  # tiny dataset: 6 -> 100
    assert warmup_iterations(3.0, nb=500, epochs=300) == 1500  # large dataset: 3 epochs
    assert warmup_iterations(3.0, nb=2, epochs=10) == 18  # capped at (10 - 1) * 2
    assert warmup_iterations(3.0, nb=8, epochs=1) == 0  # one epoch: no room to warm up
    assert warmup_iterations(0.0, nb=8, epochs=100) == 0
    opt = _sgd_with_initial_lr(build_model("models/yolov5n.yaml", nc=2))
    assert warmup_step(opt, 0, Warmup(0, 0.1, 0.8, 0.937, 4.0), 1.0) == 4  # off: full accumulation
    assert opt.param_groups[2]["lr"] == pytest.approx(0.01)


def test_scheduler_built_at_a_resumed_epoch_matches_a_fresh_one():
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]

    def optimizer():
        return torch.optim.SGD([{"params": [p]} for p in params], lr=0.01, momentum=0.9)

    lf = lr_lambda(10, 0.01, cosine=True)
    fresh_opt = optimizer()
    fresh = build_scheduler(fresh_opt, lf)
    for k in range(1, 6):
        fresh_opt.step()
        fresh.step()  # end of epoch k - 1, as Trainer.fit does before saving
        resumed_opt = optimizer()
        resumed_opt.load_state_dict(fresh_opt.state_dict())
        resumed = build_scheduler(resumed_opt, lf, start_epoch=k)
        assert [g["lr"] for g in resumed_opt.param_groups] == pytest.approx([0.01 * lf(k)] * 3)
        resumed_opt.step()
        resumed.step()  # both move on to epoch k + 1
        assert [g["lr"] for g in resumed_opt.param_groups] == pytest.approx([0.01 * lf(k + 1)] * 3)


def test_freeze_first_rows_or_listed_rows():
    m = build_model("models/yolov5n.yaml", nc=2)
    n = freeze_layers(m, [3])
    frozen = {name.split(".")[1] for name, p in m.named_parameters() if not p.requires_grad}
    assert frozen == {"0", "1", "2"} and n > 0
    m = build_model("models/yolov5n.yaml", nc=2)
    freeze_layers(m, [0, 9])
    assert {name.split(".")[1] for name, p in m.named_parameters() if not p.requires_grad} == {"0", "9"}


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


def _copy_sample(dst: Path, n_train: int, n_val: int) -> Path:
    """Copy the first images (and labels) of the bundled sample; returns the dataset YAML."""
    for split, n in (("train", n_train), ("val", n_val)):
        (dst / "images" / split).mkdir(parents=True)
        (dst / "labels" / split).mkdir(parents=True)
        for img in sorted((SAMPLE / "images" / split).glob("*.jpg"))[:n]:
            shutil.copy(img, dst / "images" / split)
            shutil.copy(SAMPLE / "labels" / split / f"{img.stem}.txt", dst / "labels" / split)
    yaml_file = dst / "data.yaml"
    yaml_file.write_text(f"path: {dst}\ntrain: images/train\nval: images/val\n"
                         "names: [Person, Car, Bicycle, OtherVehicle]\n")
    return yaml_file


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory) -> Path:
    return _copy_sample(tmp_path_factory.mktemp("tiny"), 8, 4)


def _config(data: Path, **kw) -> TrainConfig:
    return TrainConfig(**{"data": str(data), "cfg": "models/yolov5n.yaml", "imgsz": 64, "batch_size": 4,
                          "workers": 0, "epochs": 6, "device": "cpu", "noautoanchor": True, **kw})


def _lrs(trainer: Trainer) -> list[float]:
    return [g["lr"] for g in trainer.optimizer.param_groups]


def test_resumed_trainer_uses_the_lr_a_fresh_run_has_at_that_epoch(tiny_yaml, tmp_path):
    config, k = _config(tiny_yaml, optimizer="SGD", multi_scale=True), 3
    fresh = Trainer(config, tmp_path / "run")
    assert fresh.spec.multi_scale and fresh.spec.imgsz == 64 and fresh.spec.grid == 32
    # 8 images / batch 4 = 2 batches per epoch: max(3 * 2, 100) warmup iterations, capped at 5 * 2
    assert fresh.spec.warmup.iters == 10 and fresh.spec.warmup.bias_lr == 0.1
    assert fresh.spec.warmup.accumulate == 16 / 4  # nominal batch 16 / batch 4
    for _ in range(k):  # the end of epochs 0 .. k-1 as in Trainer.fit (no batches needed for the lr)
        fresh.optimizer.step()
        fresh.scheduler.step()
    save_checkpoint(fresh._checkpoint(k - 1, final=False), tmp_path / "last.pt")
    resumed = Trainer(config, tmp_path / "run", resume_ckpt=load_checkpoint(tmp_path / "last.pt"))
    lf = lr_lambda(6, 0.01, cosine=False)  # hyp.scratch: lr0 0.01, lrf 0.01
    assert resumed.start_epoch == k
    assert _lrs(resumed) == pytest.approx(_lrs(fresh)) and _lrs(resumed) == pytest.approx([0.01 * lf(k)] * 3)
    for t in (fresh, resumed):
        t.optimizer.step()
        t.scheduler.step()
    assert _lrs(resumed) == pytest.approx([0.01 * lf(k + 1)] * 3) and _lrs(fresh) == pytest.approx(_lrs(resumed))


def test_cache_serves_training_and_val_images_from_ram(tmp_path):
    data = _copy_sample(tmp_path / "data", 4, 2)
    t = Trainer(_config(data, cache="ram"), tmp_path / "run")
    for f in (tmp_path / "data" / "images").rglob("*.jpg"):
        f.unlink()
    imgs, targets, _, _ = next(iter(t.train_loader))  # mosaics of 4 images, all from memory
    assert imgs.shape == (4, 3, 64, 64) and len(targets) > 0
    assert next(iter(t.val_loader))[0].shape[0] == 2
    t.train_ds.ims = [None] * len(t.train_ds.ims)  # without the RAM copies the files are needed
    with pytest.raises(FileNotFoundError):
        next(iter(t.train_loader))


def test_close_mosaic_trains_the_last_epochs_on_whole_frames(tiny_yaml, tmp_path, monkeypatch):
    """--close-mosaic 1 of 2 epochs: epoch 0 sees mosaics, epoch 1 letterboxed frames from new workers."""
    trainer = Trainer(_config(tiny_yaml, epochs=2, close_mosaic=1, noval=True), tmp_path / "run")
    seen = []  # (epoch, whether the loader's dataset builds mosaics, loader object)

    def record(model, loader, *args, epoch, **kw):
        seen.append((epoch, loader.loader.dataset.mosaic, loader.loader))
        imgs, targets, paths, shapes, _ = next(iter(loader))
        # a mosaic sample has no letterbox shape; a whole frame keeps its original size
        assert all((s is None) == (epoch == 0) for s in shapes)
        return real(model, loader, *args, epoch=epoch, **kw)

    import utils.trainer as trainer_module
    real = trainer_module.train_one_epoch
    monkeypatch.setattr(trainer_module, "train_one_epoch", record)
    trainer.fit()
    assert [(e, m) for e, m, _ in seen] == [(0, True), (1, False)]
    assert seen[0][2] is not seen[1][2]  # a new DataLoader: persistent workers would keep mosaic on
