"""Anchor-free decoupled head: graphs, decode, loss, overfitting, feedback gain, export and friends."""

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from models.head_decoupled import DecoupledDetect
from models.yolo import build_model
from utils.autoanchor import check_anchors
from utils.checkpoint import load_model, save_checkpoint
from utils.hyp import load_hyp
from utils.loss import ComputeLoss, build_loss
from utils.loss_decoupled import DecoupledLoss, dfl_loss, pad_targets
from utils.nms import non_max_suppression
from utils.slicing import sliced_predict
from utils.tta import tta_predict

# Two levels (strides 8 and 16) on a four-conv backbone: fast enough to train in a test.
TINY = {"nc": 2, "depth_multiple": 1.0, "width_multiple": 1.0,
        "backbone": [[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [16, 3, 2]],
                     [-1, 1, "Conv", [32, 3, 2]], [-1, 1, "Conv", [32, 3, 2]]],
        "head": [[[2, 3], 1, "DecoupledDetect", ["nc", 8]]]}


def _tiny(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(copy.deepcopy(TINY))


def _targets(boxes_xyxy, classes, size: int) -> torch.Tensor:
    """(n, 6) [0, cls, cx, cy, w, h] normalized from pixel xyxy boxes of one size x size image."""
    rows = [[0, c, (b[0] + b[2]) / 2 / size, (b[1] + b[3]) / 2 / size, (b[2] - b[0]) / size, (b[3] - b[1]) / size]
            for b, c in zip(boxes_xyxy, classes)]
    return torch.tensor(rows, dtype=torch.float32)


@pytest.mark.parametrize("cfg", [f"yolov5{s}{p}-af.yaml" for p in ("", "-p2") for s in "nslmx"])
def test_every_scale_builds_and_runs_forward_and_backward(cfg):
    # The meta device runs the real graph code on shapes only: every scale in about a second.
    with torch.device("meta"):
        model = build_model(f"models/{cfg}", nc=3)
        out = model(torch.zeros(2, 3, 64, 96))
        sum(o.sum() for o in out).backward()
    strides = [4, 8, 16, 32] if "-p2" in cfg else [8, 16, 32]
    assert [tuple(o.shape) for o in out] == [(2, 16 * 4 + 3, 64 // s, 96 // s) for s in strides]
    assert all(p.grad is not None for p in model.parameters())
    width = {"n": 0.25, "s": 0.5, "m": 0.75, "l": 1.0, "x": 1.25}[cfg[6]]
    assert model.model[0].out_channels == math.ceil(64 * width / 8) * 8  # the scale letter took effect


@pytest.mark.parametrize("cfg", ["yolov5n-af.yaml", "yolov5n-p2-af.yaml"])
def test_smallest_scale_runs_on_real_tensors(cfg):
    torch.manual_seed(0)
    model = build_model(f"models/{cfg}", nc=3)
    out = model(torch.rand(2, 3, 64, 64))
    sum(o.sum() for o in out).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    strides = [4.0, 8.0, 16.0, 32.0] if "p2" in cfg else [8.0, 16.0, 32.0]
    assert model.stride.tolist() == strides
    head = model.detect
    for box, cls, s in zip(head.box, head.cls, strides):
        assert torch.all(box[-1].bias == 1.0)
        assert torch.allclose(cls[-1].bias, torch.full((3,), math.log(5 / 3 / (640 / s) ** 2)))
    model.eval()
    with torch.no_grad():
        y = model.predict(torch.rand(1, 3, 64, 64))
    assert y.shape == (1, sum((64 // int(s)) ** 2 for s in strides), 8)
    assert torch.all(y[..., 4] == 1.0) and ((y[..., 5:] > 0) & (y[..., 5:] < 1)).all()


def _one_hot_side(bin_: int, reg_max: int) -> list[float]:
    return [20.0 if k == bin_ else 0.0 for k in range(reg_max)]


def test_decode_hand_built_raw_output():
    head = DecoupledDetect([8, 8], nc=2, reg_max=4)
    head.stride.copy_(torch.tensor([8.0, 16.0]))
    p0 = torch.full((1, 4 * 4 + 2, 2, 2), -30.0)  # level 0: 2 x 2 cells of 8 px
    p1 = torch.full((1, 4 * 4 + 2, 1, 1), -30.0)  # level 1: 1 cell of 16 px
    # level 0, row 0, column 1 (centre 12, 4): l = 2, t = 1, r = 3, b = 0 strides
    for side, bin_ in enumerate((2, 1, 3, 0)):
        p0[0, side * 4:(side + 1) * 4, 0, 1] = torch.tensor(_one_hot_side(bin_, 4))
    p0[0, 16:, 0, 1] = torch.tensor([0.0, math.log(3)])  # scores 0.5 and 0.75
    # level 1 cell (centre 8, 8): every side an even mix of bins 1 and 2 -> 1.5 strides = 24 px
    for side in range(4):
        p1[0, side * 4:(side + 1) * 4, 0, 0] = torch.tensor([-30.0, 5.0, 5.0, -30.0])
    y = head.decode([p0, p1])
    assert y.shape == (1, 5, 7)
    # x1 = 12 - 16 = -4, y1 = 4 - 8 = -4, x2 = 12 + 24 = 36, y2 = 4 + 0 = 4
    assert torch.allclose(y[0, 1, :4], torch.tensor([16.0, 0.0, 40.0, 8.0]), atol=1e-4)
    assert torch.allclose(y[0, 1, 4:], torch.tensor([1.0, 0.5, 0.75]), atol=1e-6)
    assert torch.allclose(y[0, 4, :4], torch.tensor([8.0, 8.0, 48.0, 48.0]), atol=1e-4)
    assert torch.allclose(y[0, 4, 5:], torch.zeros(2), atol=1e-12)


@pytest.mark.parametrize("shapes", [[(2, 3), (3, 2), (2, 3)]])
def test_decode_grid_follows_each_input_shape(shapes):
    head = DecoupledDetect([4], nc=1, reg_max=4)
    head.stride.copy_(torch.tensor([8.0]))
    for ny, nx in shapes:  # the cached grid must be keyed by shape
        raw = torch.full((1, 17, ny, nx), -30.0)
        raw[:, [0, 4, 8, 12]] = 20.0  # all sides at bin 0: a zero-size box on each cell centre
        y = head.decode([raw])[0]
        centres = [[(i + 0.5) * 8, (j + 0.5) * 8] for j in range(ny) for i in range(nx)]
        assert torch.allclose(y[:, :2], torch.tensor(centres), atol=1e-5)
        assert y[:, 2:4].abs().max() < 1e-5


def test_pad_targets_groups_boxes_per_image():
    t = torch.tensor([[1, 0, 0.5, 0.5, 0.5, 0.25], [0, 1, 0.25, 0.25, 0.5, 0.5], [1, 1, 0.75, 0.75, 0.25, 0.5]])
    labels, boxes, mask = pad_targets(t, 3, (64, 128))  # H 64, W 128
    assert mask.tolist() == [[True, False], [True, True], [False, False]]
    assert labels[1].tolist() == [0, 1] and labels[0, 0] == 1
    assert boxes[0, 0].tolist() == [0.0, 0.0, 64.0, 32.0]
    assert boxes[1, 0].tolist() == [32.0, 24.0, 96.0, 40.0]
    assert boxes[1, 1].tolist() == [80.0, 32.0, 112.0, 64.0]
    assert pad_targets(torch.zeros(0, 6), 2, (64, 64))[2].shape == (2, 0)


def test_dfl_loss_matches_hand_computation():
    logits = torch.tensor([[0.1, 2.0, -1.0, 0.5] * 4])
    target = torch.tensor([[1.3, 0.0, 2.5, 3.0]])
    logp = torch.log_softmax(torch.tensor([0.1, 2.0, -1.0, 0.5]), 0).tolist()
    # t between bins i and i + 1: -(i + 1 - t) * log p_i - (t - i) * log p_{i+1}; 3.0 clamps to 2.99
    per_side = [-(0.7 * logp[1] + 0.3 * logp[2]), -logp[0], -(0.5 * logp[2] + 0.5 * logp[3]),
                -(0.01 * logp[2] + 0.99 * logp[3])]
    assert dfl_loss(logits, target, 4).item() == pytest.approx(sum(per_side) / 4, rel=1e-5)


def test_loss_contract_and_images_without_targets():
    model = _tiny()
    loss_fn = build_loss(model, load_hyp(), 64)
    assert isinstance(loss_fn, DecoupledLoss)
    x = torch.rand(2, 3, 64, 64)
    t = torch.cat((_targets([[8, 8, 40, 30]], [1], 64), _targets([[30, 30, 60, 50]], [0], 64)))
    t[1, 0] = 1
    loss, items, extras = loss_fn(model(x), t)
    assert loss.ndim == 0 and torch.isfinite(loss) and items.shape == (3,) and (items > 0).all()
    assert loss.item() == pytest.approx(float(items.sum()) * 2, rel=1e-5)  # times the batch size
    assert set(extras) == {"fdl_ratio", "fdl_gain"}
    loss0, items0, _ = loss_fn(model(x), torch.zeros((0, 6)))
    loss0.backward()
    assert items0[0] == 0 and items0[1] == 0 and items0[2] > 0  # only the class term remains


def _calibrate_batchnorm(model, x: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics to those of ``x``, so eval mode sees what training saw."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one pass gives exactly this batch's statistics
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


@pytest.mark.parametrize("seed", [0, 1])
def test_loss_falls_and_decode_nms_recover_two_boxes(seed):
    model = _tiny(seed)
    size, boxes, classes = 64, torch.tensor([[8.0, 8, 28, 24], [36, 30, 58, 56]]), [0, 1]
    x = torch.zeros(1, 3, size, size)
    x[0, 0, 8:24, 8:28] = 1.0  # class 0 is red
    x[0, 1, 30:56, 36:58] = 1.0  # class 1 is green
    t = _targets(boxes.tolist(), classes, size)
    loss_fn = build_loss(model, load_hyp(), size)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(30):
        loss, _, _ = loss_fn(model(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-5:]) < 0.3 * losses[0]
    _calibrate_batchnorm(model, x)
    with torch.no_grad():
        det = non_max_suppression(model.predict(x), conf_thres=0.25, iou_thres=0.45)[0]
    for box, c in zip(boxes, classes):
        same = det[det[:, 5] == c]
        assert len(same) and box_iou(same[:1, :4], box[None]).item() > 0.5


def _losses_with_fdl(fdl: float, boxes, size: int = 64):
    model = _tiny()
    preds = model(torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(2)))
    loss_fn = DecoupledLoss(model.detect, {**load_hyp(), "fdl": fdl, "fdl_area": 1024})
    return loss_fn(preds, _targets(boxes, [0] * len(boxes), size))


def test_fdl_changes_box_loss_only_with_small_positives():
    large = [[4, 4, 60, 60]]  # 56 x 56 = 3136 px^2 >= fdl_area
    _, plain, ex_plain = _losses_with_fdl(0.0, large)
    _, boosted, ex_boost = _losses_with_fdl(2.0, large)
    assert torch.equal(plain, boosted) and ex_plain["fdl_ratio"] == 0.0 and ex_boost["fdl_gain"] == 1.0
    small = [[20, 20, 36, 36]]  # 16 x 16 = 256 px^2: g = 1 + 2 * (1 - r_0) * (1 - 256 / 1024), r_0 = 0
    _, plain, ex_plain = _losses_with_fdl(0.0, small)
    _, boosted, ex_boost = _losses_with_fdl(2.0, small)
    assert boosted[0].item() == pytest.approx(plain[0].item() * (1 + 2 * (1 - 256 / 1024)), rel=1e-5)
    assert torch.equal(plain[1:], boosted[1:])  # DFL and class terms untouched
    assert ex_plain["fdl_ratio"] == 1.0 and ex_boost["fdl_gain"] == pytest.approx(2.5)


def test_validation_call_leaves_feedback_untouched():
    model = _tiny()
    loss_fn = DecoupledLoss(model.detect, {**load_hyp(), "fdl": 1.0})
    preds = model(torch.rand(1, 3, 64, 64))
    loss_fn(preds, _targets([[20, 20, 36, 36]], [0], 64), update_feedback=False)
    assert loss_fn.r_prev == 0.0
    loss_fn(preds, _targets([[20, 20, 36, 36]], [0], 64))
    assert loss_fn.r_prev == 1.0  # the only object is small: it carries the whole box loss


def test_build_loss_keeps_the_anchor_loss_for_detect():
    model = build_model("models/yolov5n.yaml", nc=2)
    assert isinstance(build_loss(model, load_hyp(), 64), ComputeLoss)


def test_autoanchor_skips_a_head_without_anchors(capsys):
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = check_anchors(model, np.array([[10.0, 12.0]] * 20))
    assert result["recomputed"] is False and math.isnan(result["bpr_before"])
    assert "no anchors" in capsys.readouterr().out
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_fuse_and_checkpoint_keep_decoded_output(tmp_path):
    model = _tiny().eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        expected = model.predict(x)
    path = tmp_path / "best.pt"
    save_checkpoint({"task": "detect", "model_cfg": model.yaml, "model": model.state_dict(),
                     "names": ["a", "b"], "nc": 2}, path)
    loaded, _ = load_model(path)
    with torch.no_grad():
        assert torch.allclose(loaded.predict(x), expected, atol=1e-5)
        assert torch.allclose(loaded.fuse().predict(x), expected, atol=1e-3)


def test_torchscript_and_dynamic_onnx_match_eager(tmp_path):
    import onnx
    from onnx.reference import ReferenceEvaluator

    from export import export_onnx, export_torchscript

    model = _tiny().eval().fuse()  # as export.py does
    example = torch.rand(1, 3, 64, 96)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.load(str(export_torchscript(model, example, tmp_path / "m.torchscript")))
        onnx_path = export_onnx(model, example, tmp_path / "m.onnx", opset=17, dynamic=True)
    with torch.no_grad():
        assert torch.allclose(ts(example), model.predict(example), atol=1e-4)
        other = torch.rand(2, 3, 96, 32)  # another size: the grid must not be a traced constant
        onnx_out = ReferenceEvaluator(onnx.load(str(onnx_path))).run(None, {"images": other.numpy()})[0]
        expected = model.predict(other)
    assert onnx_out.shape == tuple(expected.shape) == (2, 12 * 4 + 6 * 2, 7)
    assert np.abs(onnx_out - expected.numpy()).max() < 1e-4


def test_tta_and_sliced_inference_use_the_decoded_contract():
    model = _tiny().eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        raw, merged = tta_predict(model, x)
        plain, mirrored = model.predict(x), model.predict(x.flip(-1))
    n = plain.shape[1]
    assert torch.allclose(merged[:, :n], plain, atol=1e-5)  # first pass: the image as it is
    mirrored[..., 0] = 64 - mirrored[..., 0]
    assert torch.allclose(merged[:, n:2 * n], mirrored, atol=1e-4)  # second pass mapped back
    assert torch.allclose(model.detect.decode(raw), plain, atol=1e-6)
    img = (np.random.default_rng(0).random((80, 120, 3)) * 255).astype(np.uint8)
    det = sliced_predict(model, img, slice_size=64, overlap=0.2, imgsz=64, conf_thres=0.0)
    assert det.shape[1] == 6 and det.shape[0] > 0
    assert (det[:, [0, 2]] >= 0).all() and (det[:, [0, 2]] <= 120).all() and (det[:, [1, 3]] <= 80).all()
