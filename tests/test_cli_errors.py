"""Wrong user input gives one line on stderr, exit code 1 and no traceback, from every script.

Malformed YAML files (a syntax error on line 3) must be named with file and line; bad flag
combinations and malformed weights files must be refused in one line. At least one case per
script runs in a real subprocess, so a traceback printed by the interpreter would be seen.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

import detect
import train
import val
from tests.helpers import run_script, untrained_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "hit-uav-sample"
SAMPLE_IMAGE = sorted((SAMPLE / "images" / "val").glob("*.jpg"))[0]
NAMES = ["Person", "Car", "Bicycle", "OtherVehicle"]

# Each has an unclosed bracket on line 3 that the parser rejects on that same line.
BAD_DATA = f"path: {SAMPLE}\ntrain: images/train\nval: [images/val}}\nnames: {NAMES}\n"
BAD_HYP = "lr0: 0.01\nmomentum: 0.937\nbox: [0.05}\nobj: 1.0\n"
BAD_MODEL = "nc: 4\ndepth_multiple: 0.33\nanchors: [[10, 13, 16, 30}\nbackbone: []\nhead: []\n"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """An untrained 4-class yolov5n checkpoint (no training: only its loading matters here)."""
    return untrained_checkpoint(tmp_path_factory.mktemp("weights") / "w.pt", ROOT / "models" / "yolov5n.yaml", NAMES)


def assert_one_line_error(rc: int, err: str, script: str, *needles: str, out: str = "") -> str:
    """Exit code 1, exactly one stderr line ``<script>: error: ...`` holding every needle, no traceback."""
    assert "Traceback" not in err and "Traceback" not in out, err
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1, err
    assert lines[0].startswith(f"{script}: error: "), lines[0]
    for n in needles:
        assert re.search(n, lines[0]), (n, lines[0])
    return lines[0]


def file_line(path: Path, line: int) -> str:
    """Pattern for ``<path>:<line>`` followed by a non-digit (``:col`` or ``:``)."""
    return re.escape(str(path)) + f":{line}(?!\\d)"


# ---- train.py ----

def test_train_malformed_data_yaml_subprocess(tmp_path):
    bad = write(tmp_path / "bad_data.yaml", BAD_DATA)
    r = run_script("train.py", "--data", str(bad), "--project", str(tmp_path / "runs"), cwd=tmp_path)
    assert_one_line_error(r.returncode, r.stderr, "train.py", file_line(bad, 3), "malformed dataset YAML",
                          out=r.stdout)


@pytest.mark.parametrize("flag, text, what", [
    ("--hyp", BAD_HYP, "malformed hyperparameter file"),
    ("--cfg", BAD_MODEL, "malformed model YAML"),
], ids=["hyp", "cfg"])
def test_train_malformed_hyp_and_model_yaml(tmp_path, capsys, flag, text, what):
    bad = write(tmp_path / "bad.yaml", text)
    rc = train.main([flag, str(bad), "--project", str(tmp_path / "runs"), "--workers", "0"])
    assert_one_line_error(rc, capsys.readouterr().err, "train.py", file_line(bad, 3), what)


def _first_row(row: list) -> dict:
    d = yaml.safe_load((ROOT / "models" / "yolov5.yaml").read_text())
    d["backbone"][0] = row
    return d


def _model_yaml(**change) -> dict:
    return {**yaml.safe_load((ROOT / "models" / "yolov5.yaml").read_text()), **change}


@pytest.mark.parametrize("model, needle", [
    (_model_yaml(backbone="Conv"), r"model row 0 must be \[from, number, module, args\]"),
    (_model_yaml(scales={"n": ["a", 0.25, 1024]}), "numeric scales"),
    (_first_row([7, 1, "Conv", [64, 6, 2, 2]]), r"model row 0 .*IndexError"),  # reads a later row
    (_first_row([-1, "x", "Conv", [64, 6, 2, 2]]), r"model row 0 .*TypeError"),  # repeat count not a number
], ids=["backbone-not-a-list", "scale-not-a-number", "from-out-of-graph", "number-not-a-number"])
def test_train_model_yaml_of_wrong_shape(tmp_path, capsys, model, needle):
    bad = write(tmp_path / "shape.yaml", yaml.safe_dump(model))
    rc = train.main(["--cfg", str(bad), "--project", str(tmp_path / "runs"), "--workers", "0"])
    assert_one_line_error(rc, capsys.readouterr().err, "train.py", needle)


@pytest.mark.parametrize("text, needle", [
    (f"path: 5\ntrain: images/train\nval: images/val\nnames: {NAMES}\n", r"'path' must be a path .*got 5"),
    (f"path: {SAMPLE}\ntrain: images/train\nval: images/val\nnames: {NAMES}\nval_json: [a]\n",
     r"'val_json' must be a path"),
], ids=["path", "val_json"])
def test_train_data_yaml_of_wrong_shape(tmp_path, capsys, text, needle):
    bad = write(tmp_path / "shape.yaml", text)
    rc = train.main(["--data", str(bad), "--project", str(tmp_path / "runs"), "--workers", "0"])
    assert_one_line_error(rc, capsys.readouterr().err, "train.py", needle, re.escape(str(bad)))


def test_train_imgsz_not_a_stride_multiple(tmp_path, capsys):
    rc = train.main(["--imgsz", "100", "--project", str(tmp_path / "runs"), "--workers", "0"])
    assert_one_line_error(rc, capsys.readouterr().err, "train.py", "--imgsz 100 must be a multiple of .* 32")


# ---- val.py ----

def test_val_malformed_data_yaml_subprocess(tmp_path, weights):
    bad = write(tmp_path / "bad_data.yaml", BAD_DATA)
    r = run_script("val.py", "--data", str(bad), "--weights", str(weights), "--project", str(tmp_path / "runs"),
                   cwd=tmp_path)
    assert_one_line_error(r.returncode, r.stderr, "val.py", file_line(bad, 3), "malformed dataset YAML",
                          out=r.stdout)
    assert not (tmp_path / "runs").exists()  # refused before any output was written


@pytest.mark.parametrize("args, needle", [
    (["--pred", "p.json"], "--pred and --coco-gt go together"),
    (["--coco-gt", "gt.json"], "--pred and --coco-gt go together"),
    (["--area-ranges", "tiny=16,0"], "bad --area-ranges item 'tiny=16,0'"),
], ids=["pred-alone", "coco-gt-alone", "area-range"])
def test_val_bad_flag_combinations(tmp_path, capsys, args, needle):
    rc = val.main([*args, "--project", str(tmp_path / "runs")])
    assert_one_line_error(rc, capsys.readouterr().err, "val.py", re.escape(needle))


# ---- detect.py ----

def test_detect_malformed_weights_subprocess(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint\n" * 4)
    r = run_script("detect.py", "--source", str(SAMPLE_IMAGE), "--weights", str(junk), cwd=tmp_path)
    assert_one_line_error(r.returncode, r.stderr, "detect.py", "cannot read weights", re.escape(str(junk)),
                          out=r.stdout)
    assert not (tmp_path / "runs").exists()


def _malformed_weights(kind: str, good: Path, path: Path) -> Path:
    ckpt = torch.load(good, weights_only=True)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "not a dict":
        torch.save([1, 2, 3], path)
    elif kind == "model_cfg not a dict":
        torch.save({**ckpt, "model_cfg": 5}, path)
    elif kind == "state_dict of another shape":
        torch.save({**ckpt, "model": {k: v[:1] if v.ndim else v for k, v in ckpt["model"].items()}}, path)
    return path


@pytest.mark.parametrize("kind, needle", [
    ("empty", "cannot read weights"),
    ("truncated", "cannot read weights"),
    ("not a dict", "not a checkpoint of this project"),
    ("model_cfg not a dict", "is malformed"),
    ("state_dict of another shape", "weights do not match the stored model graph"),
])
def test_detect_malformed_weights_files(tmp_path, capsys, weights, kind, needle):
    bad = _malformed_weights(kind, weights, tmp_path / "bad.pt")
    rc = detect.main(["--source", str(SAMPLE_IMAGE), "--weights", str(bad), "--project", str(tmp_path / "runs")])
    assert_one_line_error(rc, capsys.readouterr().err, "detect.py", re.escape(needle), re.escape(str(bad)))


@pytest.mark.parametrize("args, needle", [
    (["--source", "no/such/image.jpg"], "source 'no/such/image.jpg' does not exist"),
    (["--source", str(SAMPLE_IMAGE), "--overlap", "1.5"], "--overlap must be in [0, 1), got 1.5"),
], ids=["missing-source", "overlap"])
def test_detect_missing_source_and_bad_overlap(tmp_path, capsys, weights, args, needle):
    rc = detect.main([*args, "--weights", str(weights), "--project", str(tmp_path / "runs")])
    assert_one_line_error(rc, capsys.readouterr().err, "detect.py", re.escape(needle))
    assert not (tmp_path / "runs").exists()
