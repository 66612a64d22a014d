"""A dataset with every common kind of broken file: one warning each, a summary line, no lost run.

The training split mixes three clean images with one case each of: truncated JPEG, JPEG with
corrupt data, text file named .jpg, PNG named .jpg, 16-bit TIFF, RGBA PNG, EXIF-rotated JPEG,
label rows with 6 fields, NaN, a text class, a negative class, a negative size, coordinates far
outside [0, 1], duplicate rows, CRLF line endings, an empty label file, an image without a label
file, a label file without an image, and a class id equal to nc.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from utils.data.dataset import YoloDataset
from utils.data.image_check import check_image, read_image
from utils.data.label_cache import load_labels
from utils.errors import DatasetError

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["a", "b", "c", "d"]
BOX = "1 0.5 0.5 0.3 0.4\n"
LIBJPEG = re.compile(r"Premature end of JPEG|Corrupt JPEG data|extraneous bytes")


def libjpeg_lines(text: str) -> list[str]:
    """Lines libjpeg printed itself (our warnings quote its words, naming the file)."""
    return [ln for ln in re.split(r"[\r\n]", text) if LIBJPEG.search(ln) and "WARNING" not in ln]


# file -> (label text or None for no label file, the words its single warning must contain or None)
CASES = {
    "good1.jpg": (BOX, None),
    "good2.jpg": ("0 0.3 0.3 0.2 0.2\n2 0.7 0.6 0.2 0.3\n", None),
    "good3.jpg": (BOX, None),
    "truncated.jpg": (BOX, "truncated JPEG"),
    "corrupt.jpg": (BOX, "Corrupt JPEG data"),
    "text.jpg": (BOX, "not an image"),
    "png_named.jpg": (BOX, "PNG data in a .jpg file"),
    "deep.tif": (BOX, "16-bit image"),
    "rgba.png": (BOX, "alpha channel"),
    "rotated.jpg": (BOX, "EXIF orientation 6"),
    "six.jpg": ("0 0.5 0.5 0.2 0.2 0.9\n", "got 6 values"),
    "nan.jpg": ("0 nan 0.5 0.2 0.2\n", "non-finite"),
    "textcls.jpg": ("car 0.5 0.5 0.2 0.2\n", "non-numeric"),
    "negcls.jpg": ("-1 0.5 0.5 0.2 0.2\n", "non-negative integer"),
    "negsize.jpg": ("0 0.5 0.5 -0.2 0.2\n", "negative box size"),
    "far.jpg": ("0 5.0 0.5 0.2 0.2\n", "outside [0, 1]"),
    "dup.jpg": (BOX + BOX + "0 0.2 0.2 0.1 0.1\n", "1 duplicate rows removed"),
    "crlf.jpg": ("0 0.5 0.5 0.2 0.2\r\n1 0.2 0.2 0.1 0.1\r\n", "CRLF"),
    "empty.jpg": ("", None),  # a background image: counted in the summary, no warning
    "nolabel.jpg": (None, "no label file"),
    "classnc.jpg": ("0 0.5 0.5 0.2 0.2\n4 0.2 0.2 0.1 0.1\n", "class 4 outside the 4 names"),
}
SUMMARY = ("21 images: 13 kept (2 background), 8 skipped (bad label row 6, class out of range 1, unreadable "
           "image 1), 1 label file without image, 14 boxes")


def _noise(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _jpeg_bytes(seed: int) -> bytes:
    return cv2.imencode(".jpg", _noise(seed=seed))[1].tobytes()


def _write_image(path: Path, seed: int) -> None:
    """One image file of the case ``path.name`` (a clean 64x48 JPEG unless the name says otherwise)."""
    name = path.name
    if name == "truncated.jpg":
        data = _jpeg_bytes(seed)
        path.write_bytes(data[: len(data) * 3 // 5])
    elif name == "corrupt.jpg":  # garbage inside the entropy-coded data; the file still ends in FF D9
        data = _jpeg_bytes(seed)
        mid = len(data) // 2
        path.write_bytes(data[:mid] + b"\x12\x34\xff\x00" * 5 + data[mid + 20:])
    elif name == "text.jpg":
        path.write_text("this is not an image\n")
    elif name in ("png_named.jpg", "rgba.png"):
        img = _noise(seed=seed)
        if name == "rgba.png":
            img = np.dstack([img, np.full(img.shape[:2], 200, np.uint8)])
        path.write_bytes(cv2.imencode(".png", img)[1].tobytes())
    elif name == "deep.tif":
        cv2.imwrite(str(path), (_noise(seed=seed).astype(np.uint16) * 257))
    elif name == "rotated.jpg":  # stored 64x48, shown (and decoded) 48x64
        img = Image.fromarray(_noise(seed=seed))
        exif = img.getexif()
        exif[0x0112] = 6
        img.save(path, exif=exif)
    else:
        path.write_bytes(_jpeg_bytes(seed))


def build_messy_dataset(root: Path) -> Path:
    """The messy train split, a clean 2-image val split and their dataset YAML; returns the YAML."""
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
    for seed, (name, (label, _)) in enumerate(CASES.items()):
        _write_image(root / "images" / "train" / name, seed)
        if label is not None:
            (root / "labels" / "train" / f"{Path(name).stem}.txt").write_bytes(label.encode())
    (root / "labels" / "train" / "orphan.txt").write_text(BOX)
    for i in range(2):
        _write_image(root / "images" / "val" / f"v{i}.jpg", 100 + i)
        (root / "labels" / "val" / f"v{i}.txt").write_text(BOX)
    data = root / "messy.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: {NAMES}\n")
    return data


@pytest.fixture()
def messy(tmp_path: Path) -> Path:
    return build_messy_dataset(tmp_path / "messy")


def _warnings(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if "WARNING" in ln]


def _check_scan_log(text: str) -> None:
    """Exactly one warning per odd file naming it and the reason, none for the clean ones."""
    warnings = _warnings(text)
    for name, (_, reason) in CASES.items():
        stem = Path(name).stem
        mine = [w for w in warnings if re.search(rf"[/\\]{stem}\.(jpg|tif|png|txt)\b", w)]
        if reason is None:
            assert mine == [], (name, mine)
        else:
            assert len(mine) == 1 and reason in mine[0], (name, reason, mine)
    assert len([w for w in warnings if "orphan.txt: label file without image" in w]) == 1
    assert len(warnings) == len([r for _, r in CASES.values() if r]) + 1  # nothing else


def test_scan_warns_once_per_file_skips_what_it_must_and_keeps_libjpeg_quiet(messy, caplog, capfd):
    files = sorted(str(p) for p in (messy.parent / "images" / "train").iterdir())
    with caplog.at_level(logging.INFO):
        ds = YoloDataset(files, imgsz=64, nc=len(NAMES), prefix="train: ")
        for i in range(len(ds)):  # every image decoded again, as training does
            ds[i]
    _check_scan_log(caplog.text)
    assert f"train: Scanned {SUMMARY}" in caplog.text
    kept = {Path(f).name for f in ds.img_files}
    assert kept == {n for n, (_, r) in CASES.items() if r is None or not re.search(
        "not an image|values|non-|negative|outside", r)}
    i = ds.img_files.index(next(f for f in ds.img_files if f.endswith("rotated.jpg")))
    assert tuple(ds.shapes[i]) == (48, 64)  # (w, h) as shown, after the EXIF turn
    assert {Path(f).name for f, d in zip(ds.img_files, ds.damaged) if d} == {"truncated.jpg", "corrupt.jpg"}
    out, err = capfd.readouterr()
    assert not libjpeg_lines(out + err), err

    caplog.clear()  # the cache keeps the warnings: a second load reports the same
    with caplog.at_level(logging.INFO):
        YoloDataset(files, imgsz=64, nc=len(NAMES), prefix="train: ")
    _check_scan_log(caplog.text)
    assert f"train: Cached {SUMMARY}" in caplog.text
    assert not libjpeg_lines("".join(capfd.readouterr()))


def test_one_epoch_on_the_messy_dataset_trains_and_prints_the_summary(messy, tmp_path):
    r = subprocess.run([sys.executable, "train.py", "--data", str(messy), "--epochs", "1", "--imgsz", "64",
                        "--batch-size", "8", "--workers", "1", "--noautoanchor", "--project", str(tmp_path),
                        "--name", "run"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    _check_scan_log("\n".join(ln for ln in r.stdout.splitlines() if ln.startswith("train: ")))
    assert f"train: Scanned {SUMMARY}" in r.stdout
    assert ("val: Scanned 2 images: 2 kept (0 background), 0 skipped, 0 label files without images, 2 boxes"
            in r.stdout)
    assert not libjpeg_lines(r.stdout + r.stderr), r.stderr[-3000:]
    assert (tmp_path / "run" / "weights" / "best.pt").is_file()


def test_mostly_out_of_range_classes_is_an_error_naming_files(tmp_path):
    root = tmp_path / "d"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    files = []
    for i, cls in enumerate([0, 5, 7, 9]):  # 3 of 4 labelled images: a names list that is too short
        img = root / "images" / "train" / f"{i}.jpg"
        img.write_bytes(_jpeg_bytes(i))
        (root / "labels" / "train" / f"{i}.txt").write_text(f"{cls} 0.5 0.5 0.2 0.2\n")
        files.append(str(img))
    with pytest.raises(DatasetError, match=r"3 of 4 labelled images have class ids >= 4,.*1\.txt, .*2\.txt, .*3\.txt"):
        load_labels(files, nc=4)
    ls = load_labels(files, nc=10)  # the right names: everything kept
    assert len(ls.img_files) == 4
    ls = load_labels(files[:3], nc=6)  # 1 of 3 out of range: skipped, not an error
    assert [Path(f).name for f in ls.img_files] == ["0.jpg", "1.jpg"]


def test_check_image_and_quiet_read_of_a_truncated_jpeg(tmp_path, capfd):
    path = tmp_path / "t.jpg"
    data = _jpeg_bytes(0)
    path.write_bytes(data[: len(data) // 2])
    info = check_image(str(path))
    assert info.damaged and info.size == (64, 48) and "truncated JPEG" in info.notes[0][1]
    img = read_image(str(path), quiet=True)
    assert img.shape == (48, 64, 3)
    assert not libjpeg_lines("".join(capfd.readouterr()))
    read_image(str(path))  # the plain decoder does print: the quiet path is what keeps it off the console
    assert libjpeg_lines(capfd.readouterr().err)


SCAN_WITH_SLOW_DECODES = """
import sys, time
import cv2
import utils.data.image_check as ic
from utils.data.label_cache import load_labels

real = cv2.imread
def slow(*args):  # decodes that last, as large images do, so the bar redraws during them
    time.sleep(0.004)
    return real(*args)
ic.cv2 = type(sys)("cv2_slow")
ic.cv2.imread, ic.cv2.IMREAD_COLOR = slow, cv2.IMREAD_COLOR
print("damaged", sum(load_labels(sys.argv[1:], use_cache=False).damaged))
"""


def test_progress_bar_is_not_taken_for_a_decoder_complaint(tmp_path):
    """From 100 images on, the scan draws a progress bar on stderr (fd 2, as in a terminal: hence a
    subprocess, pytest would catch it at the Python level) while decodes capture fd 2."""
    (tmp_path / "images").mkdir()
    data = _jpeg_bytes(0)
    files = []
    for i in range(120):
        files.append(tmp_path / "images" / f"{i}.jpg")
        files[-1].write_bytes(data)
    r = subprocess.run([sys.executable, "-c", SCAN_WITH_SLOW_DECODES, *map(str, files)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "damaged 0" in r.stdout and "Scanning labels" in r.stderr
