"""Dataset converters (data/scripts/*_to_yolo.py) on small fixtures written by each test.

Expected rows are worked out by hand from the fixture's pixel boxes, not by the converters' helpers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from data.scripts import coco_to_yolo, dota_to_yolo, visdrone_to_yolo, voc_to_yolo
from utils.data.config import load_data_config
from utils.data.label_cache import load_labels

ROOT = Path(__file__).resolve().parents[1]


def _image(path: Path, w: int, h: int, value: int = 200) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), value, np.uint8))
    return path


def _rows(path: Path) -> list[list[float]]:
    return [[float(v) for v in line.split()] for line in path.read_text().splitlines()]


def _close(rows, expected) -> bool:
    return len(rows) == len(expected) and np.allclose(np.array(rows), np.array(expected), atol=1e-6)


# --- COCO ---------------------------------------------------------------------------------------

def _coco_fixture(tmp_path: Path) -> Path:
    _image(tmp_path / "src" / "a.jpg", 100, 50)
    _image(tmp_path / "src" / "b.jpg", 40, 40)
    data = {
        "images": [{"id": 7, "file_name": "a.jpg", "width": 100, "height": 50},
                   {"id": 8, "file_name": "sub/b.jpg", "width": 40, "height": 40},  # found by base name
                   {"id": 9, "file_name": "missing.jpg", "width": 10, "height": 10}],
        "categories": [{"id": 90, "name": "toothbrush"}, {"id": 3, "name": "car"}, {"id": 1, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 10, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 90, "bbox": [90, 40, 20, 20], "iscrowd": 0},  # clipped
            {"id": 3, "image_id": 7, "category_id": 1, "bbox": [0, 0, 50, 50], "iscrowd": 1},  # crowd
            {"id": 4, "image_id": 7, "category_id": 1, "bbox": [200, 0, 5, 5]},  # outside: empty
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return tmp_path / "ann.json"


def test_coco_remaps_ids_skips_crowd_and_counts(tmp_path):
    ann = _coco_fixture(tmp_path)
    writer, names = coco_to_yolo.convert(ann, tmp_path / "src", tmp_path / "out", "val")
    assert names == ["person", "car", "toothbrush"]  # ids 1, 3, 90 -> 0, 1, 2
    labels = tmp_path / "out" / "labels" / "val"
    assert _close(_rows(labels / "a.txt"), [[1, 0.2, 0.3, 0.2, 0.2], [2, 0.95, 0.9, 0.1, 0.2]])
    assert (labels / "b.txt").read_text() == ""  # an image without annotations is a background image
    assert writer.stats.skipped == {"crowd boxes": 1, "empty boxes": 1, "images not found": 1}
    assert writer.stats.images == 2 and writer.stats.boxes == 2
    assert (tmp_path / "out" / "images" / "val" / "a.jpg").is_symlink()
    spec = yaml.safe_load((tmp_path / "out" / "dataset.yaml").read_text())
    assert spec["names"] == {0: "person", 1: "car", 2: "toothbrush"} and spec["val"] == "images/val"


def test_coco_merge_classes_and_ignore_flag(tmp_path):
    ann = _coco_fixture(tmp_path)
    data = json.loads(ann.read_text())
    data["annotations"][0]["ignore"] = True  # TinyPerson's don't-care flag
    ann.write_text(json.dumps(data))
    writer, names = coco_to_yolo.convert(ann, tmp_path / "src", tmp_path / "out", merge_classes="person")
    assert names == ["person"]
    assert _close(_rows(tmp_path / "out" / "labels" / "train" / "a.txt"), [[0, 0.95, 0.9, 0.1, 0.2]])
    assert writer.stats.skipped["boxes marked ignore"] == 1


def test_coco_output_loads_as_a_dataset(tmp_path):
    ann = _coco_fixture(tmp_path)
    for split in ("train", "val"):
        coco_to_yolo.convert(ann, tmp_path / "src", tmp_path / "out", split, image_mode="copy")
    data = load_data_config(tmp_path / "out" / "dataset.yaml")
    assert data["nc"] == 3 and len(data["train"]) == 2
    ls = load_labels(data["val"], use_cache=False)
    counts = sorted(len(lb) for lb in ls.labels)
    assert counts == [0, 2]


def test_coco_command_line_and_one_line_errors(tmp_path):
    ann = _coco_fixture(tmp_path)
    cmd = [sys.executable, "-m", "data.scripts.coco_to_yolo", "--json", str(ann), "--images", str(tmp_path / "src"),
           "--out", str(tmp_path / "out")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "1 crowd boxes" in r.stdout and "wrote 2 label files with 2 boxes" in r.stdout
    (tmp_path / "bad.json").write_text('{"images": 3}')
    assert coco_to_yolo.main(["--json", str(tmp_path / "bad.json"), "--images", str(tmp_path / "src"),
                              "--out", str(tmp_path / "o2")]) == 1


# --- Pascal VOC ---------------------------------------------------------------------------------

VOC_XML = """<annotation><filename>{id}.jpg</filename>
<size><width>200</width><height>100</height><depth>3</depth></size>
{objects}</annotation>"""
VOC_OBJ = ("<object><name>{name}</name><difficult>{d}</difficult>"
           "<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>")


def _voc_fixture(tmp_path: Path) -> Path:
    root = tmp_path / "VOC2007"
    objs = [("dog", 0, (11, 21, 60, 70)), ("cat", 1, (101, 1, 200, 100)), ("unicorn", 0, (1, 1, 5, 5))]
    xml = VOC_XML.format(id="000001", objects="".join(VOC_OBJ.format(name=n, d=d, b=b) for n, d, b in objs))
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "000001.xml").write_text(xml)
    (root / "Annotations" / "000002.xml").write_text(VOC_XML.format(id="000002", objects=""))
    _image(root / "JPEGImages" / "000001.jpg", 200, 100)
    _image(root / "JPEGImages" / "000002.jpg", 200, 100)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("000001\n")
    return root


def test_voc_difficult_skipped_by_default_and_kept_by_flag(tmp_path):
    root = _voc_fixture(tmp_path)
    writer, names = voc_to_yolo.convert(root, tmp_path / "out", "train", image_set="train")
    dog, cat = names.index("dog"), names.index("cat")
    # VOC is 1-based inclusive: xmin 11..xmax 60 covers pixels [10, 60] -> cx 35/200, w 50/200
    assert _close(_rows(tmp_path / "out" / "labels" / "train" / "000001.txt"), [[dog, 0.175, 0.45, 0.25, 0.5]])
    assert writer.stats.skipped == {"difficult objects": 1, "objects of unlisted class 'unicorn'": 1}
    assert not (tmp_path / "out" / "labels" / "train" / "000002.txt").exists()  # not in train.txt

    writer, _ = voc_to_yolo.convert(root, tmp_path / "out2", "train", keep_difficult=True)
    rows = _rows(tmp_path / "out2" / "labels" / "train" / "000001.txt")
    assert _close(rows, [[dog, 0.175, 0.45, 0.25, 0.5], [cat, 0.75, 0.5, 0.5, 1.0]])
    assert writer.stats.images == 2  # no image set: every XML


def test_voc_auto_names_and_command_line(tmp_path):
    root = _voc_fixture(tmp_path)
    _, names = voc_to_yolo.convert(root, tmp_path / "out", names="auto", keep_difficult=True)
    assert names == ["cat", "dog", "unicorn"]
    assert voc_to_yolo.main(["--root", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 1


# --- VisDrone2019-DET ---------------------------------------------------------------------------

def _visdrone_fixture(tmp_path: Path) -> Path:
    root = tmp_path / "VisDrone2019-DET-val"
    _image(root / "images" / "0000001.jpg", 100, 80, value=200)
    _image(root / "images" / "0000002.jpg", 100, 80, value=200)
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "0000001.txt").write_text(
        "10,10,20,10,1,4,0,0\n"      # car -> class 3
        "60,40,40,40,0,0,0,0\n"      # ignored region (right bottom quarter)
        "70,50,10,10,1,1,0,1\n"      # pedestrian entirely inside the ignored region
        "0,60,20,20,1,11,0,0\n"      # 'others'
        "50,30,20,20,1,10,0,0\n")    # motor, a quarter inside the ignored region: kept
    (root / "annotations" / "0000002.txt").write_text("5,5,10,10,1,2,0,0\n")
    return root


def test_visdrone_masks_ignored_regions_and_others(tmp_path):
    root = _visdrone_fixture(tmp_path)
    writer = visdrone_to_yolo.convert(root, tmp_path / "out", "val")
    rows = _rows(tmp_path / "out" / "labels" / "val" / "0000001.txt")
    assert _close(rows, [[3, 0.2, 0.1875, 0.2, 0.125], [9, 0.6, 0.5, 0.2, 0.25]])
    assert writer.stats.skipped == {"ignored regions": 1, "'others' boxes": 1, "boxes inside ignored regions": 1}
    out_img = tmp_path / "out" / "images" / "val" / "0000001.jpg"
    assert not out_img.is_symlink()
    img = cv2.imread(str(out_img))
    assert abs(int(img[60, 80, 0]) - 114) <= 3 and abs(int(img[70, 10, 0]) - 114) <= 3  # greyed out
    assert abs(int(img[5, 5, 0]) - 200) <= 3  # the rest untouched
    assert cv2.imread(str(root / "images" / "0000001.jpg"))[60, 80, 0] >= 197  # the original is not modified
    assert (tmp_path / "out" / "images" / "val" / "0000002.jpg").is_symlink()  # nothing to mask: linked
    assert _close(_rows(tmp_path / "out" / "labels" / "val" / "0000002.txt"), [[1, 0.1, 0.125, 0.1, 0.125]])


def test_visdrone_drop_mode_keeps_the_image(tmp_path):
    root = _visdrone_fixture(tmp_path)
    writer = visdrone_to_yolo.convert(root, tmp_path / "out", "val", ignored="drop")
    rows = _rows(tmp_path / "out" / "labels" / "val" / "0000001.txt")
    assert len(rows) == 3 and sorted(r[0] for r in rows) == [0, 3, 9]  # the pedestrian stays labelled
    assert (tmp_path / "out" / "images" / "val" / "0000001.jpg").is_symlink()
    assert writer.stats.skipped["ignored regions (left unmasked)"] == 1


# --- DOTA ---------------------------------------------------------------------------------------

def test_dota_oriented_boxes_to_enclosing_boxes(tmp_path):
    root = tmp_path / "DOTA" / "val"
    _image(root / "images" / "P0001.png", 200, 100)
    (root / "labelTxt").mkdir(parents=True)
    (root / "labelTxt" / "P0001.txt").write_text(
        "imagesource:GoogleEarth\ngsd:0.146\n"
        "20 10 40 30 20 50 0 30 small-vehicle 0\n"      # a diamond: enclosing box 0..40 x 10..50
        "150 80 210 80 210 120 150 120 plane 0\n"       # crosses the border: clipped to 150..200 x 80..100
        "1 1 3 1 3 3 1 3 ship 1\n"                      # difficult
        "5 5 9 5 9 9 5 9 container-crane 0\n")          # v1.5 only
    writer = dota_to_yolo.convert(root, tmp_path / "out", "val", version="1.0")
    sv, plane = dota_to_yolo.NAMES["1.0"].index("small-vehicle"), 0
    rows = _rows(tmp_path / "out" / "labels" / "val" / "P0001.txt")
    assert _close(rows, [[sv, 0.1, 0.3, 0.2, 0.4], [plane, 0.875, 0.9, 0.25, 0.2]])
    assert writer.stats.skipped == {"difficult objects": 1, "objects of unlisted class 'container-crane'": 1}

    writer = dota_to_yolo.convert(root, tmp_path / "out15", "val", version="1.5", keep_difficult=True)
    rows = _rows(tmp_path / "out15" / "labels" / "val" / "P0001.txt")
    assert sorted(int(r[0]) for r in rows) == [0, 1, 10, 15] and not writer.stats.skipped


def test_dataset_yamls_are_declarative_and_name_their_converter():
    for name, converter in (("visdrone", "visdrone_to_yolo"), ("dota", "dota_to_yolo"),
                            ("ai-tod", "coco_to_yolo"), ("tinyperson", "coco_to_yolo")):
        path = ROOT / "data" / f"{name}.yaml"
        text = path.read_text()
        spec = yaml.safe_load(text)
        assert set(spec) <= {"path", "train", "val", "test", "names", "nc", "val_json", "test_json"}, name
        assert converter in text and "http" in text, name  # where to get it and how to convert it
        assert "download" not in spec, name


@pytest.mark.parametrize("module", ["coco_to_yolo", "voc_to_yolo", "visdrone_to_yolo", "dota_to_yolo"])
def test_converters_show_help(module):
    r = subprocess.run([sys.executable, "-m", f"data.scripts.{module}", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "--out" in r.stdout and "--split" in r.stdout
