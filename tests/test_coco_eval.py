"""COCO evaluation: agreement with pycocotools on real COCO ground truth, conversions, edge cases.

The ground truth is tests/fixtures/coco/instances_val2017_subset.json: 31 images and their boxes
cut from COCO val2017 (all 80 categories, ids 1..90 with gaps; 5 crowd boxes; mask areas as
published) by tests/fixtures/coco/make_fixture.py.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from utils.coco_eval import (COCO_KEYS, CocoEvaluator, CocoFormatError, coco_keys, evaluate_files, format_coco_table,
                             load_coco_gt, load_coco_results, max_dets_list, parse_area_ranges, yolo_labels_to_coco)
from utils.errors import ConfigError

from tests.helpers import jittered_detections

COCO_GT = Path(__file__).resolve().parent / "fixtures" / "coco" / "instances_val2017_subset.json"


def synthetic_detections(gt: dict, seed: int = 0) -> list[dict]:
    """Detections made from GT: jittered boxes, 20% dropped, false positives, shuffled scores."""
    return jittered_detections(gt, seed=seed, jitter=0.08, false_positives=0.5)


def pycocotools_stats(gt: dict, dets: list[dict], extra: dict | None = None) -> tuple[np.ndarray, dict]:
    """The reference: pycocotools' 12 summary figures, plus AP/AR of extra area ranges."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(dets)) if dets else COCO()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        stats, extras = ev.stats.copy(), {}
        if extra:
            ev.params.areaRng = [*ev.params.areaRng, *(list(v) for v in extra.values())]
            ev.params.areaRngLbl = [*ev.params.areaRngLbl, *extra]
            ev.evaluate()
            ev.accumulate()
            for i, name in enumerate(extra):
                p = ev.eval["precision"][:, :, :, 4 + i, 2]
                r = ev.eval["recall"][:, :, 4 + i, 2]
                extras[f"AP_{name}"] = p[p > -1].mean()
                extras[f"AR_{name}"] = r[r > -1].mean()
    return stats, extras


@pytest.fixture(scope="module")
def coco_gt() -> dict:
    return load_coco_gt(COCO_GT)


def test_agrees_with_pycocotools_on_coco_subset(coco_gt):
    dets = synthetic_detections(coco_gt)
    ranges = parse_area_ranges(["tiny=0,16"])
    ev = CocoEvaluator(coco_gt, ranges)
    ev.add_results(dets)
    ours = ev.summarize()
    ref, ref_extra = pycocotools_stats(coco_gt, dets, ranges)
    assert 0.2 < ours["AP"] < 0.9  # a non-trivial case
    for k in ("APs", "APm", "APl", "ARs", "ARm", "ARl"):  # every COCO size bin holds GT and hits
        assert 0.05 < ours[k] < 0.95, k
    for k, v in zip(COCO_KEYS, ref):
        assert ours[k] == pytest.approx(v, abs=1e-3), k
    for k, v in ref_extra.items():
        assert ours[k] == pytest.approx(v, abs=1e-3), k


def test_fixture_is_real_coco_shaped(coco_gt):
    """The checks below rely on these properties of the cut: guard them against a re-cut."""
    cat_ids = sorted(c["id"] for c in coco_gt["categories"])
    assert len(cat_ids) == 80 and cat_ids[0] == 1 and cat_ids[-1] == 90  # ids with gaps
    assert {"info", "licenses"} <= set(coco_gt)
    assert sum(a["iscrowd"] for a in coco_gt["annotations"]) >= 1
    assert all(v > 10 for v in CocoEvaluator(coco_gt).gt_counts().values())


def test_class_index_path_maps_sorted_category_ids(coco_gt):
    dets = synthetic_detections(coco_gt, seed=1)
    ev = CocoEvaluator(coco_gt, nc=80)
    assert "sorted order" in ev.mapping_note  # COCO ids are 1..90 with gaps
    # independent of the evaluator: COCO's 80 ids are 1..90 minus these ten
    cat_ids = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
    assert cat_ids == sorted(c["id"] for c in coco_gt["categories"])
    for img_id in {d["image_id"] for d in dets}:
        ds = [d for d in dets if d["image_id"] == img_id]
        xywh = torch.tensor([d["bbox"] for d in ds], dtype=torch.float64)
        xyxy = torch.cat((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), 1)
        cls = torch.tensor([cat_ids.index(d["category_id"]) for d in ds])
        ev.add(img_id, xyxy, torch.tensor([d["score"] for d in ds]), cls)
    ref, _ = pycocotools_stats(coco_gt, dets)
    ours = ev.summarize()
    assert [ours[k] for k in COCO_KEYS] == pytest.approx(ref.tolist(), abs=1e-3)
    assert {r["category_id"] for r in ev.results()} <= set(cat_ids)
    last = CocoEvaluator(coco_gt, nc=80)
    last.add(coco_gt["images"][0]["id"], torch.tensor([[0.0, 0.0, 5.0, 5.0]] * 3), torch.ones(3),
             torch.tensor([0, 11, 79]))
    assert [r["category_id"] for r in last.results()] == [1, 13, 90]  # index 11 skips the gap at 12


def test_images_absent_from_predictions_count_as_missed(coco_gt):
    dets = synthetic_detections(coco_gt, seed=2)
    kept = {im["id"] for im in coco_gt["images"][:15]}
    dets = [d for d in dets if d["image_id"] in kept]
    ev = CocoEvaluator(coco_gt)
    ev.add_results(dets)
    ours = ev.summarize()
    ref, _ = pycocotools_stats(coco_gt, dets)
    assert [ours[k] for k in COCO_KEYS] == pytest.approx(ref.tolist(), abs=1e-3)
    # restricted to the images that were predicted on, the score is higher
    assert ev.summarize(img_ids=kept)["AR100"] > ours["AR100"] + 0.1


def test_no_predictions_all_zero(coco_gt):
    stats = CocoEvaluator(coco_gt, parse_area_ranges(["tiny=0,16"])).summarize()
    assert set(stats) == {*COCO_KEYS, "AP_tiny", "AR_tiny"}
    assert all(v == 0.0 for v in stats.values())
    assert all(v == 0.0 for v in CocoEvaluator(coco_gt).summarize(img_ids=[]).values())


def test_empty_image_and_class_without_gt():
    labels = [np.array([[0, 0.5, 0.5, 0.2, 0.2]]), np.zeros((0, 5))]  # image 2: no labels
    gt = yolo_labels_to_coco(labels, np.array([[100, 50], [100, 50]]), ["a", "b", "c"])
    ev = CocoEvaluator(gt, nc=3)
    ev.add(1, torch.tensor([[40.0, 20.0, 60.0, 30.0]]), torch.tensor([0.9]), torch.tensor([0]))
    ev.add(2, torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0))  # no labels, no predictions
    # a detection of class 2, which has no GT anywhere: COCO leaves that class out of the mean
    ev.add(1, torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([0.95]), torch.tensor([2]))
    stats = ev.summarize()
    assert stats["AP"] == pytest.approx(1.0) and stats["AR100"] == pytest.approx(1.0)
    assert stats["APs"] == pytest.approx(1.0)  # 20x10 px box: small
    assert stats["APm"] == 0.0 and stats["APl"] == 0.0  # no GT in those bins: reported as 0
    assert ev.seen_ids == {1, 2}
    with pytest.raises(ValueError, match="out of range"):
        ev.add(1, torch.zeros((1, 4)), torch.ones(1), torch.tensor([3]))


def test_yolo_labels_to_coco_uses_true_sizes():
    labels = [np.array([[1, 0.5, 0.25, 0.1, 0.2], [0, 0.1, 0.1, 0.02, 0.02]], np.float32)]
    gt = yolo_labels_to_coco(labels, np.array([[640, 512]]), ["person", "car"], ["/x/img_7.jpg"])
    im = gt["images"][0]
    assert (im["width"], im["height"], im["file_name"], im["id"]) == (640, 512, "img_7.jpg", 1)
    a = gt["annotations"][0]
    assert a["category_id"] == 1 and a["iscrowd"] == 0
    assert a["bbox"] == pytest.approx([320 - 32, 128 - 51.2, 64, 102.4], abs=1e-3)
    assert a["area"] == pytest.approx(64 * 102.4, rel=1e-5)  # original pixels, not normalized
    assert gt["annotations"][1]["area"] == pytest.approx(12.8 * 10.24, rel=1e-5)
    assert [c["id"] for c in gt["categories"]] == [0, 1]
    ev = CocoEvaluator(gt)
    assert ev.mapping_note == "" and ev.image_id("other/dir/img_7.jpg") == 1
    assert ev.gt_counts() == {"small": 1, "medium": 1, "large": 0}  # 6554 px^2 < 96^2


def test_parse_area_ranges():
    assert parse_area_ranges(["tiny=0,16", "huge=256,inf"]) == {"tiny": (0.0, 256.0), "huge": (65536.0, 1e10)}
    assert parse_area_ranges([]) == {}
    for bad in ("tiny", "tiny=16,0", "small=0,8", "x=a,b", "1x=0,2"):
        with pytest.raises(ValueError):
            parse_area_ranges([bad])


def test_results_file_round_trip_and_errors(tmp_path, coco_gt):
    dets = synthetic_detections(coco_gt, seed=3)
    ev = CocoEvaluator(coco_gt)
    ev.add_results(dets)
    path = ev.save_json(tmp_path / "pred.json")
    stats, ev2 = evaluate_files(COCO_GT, path)
    assert ev2.num_detections == len(dets)
    assert stats["AP"] == pytest.approx(ev.summarize()["AP"], abs=1e-3)  # 3-decimal rounding only
    table = format_coco_table(stats, ev2.gt_counts())
    assert "APs" in table and "AR100" in table and "objects per size bin" in table

    bad = tmp_path / "bad.json"
    for content, match in (("{not json", "not valid JSON"), ('{"a": 1}', "JSON list"),
                           ('[{"image_id": 1}]', "entry 0 needs"),
                           ('[{"image_id": 5, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]',
                            "not in the ground truth")):
        bad.write_text(content)
        with pytest.raises(CocoFormatError, match=match):
            load_coco_results(bad, coco_gt)
    with pytest.raises(CocoFormatError, match="not found"):
        load_coco_gt(tmp_path / "missing.json")
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(CocoFormatError, match="needs lists"):
        load_coco_gt(bad)


def _dense_gt_and_detections(n: int = 150) -> tuple[dict, list[dict]]:
    """One 400x400 image with n separate 20x20 px boxes and a perfect detection of each (scores descending)."""
    boxes = [[float(20 * (i % 15) + 5), float(30 * (i // 15) + 5), 10.0, 10.0] for i in range(n)]
    gt = {"images": [{"id": 1, "width": 400, "height": 400, "file_name": "dense.jpg"}],
          "categories": [{"id": 0, "name": "car"}],
          "annotations": [{"id": i + 1, "image_id": 1, "category_id": 0, "bbox": b, "area": 100.0, "iscrowd": 0}
                          for i, b in enumerate(boxes)]}
    dets = [{"image_id": 1, "category_id": 0, "bbox": b, "score": 1.0 - i / (2 * n)} for i, b in enumerate(boxes)]
    return gt, dets


def test_max_dets_follows_the_setting_and_agrees_with_pycocotools(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt, dets = _dense_gt_and_detections(150)
    default = CocoEvaluator(gt)
    default.add_results(dets)
    at100 = default.summarize()
    assert at100["AR100"] == pytest.approx(100 / 150, abs=1e-3)  # COCO's 100 caps recall on a dense image
    assert "maxDets 100 (COCO's)" in format_coco_table(at100)
    dense = CocoEvaluator(gt, max_dets=300)
    dense.add_results(dets)
    at300 = dense.summarize()
    assert set(at300) == {*COCO_KEYS[:6], "AR1", "AR10", "AR300", "ARs", "ARm", "ARl"}
    assert at300["AR300"] == pytest.approx(1.0) and at300["AP"] == pytest.approx(1.0)
    table = format_coco_table(at300)
    assert "AR300" in table and "AR100" not in table and "maxDets 300 per image (COCO's is 100)" in table
    with contextlib.redirect_stdout(io.StringIO()):  # the reference with the same maxDets
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(dets)), "bbox")
        ev.params.maxDets = [1, 10, 300]
        ev.evaluate()
        ev.accumulate()  # (its summarize() reads maxDets 100 only, so take the arrays)
    precision, recall = ev.eval["precision"], ev.eval["recall"]  # [T, R, K, area, maxDets], [T, K, area, maxDets]
    ref = {"AP": precision[:, :, :, 0, 2], "APs": precision[:, :, :, 1, 2], "AP50": precision[0, :, :, 0, 2],
           "AR1": recall[:, :, 0, 0], "AR10": recall[:, :, 0, 1], "AR300": recall[:, :, 0, 2], "ARs": recall[:, :, 1, 2]}
    for k, v in ref.items():
        assert at300[k] == pytest.approx(v[v > -1].mean(), abs=1e-3), k
    assert max_dets_list(5) == [1, 5] and coco_keys(5)[6:8] == ("AR1", "AR5")
    with pytest.raises(ConfigError, match="maxDets"):
        CocoEvaluator(gt, max_dets=0)


def test_duplicate_basenames_resolve_by_relative_path_or_fail_naming_them():
    gt = {"images": [{"id": 1, "width": 64, "height": 64, "file_name": "seq1/000001.jpg"},
                     {"id": 2, "width": 64, "height": 64, "file_name": "seq2\\000001.jpg"},  # made on Windows
                     {"id": 3, "width": 64, "height": 64, "file_name": "000002.jpg"}],
          "categories": [{"id": 0, "name": "car"}], "annotations": []}
    ev = CocoEvaluator(gt)
    assert ev.image_id("/data/images/seq1/000001.jpg") == 1
    assert ev.image_id("/data/images/seq2/000001.jpg") == 2
    assert ev.image_id("/elsewhere/000002.jpg") == 3  # a unique basename matches by itself
    with pytest.raises(CocoFormatError, match=r"2 images named 000001\.jpg \(seq1/000001\.jpg, seq2/000001\.jpg\)"):
        ev.image_id("/data/images/seq3/000001.jpg")
    twins = {**gt, "images": [{**im, "file_name": "000001.jpg"} for im in gt["images"][:2]]}
    with pytest.raises(CocoFormatError, match="2 images named 000001.jpg"):
        CocoEvaluator(twins).image_id("/data/seq1/000001.jpg")


def test_two_dataset_images_on_one_gt_image_is_an_error_naming_both():
    from types import SimpleNamespace

    from utils.evaluation import _coco_evaluator

    gt = {"images": [{"id": 7, "width": 64, "height": 64, "file_name": "000001.jpg"}],
          "categories": [{"id": 0, "name": "car"}], "annotations": []}
    dataset = SimpleNamespace(img_files=["/d/seq1/000001.jpg", "/d/seq2/000001.jpg"])
    with pytest.raises(CocoFormatError, match=r"/d/seq1/000001\.jpg and /d/seq2/000001\.jpg match the same"):
        _coco_evaluator(dataset, ["car"], gt, None, 100)
    ev, ids = _coco_evaluator(SimpleNamespace(img_files=["/d/seq1/000001.jpg"]), ["car"], gt, None, 300)
    assert ids == {"/d/seq1/000001.jpg": 7} and ev.max_dets == 300
