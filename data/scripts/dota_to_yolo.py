"""Convert DOTA v1.0 / v1.5 / v2.0 (``images/`` + ``labelTxt/``) to YOLO labels with axis-aligned boxes.

Usage (from the repository root), once per split:
    python -m data.scripts.dota_to_yolo --root DOTA/train --version 1.0 --out ../datasets/DOTA --split train

A label row is ``x1 y1 x2 y2 x3 y3 x4 y4 category difficult``: an oriented box as four corners in
pixels. Header lines (``imagesource:...``, ``gsd:...``) are skipped. Each oriented box becomes its
enclosing axis-aligned box (min and max of the corners), clipped to the image; the image size is
read from the image header (DOTA images are up to 20000 px wide and are not decoded).

* ``difficult`` objects (last field 1) are skipped by default, as DOTA's evaluation ignores them;
  ``--keep-difficult`` keeps them.
* Classes: the 15 names of DOTA v1.0, 16 of v1.5 (adds container-crane) or 18 of v2.0 (adds
  airport, helipad), by ``--version``; other names are skipped and counted.

DOTA images are large: train on crops at native resolution (``native_crop`` in the hyp file) and
validate or predict with ``--slice``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from data.scripts.yolo_labels import YoloWriter, add_output_flags, write_names_yaml, yolo_row
from utils.cli import run_cli
from utils.errors import DatasetError, MissingFileError
from utils.image_formats import is_image_file

NAMES_V1 = ["plane", "ship", "storage-tank", "baseball-diamond", "tennis-court", "basketball-court",
            "ground-track-field", "harbor", "bridge", "large-vehicle", "small-vehicle", "helicopter",
            "roundabout", "soccer-ball-field", "swimming-pool"]
NAMES = {"1.0": NAMES_V1, "1.5": NAMES_V1 + ["container-crane"],
         "2.0": NAMES_V1 + ["container-crane", "airport", "helipad"]}


def parse_label_file(txt: Path) -> list[tuple[list[float], str, bool]]:
    """DOTA labelTxt -> [(8 corner coordinates, category, difficult)]; header lines are skipped."""
    objects = []
    for n, line in enumerate(txt.read_text().splitlines(), 1):
        parts = line.split()
        if len(parts) < 9 or ":" in line:
            continue  # 'imagesource:GoogleEarth', 'gsd:0.146', blank lines
        try:
            corners = [float(v) for v in parts[:8]]
        except ValueError:
            raise DatasetError(f"{txt}:{n}: corners must be numbers: {line!r}") from None
        objects.append((corners, parts[8], len(parts) > 9 and parts[9] == "1"))
    return objects


def enclosing_box(corners: list[float]) -> tuple[float, float, float, float]:
    """Four (x, y) corners of an oriented box -> the axis-aligned box ``(x1, y1, x2, y2)`` around them."""
    xs, ys = corners[0::2], corners[1::2]
    return min(xs), min(ys), max(xs), max(ys)


def label_rows(objects, class_of: dict[str, int], w: int, h: int, keep_difficult: bool, skipped) -> list[str]:
    """YOLO rows of one image's objects; counts what it leaves out in ``skipped`` (a Counter)."""
    rows = []
    for corners, name, difficult in objects:
        if difficult and not keep_difficult:
            skipped["difficult objects"] += 1
        elif name not in class_of:
            skipped[f"objects of unlisted class '{name}'"] += 1
        elif (row := yolo_row(class_of[name], *enclosing_box(corners), w, h)) is None:
            skipped["empty boxes"] += 1
        else:
            rows.append(row)
    return rows


def convert(root: Path, out: Path, split: str = "train", version: str = "1.0", keep_difficult: bool = False,
            image_mode: str = "symlink") -> YoloWriter:
    """Convert one DOTA split folder; returns the writer (its ``stats``)."""
    root, names = Path(root), NAMES[version]
    class_of = {n: i for i, n in enumerate(names)}
    writer = YoloWriter(out, split, image_mode)
    for image in sorted(p for p in (root / "images").iterdir() if is_image_file(p)):
        txt = root / "labelTxt" / f"{image.stem}.txt"
        objects = parse_label_file(txt) if txt.is_file() else []
        with Image.open(image) as im:  # the header only: DOTA images are up to 20000 px wide
            w, h = im.size
        writer.write(image, label_rows(objects, class_of, w, h, keep_difficult, writer.stats.skipped))
    write_names_yaml(out, names)
    return writer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="DOTA split folder with images/ and labelTxt/")
    ap.add_argument("--version", choices=sorted(NAMES), default="1.0", help="DOTA version (class list)")
    ap.add_argument("--keep-difficult", action="store_true", help="keep objects marked difficult (default: skip)")
    add_output_flags(ap)
    args = ap.parse_args(argv)

    def work() -> None:
        for sub in ("images", "labelTxt"):
            if not (args.root / sub).is_dir():
                raise MissingFileError(f"{args.root} has no {sub}/ folder (expected a DOTA split)")
        print(convert(args.root, args.out, args.split, args.version, args.keep_difficult,
                      args.images_mode).stats.summary(args.out))

    return run_cli("dota_to_yolo", work)


if __name__ == "__main__":
    sys.exit(main())
