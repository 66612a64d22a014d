"""benchmarks/speed.py without ultralytics: the side's request loop, the shared batch, the turn-taking."""

from __future__ import annotations

import io
import json

import torch

from benchmarks.speed import alternate, fixed_batch, row
from benchmarks.speed_ultra_side import random_batch, serve, timed


def test_side_answers_each_line_and_reports_errors_without_stopping():
    inp = io.StringIO('{"op": "no-such-op"}\n\n{"op": "train"}\n')
    out = io.StringIO()
    serve(0, inp, out)
    answers = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(answers) == 2 and all("error" in a for a in answers)
    assert answers[0]["error"].startswith("KeyError")


def test_both_sides_train_on_the_same_boxes():
    side = random_batch(2, 64)
    imgs, targets = fixed_batch(2, 64)
    assert torch.equal(imgs, side["img"]) and targets.shape == (12, 6)
    assert torch.equal(targets[:, 0], side["batch_idx"]) and torch.equal(targets[:, 1:2], side["cls"])
    assert torch.equal(targets[:, 2:], side["bboxes"])
    assert (targets[:, 2:4] - targets[:, 4:6] / 2 > 0).all() and (targets[:, 2:4] + targets[:, 4:6] / 2 < 1).all()


def test_turns_alternate_and_an_ultralytics_error_ends_its_turns():
    calls = []
    ours = lambda: calls.append("ours") or [1.0]  # noqa: E731
    ok = lambda: calls.append("ultra") or {"ms": [2.0, 4.0]}  # noqa: E731
    o, u = alternate(3, ours, ok)
    assert calls == ["ours", "ultra"] * 3 and o == [1.0] * 3 and u == [2.0, 4.0] * 3
    calls.clear()
    bad = lambda: calls.append("ultra") or {"error": "ImportError: x"}  # noqa: E731
    o, u = alternate(3, ours, bad)
    assert calls == ["ours", "ultra", "ours", "ours"] and u == "error: ImportError: x"


def test_timed_counts_only_the_timed_calls(capsys):
    n = []
    ms = timed(lambda: n.append(1), iters=3, warmup=2)
    assert len(ms) == 3 and len(n) == 5 and all(m >= 0 for m in ms)
    row("latency b1", "a", [10.0, 20.0, 30.0], "b", [40.0], 1)
    line = capsys.readouterr().out.strip()
    assert line == "| latency b1 | a | 20.0 (10.0) | 50.00 | b | 40.0 (40.0) | 25.00 | 2.00 |"
