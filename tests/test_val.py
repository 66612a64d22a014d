"""val.py: the evaluation loop (coordinates, metrics, files), the results-file command, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import val
from utils.tta import TTA_PASSES, tta_predict

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
TINY_COCO_VAL = DATASETS / "tiny-coco" / "annotations" / "instances_val2017.json"
S = 128  # letterboxed input side


class OracleModel(nn.Module):
    """Stands in for a DetectionModel: returns preset decoded predictions, one batch per call."""

    def __init__(self, preds: list[torch.Tensor]):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.queue = list(preds)
        self.stride = torch.tensor([8.0, 16.0, 32.0])
        self.detect = SimpleNamespace(decode=lambda raw: raw[0].clone())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.queue.pop(0)]


class ListLoader:
    """A list of batches with a ``dataset`` attribute, like the project's DataLoader."""

    def __init__(self, batches: list, dataset):
        self.batches, self.dataset = batches, dataset

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def letterbox_case(nc: int = 3, fp_class: int | None = 2, perfect: bool = True):
    """Three images letterboxed into SxS; predictions equal to the labels in letterbox pixels.

    Image sizes (w, h): 100x80, 60x120, 100x80 (the last has no labels). Returns
    (model, loader, dataset) with one batch of 3.
    """
    sizes = [(100, 80), (60, 120), (100, 80)]
    labels = [np.array([[0, 0.3, 0.4, 0.1, 0.15], [1, 0.7, 0.6, 0.2, 0.25]], np.float32),
              np.array([[1, 0.5, 0.5, 0.3, 0.1]], np.float32), np.zeros((0, 5), np.float32)]
    targets, shapes, preds = [], [], torch.zeros((3, 10, 5 + nc))
    for i, ((w0, h0), lab) in enumerate(zip(sizes, labels)):
        g = min(S / w0, S / h0)
        padw, padh = (S - w0 * g) / 2, (S - h0 * g) / 2
        shapes.append(((h0, w0), ((g, g), (padw, padh))))
        for j, (c, cx, cy, bw, bh) in enumerate(lab.tolist()):
            box = [cx * w0 * g + padw, cy * h0 * g + padh, bw * w0 * g, bh * h0 * g]  # input px
            targets.append([i, c, *(v / S for v in box)])
            preds[i, j, :4] = torch.tensor(box) if perfect else torch.tensor(box) + 40
            preds[i, j, 4], preds[i, j, 5 + int(c)] = 0.9, 1.0
    if fp_class is not None:  # a confident detection of a class that has no labels anywhere
        preds[0, 9, :5] = torch.tensor([20.0, 60.0, 8.0, 8.0, 0.8])
        preds[0, 9, 5 + fp_class] = 1.0
    paths = [f"/data/images/im{i}.jpg" for i in range(3)]
    dataset = SimpleNamespace(labels=labels, shapes=np.array(sizes), img_files=paths)
    batch = (torch.zeros((3, 3, S, S), dtype=torch.uint8), torch.tensor(targets), tuple(paths), tuple(shapes))
    return OracleModel([preds]), ListLoader([batch], dataset), dataset


def test_evaluate_maps_to_original_pixels_and_scores_perfectly(tmp_path):
    model, loader, _ = letterbox_case()
    calls = []

    def fake_loss(raw, targets):
        calls.append(targets.shape)
        return torch.tensor(1.0), torch.tensor([0.1, 0.2, 0.3]), None

    m = val.evaluate(model, loader, ["a", "b", "c"], coco_gt=None, save_dir=tmp_path, plots=True,
                     area_ranges={"tiny": (0, 16**2)}, compute_loss=fake_loss, save_json=True,
                     save_txt=True, save_conf=True, verbose=True)
    # GT for COCO comes from the labels at the true image sizes: a perfect score proves the
    # detections were mapped out of the letterbox into original pixels
    for k in ("mAP50", "mAP50-95", "AP", "AP50", "AP75", "APs", "AR100", "ARs"):
        assert m[k] == pytest.approx(1.0, abs=1e-6), k
    assert m["APm"] == 0.0 and m["APl"] == 0.0  # no GT that big: reported as 0
    assert m["AP_tiny"] == pytest.approx(1.0)  # 10x12 px box
    assert m["val/box_loss"] == pytest.approx(0.1) and m["val/cls_loss"] == pytest.approx(0.3)
    assert calls == [(3, 6)]
    assert [r["class"] for r in m["per_class"]] == ["a", "b"]  # class c has no labels
    for f in ("confusion_matrix.png", "PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png",
              "ap_by_size.png", "val_batch0_labels.jpg", "val_batch0_pred.jpg", "predictions.json",
              "gt_coco.json", "labels/im0.txt"):
        assert (tmp_path / f).stat().st_size > 0, f
    lines = (tmp_path / "labels/im1.txt").read_text().split()
    assert [float(v) for v in lines] == pytest.approx([1, 0.5, 0.5, 0.3, 0.1, 0.9], abs=1e-4)
    preds = json.loads((tmp_path / "predictions.json").read_text())
    assert len(preds) == 4 and {p["image_id"] for p in preds} == {1, 2}


def test_evaluate_no_predictions_is_all_zero():
    model, loader, _ = letterbox_case(fp_class=None)
    model.queue[0][..., 4] = 0.0  # nothing passes conf_thres
    m = val.evaluate(model, loader, ["a", "b", "c"], area_ranges={"tiny": (0, 256)})
    floats = {k: v for k, v in m.items() if k != "per_class"}
    assert len(floats) == 4 + 12 + 2 and all(v == 0.0 for v in floats.values())


def test_evaluate_with_json_gt_and_slicer(tmp_path):
    import cv2

    from utils.coco_eval import yolo_labels_to_coco

    model, loader, dataset = letterbox_case(fp_class=None, perfect=False)  # batch predictions are wrong
    files = [str(tmp_path / f"im{i}.png") for i in range(3)]
    for i, (f, (w, h)) in enumerate(zip(files, dataset.shapes)):
        cv2.imwrite(f, np.full((h, w, 3), 50 * i, np.uint8))  # pixel value = image index, for the slicer
    dataset.img_files = files
    imgs, targets, _, shapes = loader.batches[0]
    loader.batches[0] = (imgs, targets, tuple(files), shapes)
    gt = yolo_labels_to_coco(dataset.labels, dataset.shapes, ["a", "b", "c"], files)
    for a in gt["annotations"]:  # ids unrelated to the file order: matched by file name
        a["image_id"] = 100 - a["image_id"]
    for im in gt["images"]:
        im["id"] = 100 - im["id"]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    per_image = [torch.tensor([[*a["bbox"][:2], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3], 0.9,
                                a["category_id"]] for a in gt["annotations"] if a["image_id"] == 99 - i]).reshape(-1, 6)
                 for i in range(3)]
    slicer = lambda img: per_image[int(round(img[0, 0, 0] / 50))]  # noqa: E731
    m = val.evaluate(model, loader, ["a", "b", "c"], coco_gt=tmp_path / "gt.json", slicer=slicer)
    assert m["AP"] == pytest.approx(1.0) and m["mAP50-95"] == pytest.approx(1.0)
    m = val.evaluate(letterbox_case(fp_class=None, perfect=False)[0], loader, ["a", "b", "c"],
                     coco_gt=tmp_path / "gt.json")
    assert m["AP"] < 0.1  # without the slicer the (shifted) batch predictions are used


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "val.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_evaluates_results_file(tmp_path):
    from tests.test_coco_eval import synthetic_detections
    from utils.coco_eval import CocoEvaluator, load_coco_gt

    gt = load_coco_gt(TINY_COCO_VAL)
    dets = synthetic_detections(gt, seed=5)
    (tmp_path / "pred.json").write_text(json.dumps(dets))
    ev = CocoEvaluator(gt)
    ev.add_results(dets)
    expected = ev.summarize()
    r = _run_cli("--coco-gt", str(TINY_COCO_VAL), "--pred", str(tmp_path / "pred.json"))
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if "APs" in line)
    assert lines[header].split()[:7] == ["COCO", "AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert float(lines[header + 1].split()[0]) == pytest.approx(expected["AP"], abs=1e-3)
    assert "AR_tiny" in r.stdout  # the default extra size bin



def test_cli_bad_results_file_exits_1_with_one_line(tmp_path, capsys):
    (tmp_path / "bad.json").write_text('[{"image_id": 1, "bbox": [0, 0, 1, 1]}]')
    assert val.main(["--coco-gt", str(TINY_COCO_VAL), "--pred", str(tmp_path / "bad.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.json" in err[0] and "needs image_id" in err[0]


def _tiny_checkpoint_and_data(tmp_path: Path, n_images: int = 4) -> tuple[Path, Path]:
    """A 3-layer P2/P3 model checkpoint and a dataset YAML listing a few HIT-UAV val images."""
    import yaml

    from models.yolo import build_model
    from utils.checkpoint import save_checkpoint

    names = ["Person", "Car", "Bicycle", "OtherVehicle"]
    cfg = {"nc": 4, "depth_multiple": 1.0, "width_multiple": 1.0,
           "anchors": [[4, 6, 8, 12, 16, 10], [16, 30, 33, 23, 40, 40]],
           "backbone": [[-1, 1, "Conv", [8, 3, 2]], [-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [16, 3, 2]]],
           "head": [[[1, 2], 1, "Detect", ["nc", "anchors"]]]}
    model = build_model(cfg)
    with torch.no_grad():  # raise objectness so that the untrained model outputs detections
        for conv in model.detect.m:
            conv.bias.view(model.detect.na, -1)[:, 4] += 6.0
    weights = tmp_path / "w.pt"
    save_checkpoint({"task": "detect", "model_cfg": model.yaml, "model": model.state_dict(), "names": names,
                     "nc": 4, "hyp": {}}, weights)
    images = sorted((DATASETS / "hit-uav" / "images" / "val").glob("*.jpg"))[:n_images]
    (tmp_path / "val.txt").write_text("\n".join(map(str, images)) + "\n")
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(tmp_path), "train": "val.txt", "val": "val.txt", "names": names}))
    return weights, data


def test_main_end_to_end_with_weights(tmp_path, capsys):
    weights, data = _tiny_checkpoint_and_data(tmp_path, n_images=3)
    common = ["--weights", str(weights), "--data", str(data), "--imgsz", "96", "--batch-size", "2",
              "--device", "cpu", "--workers", "0", "--project", str(tmp_path / "runs"), "--max-det", "50"]
    assert val.main([*common, "--augment", "--save-json", "--save-txt", "--save-conf", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "mAP50-95" in out and "APs" in out and "AR_tiny" in out
    run = tmp_path / "runs" / "exp"
    preds = json.loads((run / "predictions.json").read_text())
    gt = json.loads((run / "gt_coco.json").read_text())
    assert preds and {im["width"] for im in gt["images"]} == {640}  # original sizes, not --imgsz
    assert max(p["bbox"][0] + p["bbox"][2] for p in preds) > 96  # boxes in original pixels
    assert len(list((run / "labels").glob("*.txt"))) == 3
    assert (run / "val_batch0_pred.jpg").is_file() and (run / "ap_by_size.png").is_file()
    assert val.main([*common, "--slice", "320", "--no-plots", "--area-ranges"]) == 0  # sliced, no extra bins
    out = capsys.readouterr().out
    assert "AP_tiny" not in out and (tmp_path / "runs" / "exp2").is_dir()
    assert not (tmp_path / "runs" / "exp2" / "confusion_matrix.png").exists()


def test_main_user_errors_exit_1_with_one_line(tmp_path, capsys):
    weights, data = _tiny_checkpoint_and_data(tmp_path, n_images=1)
    for argv, match in ((["--weights", str(tmp_path / "missing.pt"), "--data", str(data)], "weights not found"),
                        (["--weights", str(weights), "--data", str(data), "--task", "test"], "no 'test' split"),
                        (["--weights", str(weights), "--data", str(data), "--area-ranges", "tiny=9"], "area-ranges"),
                        (["--pred", str(tmp_path / "p.json")], "go together")):
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
