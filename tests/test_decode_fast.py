"""Candidate decode (rows that can pass NMS only) against the full decode + NMS, both heads.

The full ``decode`` + ``non_max_suppression`` is the reference: the candidate path must give the
same detections (boxes, scores, classes, order) for random and trained-looking raw outputs, with
batch > 1, several levels of different shapes, and when nothing survives. One row of each head is
also decoded by hand with the Python math module, independently of both paths.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch

from models.head import Detect
from models.head_decoupled import DecoupledDetect
from models.yolo import build_model
from utils.nms import non_max_suppression

SHAPES = [(12, 10), (6, 5), (3, 3)]  # (ny, nx) per level: non-square, strides 4, 8, 16
STRIDES = [4.0, 8.0, 16.0]
NC, REG_MAX, B = 3, 6, 3
MODELS = Path(__file__).resolve().parents[1] / "models"


def _anchor_head() -> Detect:
    head = Detect([8, 8, 8], nc=NC, anchors=3)
    head.stride.copy_(torch.tensor(STRIDES))
    return head


def _free_head() -> DecoupledDetect:
    head = DecoupledDetect([8, 8, 8], nc=NC, reg_max=REG_MAX)
    head.stride.copy_(torch.tensor(STRIDES))
    return head


def _conf_logits(head, kind: str, g: torch.Generator) -> list[torch.Tensor]:
    """Confidence logits (B, na, ny, nx) or (B, nc, ny, nx) per level: 'random' or 'trained'.

    'trained': background far below any threshold, plus a few 3x3 blobs of high confidence
    (neighbouring cells of one object, which NMS must suppress to one box).
    """
    lead = (B, head.na) if isinstance(head, Detect) else (B, NC)
    out = []
    for ny, nx in SHAPES:
        if kind == "random":
            out.append(torch.randn(*lead, ny, nx, generator=g) * 3 - 1)
            continue
        z = torch.randn(*lead, ny, nx, generator=g) - 9
        for _ in range(2):
            y, x = (int(torch.randint(0, n - 2, (1,), generator=g)) for n in (ny, nx))
            z[..., y:y + 3, x:x + 3] = torch.rand(*lead, 3, 3, generator=g) * 6 - 1
        out.append(z)
    return out


def _raw(head, kind: str, seed: int = 0) -> list[torch.Tensor]:
    """Raw level outputs in the head's own layout with the chosen confidence logits."""
    g = torch.Generator().manual_seed(seed)
    raw = []
    for (ny, nx), conf in zip(SHAPES, _conf_logits(head, kind, g)):
        if isinstance(head, Detect):
            p = torch.randn(B, head.na, ny, nx, head.no, generator=g)
            p[..., 4] = conf
            p[..., 5:] += 2.0  # confident classes, so obj * cls passes the thresholds too
        else:
            p = torch.randn(B, head.no, ny, nx, generator=g) * 2
            p[:, 4 * REG_MAX:] = conf
        raw.append(p)
    return raw


def _assert_same_detections(ref: list[torch.Tensor], got: list[torch.Tensor]) -> None:
    """Same count, classes and order; boxes and scores equal up to float32 sigmoid rounding.

    (SIMD and scalar exp may differ in the last bit, and which one runs depends on a value's
    position in its tensor.)
    """
    assert len(ref) == len(got) == B
    for r, d in zip(ref, got):
        assert r.shape == d.shape
        assert torch.equal(r[:, 5], d[:, 5])
        assert torch.allclose(r[:, :5], d[:, :5], rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("make_head", [_anchor_head, _free_head], ids=["anchor", "anchor_free"])
@pytest.mark.parametrize("kind", ["random", "trained"])
@pytest.mark.parametrize("conf, multi_label", [(0.001, True), (0.25, False), (0.25, True), (0.7, False)])
def test_candidate_nms_equals_full_decode_nms(make_head, kind, conf, multi_label):
    head = make_head()
    raw = _raw(head, kind)
    ref = non_max_suppression(head.decode(raw), conf, 0.45, multi_label=multi_label)
    cand = head.decode_candidates(raw, conf)
    assert [c.shape[1] for c in cand] == [5 + NC] * B
    _assert_same_detections(ref, non_max_suppression(cand, conf, 0.45, multi_label=multi_label))
    assert sum(r.shape[0] for r in ref) > 0  # the comparison saw detections
    if kind == "trained":  # the point: the background is never decoded
        assert sum(c.shape[0] for c in cand) < 0.6 * head.decode(raw).shape[1] * B


@pytest.mark.parametrize("make_head", [_anchor_head, _free_head], ids=["anchor", "anchor_free"])
def test_candidates_keep_every_row_nms_could_keep(make_head):
    head = make_head()
    raw = _raw(head, "random", seed=3)
    full, cand = head.decode(raw), head.decode_candidates(raw, 0.25)
    for b in range(B):
        score = full[b, :, 4:5] * full[b, :, 5:]  # what NMS compares with conf_thres
        want = full[b][(full[b, :, 4] > 0.25) & (score > 0.25).any(1)]
        got = cand[b][(cand[b][:, 4] > 0.25) & ((cand[b][:, 4:5] * cand[b][:, 5:]) > 0.25).any(1)]
        assert want.shape == got.shape and torch.allclose(want, got, rtol=1e-6, atol=1e-5)  # same rows, same order


def _sigmoid(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def test_anchor_candidate_row_matches_hand_decoding():
    head = _anchor_head()
    raw = [torch.full((B, 3, ny, nx, head.no), -20.0) for ny, nx in SHAPES]  # nothing survives ...
    t = [0.3, -0.7, 0.2, -0.4, 1.5, -1.0, 2.0, 0.1]  # ... but one cell: image 2, level 1, anchor 2, y 4, x 3
    raw[1][2, 2, 4, 3] = torch.tensor(t)
    cand = head.decode_candidates(raw, 0.25)
    assert [c.shape[0] for c in cand] == [0, 0, 1]
    aw, ah = head.anchors[1, 2].tolist()
    s = [_sigmoid(v) for v in t]
    expected = [(2 * s[0] - 0.5 + 3) * 8, (2 * s[1] - 0.5 + 4) * 8, (2 * s[2]) ** 2 * aw, (2 * s[3]) ** 2 * ah, *s[4:]]
    assert torch.allclose(cand[2][0], torch.tensor(expected), rtol=1e-5)


def test_anchor_free_candidate_row_matches_hand_decoding():
    head = _free_head()
    raw = [torch.zeros(B, head.no, ny, nx) for ny, nx in SHAPES]
    for p in raw:
        p[:, 4 * REG_MAX:] = -20.0
    bins = [[0.5 * k * (j + 1) for k in range(REG_MAX)] for j in range(4)]  # l, t, r, b bin logits
    cls = [-3.0, 1.0, -0.5]
    raw[2][0, :, 1, 2] = torch.tensor([v for side in bins for v in side] + cls)  # image 0, level 2, y 1, x 2
    cand = head.decode_candidates(raw, 0.25)
    assert [c.shape[0] for c in cand] == [1, 0, 0]
    dist = []
    for side in bins:
        e = [math.exp(v) for v in side]
        dist.append(sum(k * w for k, w in enumerate(e)) / sum(e) * 16)
    px, py = (2 + 0.5) * 16, (1 + 0.5) * 16
    x1, y1, x2, y2 = px - dist[0], py - dist[1], px + dist[2], py + dist[3]
    expected = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, 1.0, *(_sigmoid(v) for v in cls)]
    assert torch.allclose(cand[0][0], torch.tensor(expected), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("make_head", [_anchor_head, _free_head], ids=["anchor", "anchor_free"])
def test_no_candidate_and_partly_empty_batches(make_head):
    head = make_head()
    raw = _raw(head, "trained", seed=1)
    cand = head.decode_candidates(raw, 0.999)  # blobs reach logit 5 (0.993): nothing passes
    assert [tuple(c.shape) for c in cand] == [(0, 5 + NC)] * B
    assert [tuple(d.shape) for d in non_max_suppression(cand, 0.999)] == [(0, 6)] * B
    assert [d.shape[0] for d in non_max_suppression(head.decode(raw), 0.999)] == [0] * B
    for p in raw:  # images 0 and 2 empty, image 1 keeps its detections
        if isinstance(head, Detect):
            p[[0, 2], ..., 4] = -30.0
        else:
            p[[0, 2], 4 * REG_MAX:] = -30.0
    ref = non_max_suppression(head.decode(raw), 0.25)
    got = non_max_suppression(head.decode_candidates(raw, 0.25), 0.25)
    assert [d.shape[0] for d in got][::2] == [0, 0] and got[1].shape[0] > 0
    _assert_same_detections(ref, got)


@pytest.mark.parametrize("cfg", ["yolov5n-p2.yaml", "yolov5n-p2-af.yaml"])
def test_real_model_candidate_path_matches_full_path(cfg):
    torch.manual_seed(0)
    model = build_model(MODELS / cfg, nc=2).eval()
    head = model.detect
    with torch.no_grad():
        raw = model(torch.rand(2, 3, 64, 96))
    for p in raw:  # random weights give near-constant logits: spread them like a trained model
        g = torch.Generator().manual_seed(p.shape[2])
        if isinstance(head, Detect):
            p[..., 4] = torch.randn(p.shape[:4], generator=g) * 3 - 2
        else:
            cls = p[:, 4 * head.reg_max:]
            cls.copy_(torch.randn(cls.shape, generator=g) * 3 - 2)
    assert len(raw) == 4  # P2-P5
    for conf, ml in ((0.001, True), (0.25, False)):
        ref = non_max_suppression(head.decode(raw), conf, multi_label=ml)
        got = non_max_suppression(head.decode_candidates(raw, conf), conf, multi_label=ml)
        assert all(r.shape[0] > 0 for r in ref)
        for r, d in zip(ref, got):
            assert r.shape == d.shape and torch.equal(r[:, 5], d[:, 5])
            assert torch.allclose(r[:, :5], d[:, :5], rtol=1e-6, atol=1e-4)


class _Decode(torch.nn.Module):
    """Wraps a head so the tracer sees ``decode`` (as export does through ``predict``)."""

    def __init__(self, head):
        super().__init__()
        self.head = head

    def forward(self, *raw):
        return self.head.decode(list(raw))


@pytest.mark.parametrize("make_head", [_anchor_head, _free_head], ids=["anchor", "anchor_free"])
def test_grids_are_cached_in_eager_mode_and_not_while_tracing(make_head):
    head = make_head()
    raw = _raw(head, "random")
    expected = head.decode(raw).clone()  # fills the cache
    assert len(head._grid_cache) > 0
    first = dict(head._grid_cache)
    assert torch.equal(head.decode(raw), expected)
    assert all(head._grid_cache[k] is v for k, v in first.items())  # reused, not rebuilt
    head._grid_cache.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes read as Python ints
        traced = torch.jit.trace(_Decode(head), tuple(raw), check_trace=False)
    assert len(head._grid_cache) == 0  # a cached grid would freeze into the graph as a constant
    assert torch.allclose(traced(*raw), expected)
