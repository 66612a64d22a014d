"""Convert HIT-UAV's published COCO-like annotation JSON to YOLO txt labels.

The HIT-UAV files are not standard COCO: boxes are under "annotation" (not "annotations"), image
names under "filename" (not "file_name"), category ids start at 0 and id 4 is DontCare (dropped).
Standard COCO spellings are accepted too.

Usage (from the repository root):
    python data/scripts/hituav_json_to_yolo.py --json HIT-UAV/annotations/val.json \
        --images HIT-UAV/images/val --out HIT-UAV/labels/val

One label file per image found in --images (empty when it has no objects); rows are
``cls cx cy w h`` normalized with 6 decimals, boxes clipped to the image.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

DONT_CARE = "DontCare"


def _first(d: dict, *keys: str) -> Any:
    """d[k] for the first key present (HIT-UAV vs. standard COCO spelling)."""
    for k in keys:
        if k in d:
            return d[k]
    raise KeyError(f"none of {keys} in annotation file entry")


def yolo_rows(anns: list[dict], w: int, h: int, keep_ids: dict[int, int]) -> list[str]:
    """COCO boxes [x, y, w, h] (pixels) of one image -> YOLO rows, skipping dropped classes and empty boxes."""
    rows = []
    for a in anns:
        if a["category_id"] not in keep_ids:
            continue
        x, y, bw, bh = (float(v) for v in a["bbox"])
        x1, y1 = max(0.0, x), max(0.0, y)
        x2, y2 = min(float(w), x + bw), min(float(h), y + bh)
        if x2 <= x1 or y2 <= y1:
            continue
        cx, cy = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h
        rows.append(f"{keep_ids[a['category_id']]} {cx:.6f} {cy:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
    return rows


def convert(json_file: Path, images_dir: Path, out_dir: Path) -> tuple[int, int]:
    """Write ``out_dir/<stem>.txt`` for every image of ``json_file`` present in ``images_dir``.

    Returns (label files written, boxes written).
    """
    data = json.loads(json_file.read_text())
    cats = sorted(data["categories"], key=lambda c: c["id"])
    kept = [c for c in cats if c["name"] != DONT_CARE]
    keep_ids = {c["id"]: i for i, c in enumerate(kept)}  # contiguous 0..n-1 class ids
    by_image = defaultdict(list)
    for a in _first(data, "annotation", "annotations"):
        by_image[a["image_id"]].append(a)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_files = n_boxes = 0
    for im in data["images"]:
        name = _first(im, "filename", "file_name")
        if not (images_dir / name).is_file():
            continue  # the JSON may cover more images than this copy of the split holds
        rows = yolo_rows(by_image[im["id"]], int(im["width"]), int(im["height"]), keep_ids)
        (out_dir / f"{Path(name).stem}.txt").write_text("".join(f"{r}\n" for r in rows))
        n_files, n_boxes = n_files + 1, n_boxes + len(rows)
    return n_files, n_boxes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="HIT-UAV JSON -> YOLO txt labels")
    ap.add_argument("--json", type=Path, required=True, help="annotations/train.json or val.json")
    ap.add_argument("--images", type=Path, required=True, help="folder with the split's images")
    ap.add_argument("--out", type=Path, required=True, help="output labels folder")
    args = ap.parse_args(argv)
    for p, what in ((args.json, "file"), (args.images, "folder")):
        if not (p.is_file() if what == "file" else p.is_dir()):
            print(f"error: {what} {p} does not exist", file=sys.stderr)
            return 1
    try:
        n_files, n_boxes = convert(args.json, args.images, args.out)
    except (KeyError, ValueError, TypeError) as e:
        print(f"error: {args.json} is not a HIT-UAV/COCO annotation file ({e})", file=sys.stderr)
        return 1
    print(f"wrote {n_files} label files with {n_boxes} boxes to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
