"""utils/evaluation.py (the engine: EvalResult, no files) and utils/eval_output.py (tables, plots, files)."""

from __future__ import annotations

import builtins
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from tests.helpers import NAMES4, copy_sample
from utils.eval_output import BatchPlotter, format_results, save_json, save_plots, save_txt
from utils.evaluation import EvalCallback, EvalResult, evaluate

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_COCO_GT = ROOT / "tests" / "fixtures" / "val" / "hit_uav_sample_val_coco.json"  # make_coco_gt.py
S = 128  # letterboxed input side of the synthetic case


class OracleModel(nn.Module):
    """Stands in for a DetectionModel: returns preset decoded predictions, one batch per call."""

    def __init__(self, preds: list[torch.Tensor]):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.queue = list(preds)
        self.calls = 0
        self.stride = torch.tensor([8.0, 16.0, 32.0])
        self.detect = SimpleNamespace(decode=lambda raw: raw[0].clone())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.calls += 1
        return [self.queue.pop(0)]


class ListLoader:
    """A list of batches with a ``dataset`` attribute, like the project's DataLoader."""

    def __init__(self, batches: list, dataset):
        self.batches, self.dataset = batches, dataset

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


SIZES = [(100, 80), (60, 120), (100, 80)]  # original (w, h) of the three synthetic images
LABELS = [np.array([[0, 0.3, 0.4, 0.1, 0.15], [1, 0.7, 0.6, 0.2, 0.25]], np.float32),
          np.array([[1, 0.5, 0.5, 0.3, 0.1]], np.float32), np.zeros((0, 5), np.float32)]


def letterbox_case(nc: int = 3, fp_class: int | None = 2, perfect: bool = True):
    """Three images letterboxed into SxS; predictions equal to the labels in letterbox pixels.

    Image sizes (w, h): 100x80, 60x120, 100x80 (the last has no labels). Returns
    (model, loader, dataset) with one batch of 3.
    """
    targets, shapes, preds = [], [], torch.zeros((3, 10, 5 + nc))
    for i, ((w0, h0), lab) in enumerate(zip(SIZES, LABELS)):
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
    dataset = SimpleNamespace(labels=[lab.copy() for lab in LABELS], shapes=np.array(SIZES), img_files=paths)
    batch = (torch.zeros((3, 3, S, S), dtype=torch.uint8), torch.tensor(targets), tuple(paths), tuple(shapes))
    return OracleModel([preds]), ListLoader([batch], dataset), dataset


def label_boxes_px(i: int) -> np.ndarray:
    """Reference: labels of synthetic image i as (m, 5) [cls, x1, y1, x2, y2] original pixels."""
    w, h = SIZES[i]
    c, cx, cy, bw, bh = LABELS[i].T
    return np.stack([c, (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], 1)


def fake_loss(raw, targets):
    return torch.tensor(1.0), torch.tensor([0.1, 0.2, 0.3]), None


def test_evaluate_returns_result_in_original_pixels():
    model, loader, _ = letterbox_case()
    r = evaluate(model, loader, ["a", "b", "c"], area_ranges={"tiny": (0, 16**2)}, compute_loss=fake_loss)
    assert isinstance(r, EvalResult)
    m = r.metrics
    # GT for COCO comes from the labels at the true image sizes: a perfect score proves the
    # detections were mapped out of the letterbox into original pixels
    for k in ("mAP50", "mAP50-95", "AP", "AP50", "AP75", "APs", "AR100", "ARs", "AP_tiny"):
        assert m[k] == pytest.approx(1.0, abs=1e-6), k
    assert m["APm"] == 0.0 and m["APl"] == 0.0  # no GT that big: reported as 0
    assert m["val/box_loss"] == pytest.approx(0.1) and m["val/cls_loss"] == pytest.approx(0.3)
    assert all(isinstance(v, float) for v in m.values())
    assert [c["class"] for c in r.per_class] == ["a", "b"]  # class c has no labels
    assert [(c["images"], c["instances"]) for c in r.per_class] == [(1, 1), (2, 2)]
    assert r.seen == 3 and r.num_labels == 3 and r.images_per_class == {0: 1, 1: 2}
    assert r.gt_counts == {"small": 3, "medium": 0, "large": 0, "tiny": 2}  # 10x12 and 18x12 px
    assert [(Path(im.path).name, im.shape_hw) for im in r.images] == [
        ("im0.jpg", (80, 100)), ("im1.jpg", (120, 60)), ("im2.jpg", (80, 100))]
    for i in range(2):
        det = r.images[i].det[r.images[i].det[:, 4] > 0.85]  # the label echoes, not the false positive
        np.testing.assert_allclose(det[:, [5, 0, 1, 2, 3]].numpy(), label_boxes_px(i), atol=1e-3)
    # confusion matrix: rows predicted, columns true, index 3 = background
    expected = np.zeros((4, 4), np.int64)
    expected[0, 0], expected[1, 1], expected[2, 3] = 1, 2, 1
    np.testing.assert_array_equal(r.confusion, expected)
    assert r.as_dict()["per_class"] == r.per_class and r.as_dict()["AP"] == m["AP"]


def test_evaluate_no_predictions_is_all_zero():
    model, loader, _ = letterbox_case(fp_class=None)
    model.queue[0][..., 4] = 0.0  # nothing passes conf_thres
    r = evaluate(model, loader, ["a", "b", "c"], area_ranges={"tiny": (0, 256)})
    assert len(r.metrics) == 4 + 12 + 2 and all(v == 0.0 for v in r.metrics.values())
    assert all(im.det.shape == (0, 6) for im in r.images) and r.coco.num_detections == 0


def test_evaluate_without_labels_notes_it():
    model, loader, dataset = letterbox_case(fp_class=None)
    dataset.labels = [np.zeros((0, 5), np.float32)] * 3
    imgs, _, paths, shapes = loader.batches[0]
    loader.batches[0] = (imgs, torch.zeros((0, 6)), paths, shapes)
    r = evaluate(model, loader, ["a", "b", "c"])
    assert r.num_labels == 0 and any("no labels" in n for n in r.notes) and r.metrics["mAP50"] == 0.0


def _gt_json(tmp_path: Path, dataset, files: list[str]) -> Path:
    """COCO GT of the synthetic case with ids unrelated to the file order (matched by name)."""
    images, anns = [], []
    for i, (f, (w, h)) in enumerate(zip(files, SIZES)):
        images.append({"id": 100 - i, "file_name": Path(f).name, "width": w, "height": h})
        for c, x1, y1, x2, y2 in label_boxes_px(i).tolist():
            anns.append({"id": len(anns) + 1, "image_id": 100 - i, "category_id": int(c) + 1,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    cats = [{"id": k + 1, "name": n} for k, n in enumerate("abc")]
    (tmp_path / "gt.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return tmp_path / "gt.json"


def test_evaluate_with_json_gt_and_slicer(tmp_path):
    import cv2

    model, loader, dataset = letterbox_case(fp_class=None, perfect=False)  # batch predictions are wrong
    files = [str(tmp_path / f"im{i}.png") for i in range(3)]
    for i, (f, (w, h)) in enumerate(zip(files, SIZES)):
        cv2.imwrite(f, np.full((h, w, 3), 50 * i, np.uint8))  # pixel value = image index, for the slicer
    dataset.img_files = files
    imgs, targets, _, shapes = loader.batches[0]
    loader.batches[0] = (imgs, targets, tuple(files), shapes)
    gt = _gt_json(tmp_path, dataset, files)
    seen_shapes = []

    def slicer(img):  # the true boxes of the image it is given, in original pixels
        seen_shapes.append(img.shape)
        lab = label_boxes_px(int(round(img[0, 0, 0] / 50)))
        return torch.tensor(np.concatenate([lab[:, 1:], np.full((len(lab), 1), 0.9), lab[:, :1]], 1)).float()

    r = evaluate(model, loader, ["a", "b", "c"], coco_gt=gt, slicer=slicer)
    assert seen_shapes == [(h, w, 3) for w, h in SIZES]  # once per image, at its original size
    assert r.metrics["AP"] == pytest.approx(1.0) and r.metrics["mAP50-95"] == pytest.approx(1.0)
    assert any("sorted order" in n for n in r.notes)  # category ids 1..3 mapped to classes 0..2
    assert not r.gt_from_labels
    r = evaluate(letterbox_case(fp_class=None, perfect=False)[0], loader, ["a", "b", "c"], coco_gt=gt)
    assert r.metrics["AP"] < 0.1  # without the slicer the (shifted) batch predictions are used


class RecordingCallback(EvalCallback):
    def __init__(self):
        self.calls = []

    def on_batch(self, batch_index, imgs, targets, paths, out):
        self.calls.append((batch_index, tuple(imgs.shape), len(targets), list(paths), out))


def test_callback_sees_letterboxed_batches_and_input_pixel_detections():
    model, loader, _ = letterbox_case(fp_class=None)
    expected_input_boxes = model.queue[0][:, :3, :4].clone()  # cx, cy, w, h in input pixels
    cb = RecordingCallback()
    evaluate(model, loader, ["a", "b", "c"], callback=cb)
    assert len(cb.calls) == 1
    bi, shape, nt, paths, out = cb.calls[0]
    assert (bi, shape, nt, [Path(p).name for p in paths]) == (0, (3, 3, S, S), 3, ["im0.jpg", "im1.jpg", "im2.jpg"])
    det = out[0][out[0][:, 5] == 0]  # class 0 of image 0: still in letterbox pixels
    cx, cy, w, h = expected_input_boxes[0, 0].tolist()
    assert det[0, :4].tolist() == pytest.approx([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], abs=1e-4)


def test_max_det_caps_detections_per_image():
    model, loader, _ = letterbox_case(fp_class=None)
    preds = model.queue[0]
    preds[..., 5:] = 0.0
    for j in range(10):  # ten well-separated confident boxes per image
        preds[:, j, :4] = torch.tensor([6.0 + 12 * j, 64.0, 8.0, 8.0])
        preds[:, j, 4], preds[:, j, 5] = 0.9 - 0.01 * j, 1.0
    r = evaluate(model, loader, ["a", "b", "c"], max_det=4)
    assert [len(im.det) for im in r.images] == [4, 4, 4] and r.coco.num_detections == 12
    assert r.images[0].det[:, 4].tolist() == pytest.approx([0.9, 0.89, 0.88, 0.87])  # the best ones


def test_augment_runs_every_tta_pass():
    from utils.tta import TTA_PASSES

    model, loader, _ = letterbox_case(fp_class=None)
    model.queue *= len(TTA_PASSES)  # one forward per pass: plain, flipped, two scales
    r = evaluate(model, loader, ["a", "b", "c"], augment=True)
    assert model.calls == len(TTA_PASSES)
    # the flipped pass mirrors the boxes back, so those extra boxes land elsewhere than the labels
    assert len(r.images[0].det) > len(LABELS[0])


def test_evaluate_restores_mode_and_writes_no_files(tmp_path, monkeypatch):
    import cv2

    def no_write(*args, **kwargs):
        raise AssertionError("evaluate() wrote a file")

    real_open = builtins.open

    def read_only_open(file, mode="r", *args, **kwargs):
        if any(ch in mode for ch in "wax+"):
            no_write()
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(builtins, "open", read_only_open)
    monkeypatch.setattr(cv2, "imwrite", no_write)
    model, loader, _ = letterbox_case()
    model.train()
    r = evaluate(model, loader, ["a", "b", "c"], compute_loss=fake_loss, area_ranges={"tiny": (0, 256)},
                 half=True, callback=EvalCallback())
    monkeypatch.undo()
    assert r.metrics["mAP50"] == pytest.approx(1.0)
    assert model.training and model.weight.dtype == torch.float32  # half ignored on CPU, mode restored
    assert list(tmp_path.iterdir()) == []


# -- a real loader over the bundled sample ------------------------------------------------------------


class GroundTruthEcho(nn.Module):
    """Predicts exactly the loader's targets of the current batch (input pixels, score 0.9)."""

    def __init__(self, nc: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.nc, self.targets = nc, torch.zeros((0, 6))
        self.stride = torch.tensor([8.0, 16.0, 32.0])
        self.detect = SimpleNamespace(decode=self._decode)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x]

    def _decode(self, raw: list[torch.Tensor]) -> torch.Tensor:
        b, _, h, w = raw[0].shape
        t = self.targets
        n = max([int((t[:, 0] == i).sum()) for i in range(b)] + [1])
        pred = torch.zeros((b, n, 5 + self.nc))
        for i in range(b):
            rows = t[t[:, 0] == i]
            pred[i, :len(rows), :4] = rows[:, 2:6] * torch.tensor([w, h, w, h])
            pred[i, :len(rows), 4] = 0.9
            pred[i, torch.arange(len(rows)), 5 + rows[:, 1].long()] = 1.0
        return pred


class EchoLoader:
    """Wraps a DataLoader and hands each batch's targets to the echo model before it runs."""

    def __init__(self, loader, model: GroundTruthEcho):
        self.loader, self.model, self.dataset = loader, model, loader.dataset

    def __iter__(self):
        for batch in self.loader:
            self.model.targets = batch[1].clone()
            yield batch

    def __len__(self) -> int:
        return len(self.loader)


def test_ground_truth_predictions_on_bundled_sample_score_one(tmp_path):
    from utils.data.loader import build_dataloader

    files = copy_sample(tmp_path, 6)
    loader, dataset = build_dataloader([str(f) for f in files], 320, 4, 32, {}, augment=False, rect=True)
    model = GroundTruthEcho(4)
    r = evaluate(model, EchoLoader(loader, model), NAMES4, area_ranges={"tiny": (0, 256)})
    n_labels = sum(len((tmp_path / "labels" / "val" / f"{f.stem}.txt").read_text().splitlines()) for f in files)
    assert r.seen == 6 and r.num_labels == n_labels and r.coco.num_detections == n_labels
    for k in ("mAP50", "mAP50-95", "AP", "AP50", "APs", "AR100"):
        assert r.metrics[k] == pytest.approx(1.0, abs=1e-6), k
    assert sum(r.gt_counts[k] for k in ("small", "medium", "large")) == n_labels
    # the detections come back in original pixels: the HIT-UAV frames are 640x512, input is 320 wide
    assert all(im.shape_hw == (512, 640) for im in r.images)
    assert max(float(im.det[:, 2].max()) for im in r.images if len(im.det)) > 320
    # the same with the COCO file of the split (ids 1..4, images matched by file name)
    r = evaluate(model, EchoLoader(loader, model), NAMES4, coco_gt=SAMPLE_COCO_GT)
    assert r.metrics["AP"] == pytest.approx(1.0, abs=1e-6) and r.metrics["APs"] == pytest.approx(1.0, abs=1e-6)
    assert sum(r.gt_counts.values()) == n_labels  # only the evaluated images count


# -- output functions ---------------------------------------------------------------------------------


def test_format_results_tables_and_notes():
    model, loader, _ = letterbox_case()
    r = evaluate(model, loader, ["a", "b", "c"], area_ranges={"tiny": (0, 256)})
    r.notes.append("a note for the user")
    text = format_results(r, ["a", "b", "c"], verbose=True)
    lines = text.splitlines()
    assert lines[0] == "a note for the user"
    all_row = next(line.split() for line in lines if line.split()[:1] == ["all"])
    assert all_row[1:3] == ["3", "3"] and float(all_row[5]) == pytest.approx(1.0)  # images, instances, mAP50
    assert [line.split()[0] for line in lines[2:5]] == ["all", "a", "b"]  # per class with verbose
    head = next(i for i, line in enumerate(lines) if line.split()[:1] == ["COCO"])
    assert lines[head].split()[1:8] == ["AP", "AP50", "AP75", "APs", "APm", "APl", "AP_tiny"]
    assert float(lines[head + 1].split()[0]) == pytest.approx(1.0)
    assert "small 3" in text and "tiny 2" in text
    assert "a " not in format_results(r, ["a", "b", "c"]).split("COCO")[0].split("all")[1]  # no class rows


def test_save_txt_and_json(tmp_path):
    model, loader, _ = letterbox_case()
    r = evaluate(model, loader, ["a", "b", "c"])
    save_txt(r, tmp_path, save_conf=True)
    assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == ["im0.txt", "im1.txt", "im2.txt"]
    assert [float(v) for v in (tmp_path / "labels/im1.txt").read_text().split()] == pytest.approx(
        [1, 0.5, 0.5, 0.3, 0.1, 0.9], abs=1e-4)
    assert (tmp_path / "labels/im2.txt").read_text() == ""  # evaluated, nothing found
    save_txt(r, tmp_path / "noconf")
    rows = [line.split() for line in (tmp_path / "noconf/labels/im0.txt").read_text().splitlines()]
    assert sorted(len(row) for row in rows) == [5, 5, 5]

    path = save_json(r, tmp_path)
    preds = json.loads(path.read_text())
    assert path.name == "predictions.json" and len(preds) == 4 and {p["image_id"] for p in preds} == {1, 2}
    im1 = [p for p in preds if p["image_id"] == 2]
    x1, y1, x2, y2 = label_boxes_px(1)[0, 1:]
    assert im1[0]["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-2)
    gt = json.loads((tmp_path / "gt_coco.json").read_text())
    assert [im["file_name"] for im in gt["images"]] == ["im0.jpg", "im1.jpg", "im2.jpg"]
    assert [(im["width"], im["height"]) for im in gt["images"]] == SIZES


def test_save_json_skips_gt_when_given(tmp_path):
    model, loader, dataset = letterbox_case(fp_class=None)
    gt = _gt_json(tmp_path, dataset, dataset.img_files)
    r = evaluate(model, loader, ["a", "b", "c"], coco_gt=gt)
    save_json(r, tmp_path / "out")
    preds = json.loads((tmp_path / "out/predictions.json").read_text())
    assert {p["image_id"] for p in preds} == {100, 99} and {p["category_id"] for p in preds} == {1, 2}
    assert not (tmp_path / "out/gt_coco.json").exists()


def test_save_plots_and_batch_plotter(tmp_path):
    import cv2

    model, loader, _ = letterbox_case()
    plotter = BatchPlotter(tmp_path, ["a", "b", "c"], max_batches=1)
    r = evaluate(model, loader, ["a", "b", "c"], callback=plotter)
    paths = save_plots(r, ["a", "b", "c"], tmp_path)
    assert sorted(p.name for p in paths) == sorted(["confusion_matrix.png", "PR_curve.png", "F1_curve.png",
                                                    "P_curve.png", "R_curve.png", "ap_by_size.png"])
    for name in [p.name for p in paths] + ["val_batch0_labels.jpg", "val_batch0_pred.jpg"]:
        assert cv2.imread(str(tmp_path / name)) is not None, name
    imgs, targets, paths_, _ = loader.batches[0]
    plotter.on_batch(1, imgs, targets, paths_, None)  # past max_batches: nothing
    BatchPlotter(tmp_path / "sliced", ["a", "b", "c"]).on_batch(0, imgs, targets, paths_, None)
    assert not (tmp_path / "val_batch1_labels.jpg").exists()
    assert [p.name for p in (tmp_path / "sliced").iterdir()] == ["val_batch0_labels.jpg"]  # no pred mosaic
