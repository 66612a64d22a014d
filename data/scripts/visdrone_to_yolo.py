"""Convert VisDrone2019-DET (``images/`` + ``annotations/`` txt files) to YOLO labels.

Usage (from the repository root), once per downloaded split:
    python -m data.scripts.visdrone_to_yolo --root VisDrone2019-DET-train --out ../datasets/VisDrone --split train
    python -m data.scripts.visdrone_to_yolo --root VisDrone2019-DET-val --out ../datasets/VisDrone --split val

An annotation row is ``left,top,width,height,score,category,truncation,occlusion`` (pixels).
Categories 1..10 (pedestrian ... motor) become classes 0..9.

Ignored regions (category 0, or a ground-truth score of 0) and "others" (category 11) are what the
VisDrone toolkit treats as don't-care areas: it drops every ground-truth box and every detection
that lies mostly (more than half its area) inside them before matching, so nothing there counts
for or against a detector. A YOLO label cannot say "don't care", so with ``--ignored mask`` (the
default) this converter does the same before training: it paints those regions grey (114, the
letterbox pad value) in a rewritten copy of the image (JPEG quality 95) and drops the labelled
boxes that are more than half inside them. The model then neither learns from nor is punished for
the unlabelled crowds there. ``--ignored drop`` only leaves the regions out of the labels (the
image is used as it is; objects in them are then unlabelled background). Both are counted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from data.scripts.yolo_labels import YoloWriter, add_output_flags, write_names_yaml, yolo_row
from utils.cli import run_cli
from utils.errors import ConfigError, DatasetError, MissingFileError

NAMES = ["pedestrian", "people", "bicycle", "car", "van", "truck", "tricycle", "awning-tricycle", "bus", "motor"]
IGNORED, OTHERS = 0, 11
PAD_VALUE = 114  # the letterbox grey of utils/data/augment.py
INSIDE_FRACTION = 0.5  # a box more than half inside an ignored region is dropped (the toolkit's rule)


def parse_annotation(txt: Path) -> np.ndarray:
    """A VisDrone annotation file -> float (n, 8) array [left, top, w, h, score, category, trunc, occl]."""
    rows = []
    for n, line in enumerate(txt.read_text().splitlines(), 1):
        parts = [p for p in line.replace(",", " ").split() if p]
        if not parts:
            continue
        if len(parts) < 6:
            raise DatasetError(f"{txt}:{n}: expected 8 comma-separated values, got {line!r}")
        try:
            rows.append([float(p) for p in parts[:8]] + [0.0] * (8 - len(parts[:8])))
        except ValueError:
            raise DatasetError(f"{txt}:{n}: not numbers: {line!r}") from None
    return np.array(rows, dtype=np.float64).reshape(-1, 8)


def is_ignored(ann: np.ndarray) -> np.ndarray:
    """(n,) True for the toolkit's don't-care rows: ignored regions (category 0 or score 0) and "others"."""
    return (ann[:, 5] == IGNORED) | (ann[:, 5] == OTHERS) | (ann[:, 4] == 0)


def _xyxy_px(box: np.ndarray, w: int, h: int) -> tuple[int, int, int, int]:
    """A [left, top, w, h] box -> integer pixel bounds (x1, y1, x2, y2) inside a w x h image."""
    x1, y1, x2, y2 = (int(v) for v in np.rint([box[0], box[1], box[0] + box[2], box[1] + box[3]]))
    x1, y1 = min(max(x1, 0), w), min(max(y1, 0), h)
    return x1, y1, min(max(x2, x1), w), min(max(y2, y1), h)


def ignored_map(regions: np.ndarray, w: int, h: int) -> np.ndarray:
    """(h, w) uint8 map, 1 inside any ignored region ([left, top, w, h] px rows)."""
    m = np.zeros((h, w), np.uint8)
    for box in regions:
        x1, y1, x2, y2 = _xyxy_px(box, w, h)
        m[y1:y2, x1:x2] = 1
    return m


def inside_fraction(box: np.ndarray, igr: np.ndarray) -> float:
    """Fraction of a [left, top, w, h] box's area that lies in the ignored map."""
    x1, y1, x2, y2 = _xyxy_px(box, igr.shape[1], igr.shape[0])
    return float(igr[y1:y2, x1:x2].sum()) / max(box[2] * box[3], 1.0)


def convert_image(image: Path, ann: np.ndarray, writer: YoloWriter, mode: str) -> None:
    """Labels (and, with mode 'mask' and ignored regions present, a masked copy) of one image."""
    skipped = writer.stats.skipped
    img = cv2.imread(str(image))
    if img is None:
        skipped["unreadable images"] += 1
        return
    h, w = img.shape[:2]
    ignored = is_ignored(ann)
    objects = ann[~ignored]
    unmasked = "" if mode == "mask" else " (left unmasked)"
    skipped["ignored regions" + unmasked] += int((ann[ignored, 5] != OTHERS).sum())
    skipped["'others' boxes" + unmasked] += int((ann[ignored, 5] == OTHERS).sum())
    igr = ignored_map(ann[ignored], w, h) if mode == "mask" and ignored.any() else None
    rows = []
    for box in objects:
        if igr is not None and inside_fraction(box, igr) > INSIDE_FRACTION:
            skipped["boxes inside ignored regions"] += 1
            continue
        row = yolo_row(int(box[5]) - 1, box[0], box[1], box[0] + box[2], box[1] + box[3], w, h)
        if row is None:
            skipped["empty boxes"] += 1
        else:
            rows.append(row)
    if igr is not None:
        img[igr.astype(bool)] = PAD_VALUE
        dst = writer.image_path(image)
        if dst.is_symlink():
            dst.unlink()
        cv2.imwrite(str(dst), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    writer.write(image, rows, image_written=igr is not None)


def convert(root: Path, out: Path, split: str = "train", ignored: str = "mask",
            image_mode: str = "symlink") -> YoloWriter:
    """Convert one VisDrone2019-DET split folder; returns the writer (its ``stats``)."""
    root = Path(root)
    if ignored not in ("mask", "drop"):
        raise ValueError(f"ignored must be 'mask' or 'drop', got {ignored!r}")
    if image_mode == "none" and ignored == "mask":
        raise ConfigError("--images-mode none cannot be used with --ignored mask: the masked images must be written")
    writer = YoloWriter(out, split, image_mode)
    for image in sorted((root / "images").glob("*.jpg")):
        txt = root / "annotations" / f"{image.stem}.txt"
        ann = parse_annotation(txt) if txt.is_file() else np.zeros((0, 8))
        convert_image(image, ann, writer, ignored)
    write_names_yaml(out, NAMES)
    return writer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="VisDrone2019-DET-<split> folder (images/, annotations/)")
    ap.add_argument("--ignored", choices=("mask", "drop"), default="mask",
                    help="ignored regions and 'others': grey them out in the image (default) or only drop them")
    add_output_flags(ap)
    args = ap.parse_args(argv)

    def work() -> None:
        for sub in ("images", "annotations"):
            if not (args.root / sub).is_dir():
                raise MissingFileError(f"{args.root} has no {sub}/ folder (expected a VisDrone2019-DET split)")
        print(convert(args.root, args.out, args.split, args.ignored, args.images_mode).stats.summary(args.out))

    return run_cli("visdrone_to_yolo", work)


if __name__ == "__main__":
    sys.exit(main())
