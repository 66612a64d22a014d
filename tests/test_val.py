"""val.py end to end: the results-file command, a tiny checkpoint on the bundled sample, every flag's effect.

The evaluation engine and the output functions have their own unit tests in test_evaluation.py;
here the command is run as a user runs it (in process, and once as a subprocess).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import val
from tests.helpers import NAMES4, copy_sample, jittered_detections
from utils.tta import TTA_PASSES, tta_predict

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_COCO_GT = ROOT / "tests" / "fixtures" / "val" / "hit_uav_sample_val_coco.json"


def pycocotools_ap(gt_path: Path, dets: list[dict]) -> np.ndarray:
    """The reference: pycocotools' 12 summary figures."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        ev = COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "val.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_evaluates_results_file(tmp_path):
    gt = json.loads(SAMPLE_COCO_GT.read_text())
    dets = jittered_detections(gt, seed=5)
    (tmp_path / "pred.json").write_text(json.dumps(dets))
    expected = pycocotools_ap(SAMPLE_COCO_GT, dets)
    assert 0.05 < expected[0] < 0.95  # a case where a wrong matching would show
    r = _run_cli("--coco-gt", str(SAMPLE_COCO_GT), "--pred", str(tmp_path / "pred.json"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"20 images, {len(gt['annotations'])} GT boxes, {len(dets)} detections"
    header = next(i for i, line in enumerate(lines) if "APs" in line)
    assert lines[header].split()[:7] == ["COCO", "AP", "AP50", "AP75", "APs", "APm", "APl"]
    got = [float(v) for v in lines[header + 1].split()[:6]]
    np.testing.assert_allclose(got, np.maximum(expected[:6], 0), atol=1e-3)  # AP .. APl; -1 prints as 0
    assert "AR_tiny" in r.stdout  # the default extra size bin


def test_cli_bad_results_file_exits_1_with_one_line(tmp_path, capsys):
    (tmp_path / "bad.json").write_text('[{"image_id": 120, "bbox": [0, 0, 1, 1]}]')
    assert val.main(["--coco-gt", str(SAMPLE_COCO_GT), "--pred", str(tmp_path / "bad.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.json" in err[0] and "needs image_id" in err[0]


def _tiny_checkpoint_and_data(tmp_path: Path, n_images: int = 3) -> tuple[Path, Path]:
    """A 3-layer P2/P3 model checkpoint and a dataset YAML over a few bundled HIT-UAV val images."""
    import yaml

    from models.yolo import build_model
    from utils.checkpoint import save_checkpoint

    cfg = {"nc": 4, "depth_multiple": 1.0, "width_multiple": 1.0,
           "anchors": [[4, 6, 8, 12, 16, 10], [16, 30, 33, 23, 40, 40]],
           "backbone": [[-1, 1, "Conv", [8, 3, 2]], [-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [16, 3, 2]]],
           "head": [[[1, 2], 1, "Detect", ["nc", "anchors"]]]}
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # raise objectness so that the untrained model outputs many detections
        for conv in model.detect.m:
            conv.bias.view(model.detect.na, -1)[:, 4] += 6.0
    weights = tmp_path / "w.pt"
    save_checkpoint({"task": "detect", "model_cfg": model.yaml, "model": model.state_dict(), "names": NAMES4,
                     "nc": 4, "hyp": {}}, weights)
    copy_sample(tmp_path / "data", n_images)
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(tmp_path / "data"), "train": "images/val", "val": "images/val",
                                    "names": NAMES4}))
    return weights, data


def _common(tmp_path: Path, weights: Path, data: Path, max_det: int) -> list[str]:
    return ["--weights", str(weights), "--data", str(data), "--imgsz", "96", "--batch-size", "2",
            "--device", "cpu", "--workers", "0", "--project", str(tmp_path / "runs"), "--max-det", str(max_det)]


def _per_image_counts(run: Path) -> Counter:
    return Counter(p["image_id"] for p in json.loads((run / "predictions.json").read_text()))


def test_main_augment_and_outputs(tmp_path, capsys, monkeypatch):
    import utils.evaluation

    weights, data = _tiny_checkpoint_and_data(tmp_path)
    calls = {"tta": 0, "forward": 0}

    def counting_tta(model, x):  # the real TTA, counting its model passes
        calls["tta"] += 1
        hook = model.register_forward_hook(lambda *a: calls.__setitem__("forward", calls["forward"] + 1))
        try:
            return tta_predict(model, x)
        finally:
            hook.remove()

    monkeypatch.setattr(utils.evaluation, "tta_predict", counting_tta)
    argv = [*_common(tmp_path, weights, data, max_det=5), "--augment", "--save-json", "--save-txt", "--save-conf",
            "--verbose"]
    assert val.main(argv) == 0
    assert calls == {"tta": 2, "forward": 2 * len(TTA_PASSES)}  # 3 images in batches of 2
    out = capsys.readouterr().out
    assert "mAP50-95" in out and "APs" in out and "AR_tiny" in out and "COCO results saved to" in out
    assert sum(line.split()[0] in NAMES4 for line in out.splitlines() if line.strip()) >= 1  # --verbose rows
    run = tmp_path / "runs" / "exp"
    counts = _per_image_counts(run)
    assert len(counts) == 3 and max(counts.values()) == 5  # --max-det caps, and here it binds
    assert "maxDets 5 per image" in out and "AR5" in out  # ... and COCO counts as many
    preds = json.loads((run / "predictions.json").read_text())
    gt = json.loads((run / "gt_coco.json").read_text())
    assert {(im["width"], im["height"]) for im in gt["images"]} == {(640, 512)}  # original sizes
    assert max(p["bbox"][0] + p["bbox"][2] for p in preds) > 96  # boxes in original pixels, not --imgsz
    txts = sorted((run / "labels").glob("*.txt"))
    assert len(txts) == 3 and all(len(t.read_text().splitlines()) <= 5 for t in txts)
    assert all(len(row.split()) == 6 for t in txts for row in t.read_text().splitlines())  # --save-conf
    for name in ("val_batch0_labels.jpg", "val_batch0_pred.jpg", "val_batch1_pred.jpg", "confusion_matrix.png",
                 "PR_curve.png", "ap_by_size.png"):
        assert (run / name).is_file(), name


def test_main_slice_uses_the_slicer(tmp_path, capsys, monkeypatch):
    import utils.slicing

    weights, data = _tiny_checkpoint_and_data(tmp_path)
    real, seen = utils.slicing.sliced_predict, []

    def recording_slicer(model, img, **kw):
        det = real(model, img, **kw)
        seen.append((img.shape, kw["slice_size"], kw["max_det"], len(det)))
        return det

    monkeypatch.setattr(utils.slicing, "sliced_predict", recording_slicer)
    argv = [*_common(tmp_path, weights, data, max_det=7), "--slice", "320", "--no-plots", "--save-json",
            "--area-ranges"]
    assert val.main(argv) == 0
    out = capsys.readouterr().out
    assert [s[:3] for s in seen] == [((512, 640, 3), 320, 7)] * 3  # each original frame, once
    run = tmp_path / "runs" / "exp"
    counts = _per_image_counts(run)
    assert sorted(counts.values()) == sorted(s[3] for s in seen)  # the results are the slicer's
    assert max(counts.values()) == 7
    assert "AP_tiny" not in out and not (run / "confusion_matrix.png").exists()  # no extra bins, no plots
    assert not list(run.glob("val_batch*"))


def test_main_with_coco_gt_file_uses_its_ids(tmp_path, capsys):
    weights, data = _tiny_checkpoint_and_data(tmp_path)
    common = [*_common(tmp_path, weights, data, max_det=20), "--no-plots", "--save-json"]
    assert val.main(common) == 0
    assert val.main([*common, "--coco-gt", str(SAMPLE_COCO_GT)]) == 0
    out = capsys.readouterr().out
    assert "sorted order" in out  # the file's category ids 1..4 are mapped to classes 0..3
    runs = tmp_path / "runs"
    assert not (runs / "exp2" / "gt_coco.json").exists()  # the GT is the user's file
    fixture = json.loads(SAMPLE_COCO_GT.read_text())
    file_of = {im["id"]: im["file_name"] for im in fixture["images"]}
    converted = json.loads((runs / "exp" / "gt_coco.json").read_text())
    file_of_converted = {im["id"]: im["file_name"] for im in converted["images"]}

    def keyed(preds: list[dict], files: dict, cat_offset: int) -> list[tuple]:
        return sorted((files[p["image_id"]], p["category_id"] - cat_offset, *np.round(p["bbox"], 2), p["score"])
                      for p in preds)

    from_labels = json.loads((runs / "exp" / "predictions.json").read_text())
    from_file = json.loads((runs / "exp2" / "predictions.json").read_text())
    assert from_file and {p["image_id"] for p in from_file} <= {118, 119, 120}  # the file's ids of 3 images
    assert keyed(from_file, file_of, 1) == keyed(from_labels, file_of_converted, 0)


def test_main_user_errors_exit_1_with_one_line(tmp_path, capsys):
    weights, data = _tiny_checkpoint_and_data(tmp_path, n_images=1)
    for argv, match in ((["--weights", str(tmp_path / "missing.pt"), "--data", str(data)], "weights not found"),
                        (["--weights", str(weights), "--data", str(data), "--task", "test"], "no 'test' split"),
                        (["--weights", str(weights), "--data", str(data), "--area-ranges", "tiny=9"], "area-ranges"),
                        (["--pred", str(tmp_path / "p.json")], "go together"),
                        (["--coco-gt", str(SAMPLE_COCO_GT)], "go together")):
        assert val.main([*argv, "--device", "cpu", "--project", str(tmp_path / "runs")]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0], err


class BrightSquareModel(nn.Module):
    """'Detects' the bright square of each image: one box around pixels above 0.5 (for TTA geometry)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.stride = torch.tensor([8.0, 32.0])
        self.detect = SimpleNamespace(decode=self._decode)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x]

    @staticmethod
    def _decode(raw: list[torch.Tensor]) -> torch.Tensor:
        rows = []
        for img in raw[0].float().mean(1):
            ys, xs = torch.nonzero(img > 0.5, as_tuple=True)
            x1, x2, y1, y2 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
            rows.append(torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, 0.9, 1.0]))
        return torch.stack(rows)[:, None]  # (B, 1, 5 + nc)


def test_tta_maps_every_pass_back_to_input_pixels():
    x = torch.zeros((1, 3, 96, 128))
    x[..., 30:54, 20:44] = 1.0  # 24x24 square centred at (32, 42), off-centre so a wrong un-flip shows
    raw, pred = tta_predict(BrightSquareModel(), x)
    assert raw[0] is not None and pred.shape == (1, len(TTA_PASSES), 6)
    for box in pred[0]:
        assert box[:4].tolist() == pytest.approx([32, 42, 24, 24], abs=2.0)


def test_max_det_sets_the_nms_limit_and_coco_max_dets(tmp_path, capsys, monkeypatch):
    weights, data = _tiny_checkpoint_and_data(tmp_path, n_images=1)
    real, seen = val.evaluate, []

    def recording_evaluate(*args, **kw):
        seen.append((kw["max_det"], kw["coco_max_dets"]))
        return real(*args, **kw)

    monkeypatch.setattr(val, "evaluate", recording_evaluate)
    argv = ["--weights", str(weights), "--data", str(data), "--imgsz", "96", "--device", "cpu", "--workers", "0",
            "--project", str(tmp_path / "runs"), "--no-plots"]
    assert val.main(argv) == 0
    assert "maxDets 100 (COCO's)" in capsys.readouterr().out
    assert val.main([*argv, "--max-det", "1000"]) == 0
    assert "maxDets 1000 per image (COCO's is 100)" in capsys.readouterr().out
    assert seen == [(300, 100), (1000, 1000)]  # default: NMS keeps more than COCO counts; the flag sets both

    gt = {"images": [{"id": 1, "width": 400, "height": 400, "file_name": "dense.jpg"}],
          "categories": [{"id": 0, "name": "car"}],
          "annotations": [{"id": i + 1, "image_id": 1, "category_id": 0, "area": 100.0, "iscrowd": 0,
                           "bbox": [20.0 * (i % 15) + 5, 30.0 * (i // 15) + 5, 10.0, 10.0]} for i in range(150)]}
    dets = [{**{k: a[k] for k in ("image_id", "category_id", "bbox")}, "score": 1 - a["id"] / 300}
            for a in gt["annotations"]]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(dets))
    files = ["--coco-gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "pred.json"), "--area-ranges"]
    for extra, key, value in (([], "AR100", 0.667), (["--max-det", "300"], "AR300", 1.0)):
        assert val.main([*files, *extra]) == 0
        lines = capsys.readouterr().out.splitlines()
        header = next(i for i, line in enumerate(lines) if key in line.split())
        assert float(lines[header + 1].split()[lines[header].split().index(key)]) == pytest.approx(value, abs=1e-3)
    assert val.main([*files, "--max-det", "0"]) == 1 and "--max-det" in capsys.readouterr().err
