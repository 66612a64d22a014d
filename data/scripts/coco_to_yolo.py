"""Convert any COCO-style detection JSON (``images``, ``annotations``, ``categories``) to YOLO labels.

Usage (from the repository root):
    python -m data.scripts.coco_to_yolo --json annotations/instances_val2017.json \
        --images val2017 --out ../datasets/coco --split val

* Category ids (any integers, with gaps: COCO's run 1..90 for 80 classes) are sorted and remapped
  to 0..nc-1; ``<out>/dataset.yaml`` lists the names in that order.
* Crowd annotations (``iscrowd: 1``) are skipped and counted. A crowd box covers a group of
  objects of one class; a YOLO label has no "ignore" flag, so training on it as one object would
  teach the model a box that is none of them. (COCO's evaluation also ignores detections that
  fall on a crowd region instead of counting them.) Keep the original JSON as ``val_json`` in the
  dataset YAML to evaluate with the crowd regions.
* Boxes marked ``"ignore": true`` (TinyPerson's don't-care regions; not COCO, but common in
  COCO-style files) are skipped and counted for the same reason.
* ``--merge-classes NAME`` maps every category to one class (TinyPerson's sea and earth persons
  are usually trained as one ``person`` class).
* Boxes ``[x, y, w, h]`` in pixels are clipped to the image; boxes with nothing left are skipped
  and counted. Images of the JSON missing from ``--images`` are skipped and counted; an image
  without annotations gets an empty label file (a background image).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from data.scripts.yolo_labels import YoloWriter, add_output_flags, write_names_yaml, yolo_row
from utils.cli import run_cli
from utils.errors import DatasetError, MissingFileError


def load_coco(json_file: Path) -> dict:
    """The JSON as a dict with ``images``, ``annotations`` and ``categories`` checked to be lists."""
    try:
        data = json.loads(Path(json_file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{json_file}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{json_file}: a COCO file is a JSON object with images, annotations, categories")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{json_file}: no '{key}' list (not a COCO detection file)")
    data.setdefault("annotations", [])
    return data


def category_map(categories: list[dict]) -> tuple[dict[int, int], list[str]]:
    """COCO category id -> contiguous class 0..nc-1 (by ascending id), and the class names."""
    cats = sorted(categories, key=lambda c: int(c["id"]))
    return {int(c["id"]): i for i, c in enumerate(cats)}, [str(c["name"]) for c in cats]


def image_rows(anns: list[dict], w: int, h: int, class_of: dict[int, int], skipped) -> list[str]:
    """YOLO rows of one image's annotations; counts what it leaves out in ``skipped`` (a Counter)."""
    rows = []
    for a in anns:
        if a.get("iscrowd", 0):
            skipped["crowd boxes"] += 1
            continue
        if a.get("ignore", False):
            skipped["boxes marked ignore"] += 1
            continue
        if int(a["category_id"]) not in class_of:
            skipped["boxes of unlisted categories"] += 1
            continue
        x, y, bw, bh = (float(v) for v in a["bbox"])
        row = yolo_row(class_of[int(a["category_id"])], x, y, x + bw, y + bh, w, h)
        if row is None:
            skipped["empty boxes"] += 1
        else:
            rows.append(row)
    return rows


def find_image(images_dir: Path, file_name: str) -> Path | None:
    """``file_name`` under ``images_dir`` as given (it may hold a sub-folder) or by its base name."""
    for p in (images_dir / file_name, images_dir / Path(file_name).name):
        if p.is_file():
            return p
    return None


def convert(json_file: Path, images_dir: Path, out: Path, split: str = "train",
            image_mode: str = "symlink", merge_classes: str | None = None) -> tuple[YoloWriter, list[str]]:
    """Convert one COCO JSON; returns the writer (its ``stats``) and the class names.

    ``merge_classes``: a name; every category becomes class 0 of that name.
    """
    data = load_coco(json_file)
    try:
        class_of, names = category_map(data["categories"])
        if merge_classes:
            class_of, names = {k: 0 for k in class_of}, [merge_classes]
        by_image = defaultdict(list)
        for a in data["annotations"]:
            by_image[a["image_id"]].append(a)
        writer = YoloWriter(out, split, image_mode)
        for im in data["images"]:
            path = find_image(Path(images_dir), im["file_name"])
            if path is None:
                writer.stats.skipped["images not found"] += 1
                continue
            rows = image_rows(by_image[im["id"]], int(im["width"]), int(im["height"]), class_of, writer.stats.skipped)
            writer.write(path, rows)
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{json_file}: malformed COCO entry ({type(e).__name__}: {e})") from None
    write_names_yaml(out, names)
    return writer, names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, required=True, help="COCO-style annotation JSON")
    ap.add_argument("--images", type=Path, required=True, help="folder holding the JSON's images")
    ap.add_argument("--merge-classes", metavar="NAME", default=None, help="map every category to one class NAME")
    add_output_flags(ap)
    args = ap.parse_args(argv)

    def work() -> None:
        if not args.json.is_file():
            raise MissingFileError(f"annotation file {args.json} does not exist")
        if not args.images.is_dir():
            raise MissingFileError(f"image folder {args.images} does not exist")
        writer, names = convert(args.json, args.images, args.out, args.split, args.images_mode,
                                args.merge_classes)
        print(f"{len(names)} classes: {', '.join(names)}")
        print(writer.stats.summary(args.out))

    return run_cli("coco_to_yolo", work)


if __name__ == "__main__":
    sys.exit(main())
