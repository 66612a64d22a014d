"""Feature super-resolution branch: generator shapes, the 2x target's alignment, loss switches, export."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from export import export_torchscript
from models.sr import FeatureSR
from models.yolo import build_model, load_model_yaml
from utils.data.stitcher import StitchingLoader
from utils.engine import RunSpec, train_one_epoch
from utils.errors import ConfigError
from utils.hyp import load_hyp
from utils.loss import build_loss
from utils.optim import Warmup
from utils.sr_branch import STAT_KEYS, build_sr_branch
from utils.sr_loss import small_boxes_px, small_object_mask
from utils.sr_teacher import choose_window, crop_to_window, teacher_target
from utils.torch_utils import ModelEMA

SR_YAML = "models/yolov5n-p2-sr.yaml"
TERMS = ("sr_mse", "sr_tv", "sr_adv", "sr_dcls")
TERM_STAT = {"sr_mse": "sr/mse", "sr_tv": "sr/tv", "sr_adv": "sr/adv", "sr_dcls": "sr/dcls"}
# two images of 64 px; boxes [b, cls, cx, cy, w, h] normalized: two small, one large (area 1024 px at 64 px)
TARGETS = torch.tensor([[0, 0, 0.3, 0.3, 0.1, 0.1], [1, 1, 0.6, 0.5, 0.1, 0.15], [1, 2, 0.3, 0.6, 0.6, 0.5]])


def _hyp(**on) -> dict:
    hyp = load_hyp()
    hyp.update({k: 0.0 for k in TERMS}, **on)
    return hyp


def _sr_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(SR_YAML, nc=4)


def _pool8(x: torch.Tensor) -> torch.Tensor:
    """A stand-in stride-8 layer whose answer is known: the mean of each 8x8 block."""
    return F.avg_pool2d(x, 8)


@pytest.mark.parametrize("scale", ["n", "s", "m", "l", "x"])
def test_generator_doubles_the_grid_and_keeps_the_channels_of_its_input_row_at_every_scale(scale):
    d = load_model_yaml(f"models/yolov5{scale}-p2-sr.yaml")
    width = d["scales"][scale][1]
    c1 = math.ceil(256 * width / 8) * 8  # row 4 (backbone P3) of that scale: the generator's input
    row = next(r for r in d["backbone"] if r[2] == "FeatureSR")
    gen = FeatureSR(c1, *row[3])
    assert gen(torch.rand(2, c1, 5, 7)).shape == (2, c1, 10, 14) and gen.out_channels == c1


def test_generator_in_the_model_matches_the_teacher_grid_and_feeds_p2():
    model = _sr_model().eval()
    imgs = torch.rand(1, 3, 64, 96)
    seen = []
    model.model[10].register_forward_hook(lambda m, i, o: seen.append(o))
    p2 = model(imgs)[0]
    assert seen[0].shape == (1, 64, 16, 24) and p2.shape[2:4] == (16, 24)
    target = teacher_target(lambda x: model.forward_until(x, 4), imgs)
    assert target.shape == seen[0].shape
    assert torch.equal(model.forward_until(imgs, 4), model.model[:5](imgs))  # rows 0-4 are a plain chain


def test_target_cell_of_a_bright_block_is_the_generated_grid_cell():
    for i, j in [(0, 0), (3, 5), (7, 2), (6, 7)]:
        imgs = torch.zeros(1, 3, 32, 32)
        imgs[..., 4 * i:4 * i + 4, 4 * j:4 * j + 4] = 1.0  # exactly stride-4 cell (i, j)
        target = teacher_target(_pool8, imgs)
        assert target.shape == (1, 3, 8, 8)
        assert divmod(int(target[0, 0].argmax()), 8) == (i, j)


def test_target_of_a_smooth_image_is_the_mean_of_each_4x4_cell_also_on_crops():
    y, x = torch.meshgrid(torch.arange(64.0), torch.arange(96.0), indexing="ij")
    imgs = (0.3 * x + 0.7 * y).expand(2, 3, 64, 96) / 100  # linear: bilinear upsampling is exact inside
    expected = F.avg_pool2d(imgs, 4)
    target = teacher_target(_pool8, imgs)
    assert torch.allclose(target[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], atol=1e-6)
    window = (24, 16, 72, 48)  # x0, y0, x1, y1 px (multiples of 8)
    target = teacher_target(_pool8, imgs, window)
    cropped = crop_to_window(expected, window)
    assert target.shape == cropped.shape == (2, 3, 8, 12)
    assert torch.allclose(target[..., 1:-1, 1:-1], cropped[..., 1:-1, 1:-1], atol=1e-6)


def test_crop_window_is_aligned_inside_the_image_and_around_a_small_object():
    import random

    rng = random.Random(0)
    assert choose_window(64, 96, 0.0, torch.zeros(0, 2), rng) is None
    for _ in range(20):
        x0, y0, x1, y1 = choose_window(64, 96, 0.5, torch.tensor([[70.0, 10.0]]), rng)
        assert (x1 - x0, y1 - y0) == (48, 32) and all(v % 8 == 0 for v in (x0, y0, x1, y1))
        assert 0 <= x0 and x1 <= 96 and 0 <= y0 and y1 <= 64 and x0 <= 70 < x1 and y0 <= 10 < y1


def test_small_object_mask_weights_small_boxes_one_and_the_rest_the_background_weight():
    boxes = small_boxes_px(TARGETS, 64, 64, 1024)
    assert boxes[:, 1].tolist() == [0, 1]  # the 38x32 px box is not small
    mask = small_object_mask(boxes, (2, 16, 16), 0.1)
    assert mask[0, 0, 4, 4] == 1 and mask[1, 0, 8, 9] == 1 and mask[0, 0, 12, 12] == pytest.approx(0.1)
    assert mask[1, 0, 9, 4] == pytest.approx(0.1)  # inside the large box


def _branch_stats(hyp: dict):
    model = _sr_model()
    ema = ModelEMA(model)
    branch = build_sr_branch(model, hyp, lambda: ema.ema, 4, torch.device("cpu"))
    imgs = torch.rand(2, 3, 64, 64)
    model(imgs)
    loss = branch(imgs, TARGETS, 0)
    return loss, branch.epoch_stats(), branch


@pytest.mark.parametrize("term", TERMS)
def test_each_term_is_zero_when_its_gain_is_zero(term):
    loss, stats, branch = _branch_stats(_hyp(sr_mse_bg=0.1, **{term: 0.5}))
    assert loss > 0 and stats[TERM_STAT[term]] > 0
    assert all(stats[TERM_STAT[t]] == 0 for t in TERMS if t != term)
    assert (branch.disc is not None) == (term in ("sr_adv", "sr_dcls"))  # no discriminator without its terms
    assert stats["sr/teacher_frac"] == (0.0 if term == "sr_tv" else 1.0)  # TV alone needs no teacher


def test_all_terms_off_adds_nothing_and_runs_no_teacher():
    loss, stats, branch = _branch_stats(_hyp())
    assert loss.item() == 0 and branch.disc is None
    assert stats == {k: 0.0 for k in STAT_KEYS}
    assert build_sr_branch(build_model("models/yolov5n-p2.yaml", nc=4), _hyp(sr_mse=1.0), lambda: None, 4,
                           torch.device("cpu")) is None  # the plain P2 model has no branch


def test_discriminator_trains_and_reports_its_accuracy():
    hyp = _hyp(sr_adv=1.0, sr_dcls=1.0, sr_d_lr=0.01)
    model = _sr_model()
    ema = ModelEMA(model)
    branch = build_sr_branch(model, hyp, lambda: ema.ema, 4, torch.device("cpu"))
    before = [p.clone() for p in branch.disc.net.parameters()]
    imgs = torch.rand(2, 3, 64, 64)
    for ni in range(3):
        model.zero_grad()
        model(imgs)
        branch(imgs, TARGETS, ni).backward()
        assert all(p.grad is None for p in branch.disc.net.parameters())  # the generator's loss leaves D alone
    stats = branch.epoch_stats()
    assert 0 <= stats["sr/d_acc"] <= 1 and stats["sr/d_loss"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, branch.disc.net.parameters()))  # its own steps
    assert model.model[10].expand.weight.grad is not None  # the generator gets the adversarial gradient


def _train(model, branch_hyp: dict | None, steps: int = 3) -> dict:
    """A few optimizer steps of train_one_epoch on fixed batches; returns the final state_dict."""
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 256, (2, 3, 64, 64), generator=g, dtype=torch.uint8), TARGETS, ("a", "b"),
                (None, None)) for _ in range(steps)]
    hyp = _hyp()
    ema = ModelEMA(model)
    branch = None if branch_hyp is None else build_sr_branch(model, branch_hyp, lambda: ema.ema, 4,
                                                             torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    spec = RunSpec(device=torch.device("cpu"), epochs=1, imgsz=64, grid=32, lf=lambda e: 1.0,
                   warmup=Warmup(0, bias_lr=0.0, momentum=0.9, final_momentum=0.9, accumulate=1.0))
    out = train_one_epoch(model, StitchingLoader(batches, 0.0), opt, build_loss(model, hyp, 64), ema,
                          torch.amp.GradScaler("cpu", enabled=False), spec=spec, epoch=0, last_opt_step=-1,
                          aux_loss=branch)
    assert set(STAT_KEYS) <= set(out.stats) if branch else not any(k.startswith("sr/") for k in out.stats)
    return copy.deepcopy(model.state_dict())


def test_with_every_gain_zero_the_sr_model_trains_exactly_as_without_the_branch():
    plain = _train(_sr_model(), None)
    off = _train(_sr_model(), _hyp(sr_every=1, sr_crop=0.5))
    on = _train(_sr_model(), _hyp(sr_mse=1.0, sr_tv=0.1, sr_adv=0.1, sr_dcls=0.1))
    assert all(torch.equal(plain[k], off[k]) for k in plain)
    assert any(not torch.equal(plain[k], on[k]) for k in plain if k.startswith("model.10."))


def test_discriminator_is_absent_from_the_exported_and_fused_model(tmp_path):
    model = _sr_model()
    ema = ModelEMA(model)
    branch = build_sr_branch(model, _hyp(sr_adv=1.0, sr_dcls=1.0), lambda: ema.ema, 4, torch.device("cpu"))
    imgs = torch.rand(2, 3, 64, 64)
    model(imgs)
    branch(imgs, TARGETS, 0).backward()
    disc_ids = {id(p) for p in branch.disc.net.parameters()}
    assert not disc_ids & {id(p) for p in model.parameters()}
    model.eval()
    expected = model.predict(imgs)
    model.fuse()
    assert torch.allclose(model.predict(imgs), expected, atol=1e-4)  # the generator fuses like any Conv
    path = export_torchscript(model, imgs[:1], tmp_path / "sr.torchscript")
    exported = torch.jit.load(str(path)).state_dict()
    assert {k.removeprefix("model.") for k in exported} == set(model.state_dict())
    assert any(k.startswith("model.model.10.") for k in exported)  # the generator is there
    assert sum(v.numel() for v in exported.values()) == sum(v.numel() for v in model.state_dict().values())


def test_sr_hyp_keys_are_checked(tmp_path):
    hyp = load_hyp("hyp.sr.yaml")
    assert hyp["sr_mse"] > 0 and hyp["sr_adv"] > 0 and load_hyp("hyp.sr-mse-tv.yaml")["sr_adv"] == 0
    assert all(load_hyp(name)[k] == 0 for name in ("hyp.scratch.yaml", "hyp.sod.yaml") for k in TERMS)
    bad = tmp_path / "bad.yaml"
    bad.write_text("sr_msee: 1.0\n")
    with pytest.raises(ConfigError, match="sr_msee"):
        load_hyp(bad)
    model = _sr_model()
    for key, value in (("sr_every", 0), ("sr_every", 1.5), ("sr_crop", 2.0), ("sr_adv", -1.0)):
        with pytest.raises(ConfigError, match=key):
            build_sr_branch(model, {**_hyp(), key: value}, lambda: None, 4, torch.device("cpu"))


def test_discriminator_state_survives_a_weights_only_checkpoint(tmp_path):
    from utils.checkpoint import load_checkpoint, save_checkpoint

    hyp = _hyp(sr_adv=1.0, sr_dcls=1.0)
    model = _sr_model()
    ema = ModelEMA(model)
    branch = build_sr_branch(model, hyp, lambda: ema.ema, 4, torch.device("cpu"))
    imgs = torch.rand(2, 3, 64, 64)
    model(imgs)
    branch(imgs, TARGETS, 0)
    save_checkpoint({"task": "detect", "model_cfg": model.yaml, "model": model.state_dict(), "names": list("abcd"),
                     "sr_discriminator": branch.state_dict()}, tmp_path / "last.pt")
    state = load_checkpoint(tmp_path / "last.pt")["sr_discriminator"]
    resumed = build_sr_branch(_sr_model(), hyp, lambda: ema.ema, 4, torch.device("cpu"), seed=1)
    resumed.load_state_dict(state)
    for a, b in zip(branch.disc.net.parameters(), resumed.disc.net.parameters()):
        assert torch.equal(a, b)
    assert resumed.disc.optimizer.state_dict()["state"].keys() == branch.disc.optimizer.state_dict()["state"].keys()
