"""Convert Pascal VOC XML annotations (VOC2007/2012 layout) to YOLO labels.

Usage (from the repository root):
    python -m data.scripts.voc_to_yolo --root VOCdevkit/VOC2007 --image-set trainval \
        --out ../datasets/voc --split train

``--root`` holds ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg`` and
``ImageSets/Main/<image-set>.txt`` (the ids of the split); without ``--image-set`` every XML of
``Annotations/`` is converted.

* Classes: the 20 VOC names by default (in the usual order); ``--names a,b,c`` for another list,
  or ``--names auto`` for the sorted names found in the XML files. Objects of other names are
  skipped and counted.
* ``difficult`` objects (``<difficult>1</difficult>``) are skipped by default, as VOC's
  evaluation ignores them; ``--keep-difficult`` keeps them as ordinary boxes.
* VOC coordinates are 1-based inclusive pixels: a box ``xmin..xmax`` covers the pixel interval
  ``[xmin - 1, xmax]``, which is what is normalized. The image size comes from ``<size>``
  (read from the image when the XML lacks it).
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image

from data.scripts.yolo_labels import YoloWriter, add_output_flags, write_names_yaml, yolo_row
from utils.cli import run_cli
from utils.errors import DatasetError, MissingFileError

VOC_NAMES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
             "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
             "train", "tvmonitor"]


def parse_xml(xml_file: Path) -> dict:
    """One VOC XML -> ``{'filename', 'size': (w, h) or None, 'objects': [(name, difficult, x1, y1, x2, y2)]}``.

    Coordinates are VOC's own (1-based inclusive pixels).
    """
    try:
        root = ET.parse(xml_file).getroot()
        size = root.find("size")
        wh = (int(float(size.findtext("width"))), int(float(size.findtext("height")))) if size is not None else None
        objects = []
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            coords = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            objects.append((obj.findtext("name").strip(), (obj.findtext("difficult") or "0").strip() == "1", *coords))
    except (ET.ParseError, AttributeError, TypeError, ValueError) as e:
        raise DatasetError(f"{xml_file}: malformed VOC annotation ({type(e).__name__}: {e})") from None
    return {"filename": root.findtext("filename"), "size": wh if wh and min(wh) > 0 else None, "objects": objects}


def xml_rows(ann: dict, class_of: dict[str, int], keep_difficult: bool, skipped) -> list[str]:
    """YOLO rows of one parsed XML; counts what it leaves out in ``skipped`` (a Counter)."""
    w, h = ann["size"]
    rows = []
    for name, difficult, xmin, ymin, xmax, ymax in ann["objects"]:
        if difficult and not keep_difficult:
            skipped["difficult objects"] += 1
        elif name not in class_of:
            skipped[f"objects of unlisted class '{name}'"] += 1
        elif (row := yolo_row(class_of[name], xmin - 1, ymin - 1, xmax, ymax, w, h)) is None:
            skipped["empty boxes"] += 1
        else:
            rows.append(row)
    return rows


def split_ids(root: Path, image_set: str | None) -> list[str]:
    """The image ids of ``ImageSets/Main/<image_set>.txt``, or of every XML under Annotations/."""
    if image_set is None:
        return sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    list_file = root / "ImageSets" / "Main" / f"{image_set}.txt"
    if not list_file.is_file():
        raise MissingFileError(f"image set list {list_file} does not exist")
    return [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]


def resolve_names(spec: str | None, root: Path, ids: list[str]) -> list[str]:
    """Class names from ``--names``: None -> VOC's 20, 'auto' -> sorted names in the XMLs, else a comma list."""
    if spec is None:
        return list(VOC_NAMES)
    if spec == "auto":
        return sorted({o[0] for i in ids for o in parse_xml(root / "Annotations" / f"{i}.xml")["objects"]})
    return [n.strip() for n in spec.split(",") if n.strip()]


def convert(root: Path, out: Path, split: str = "train", image_set: str | None = None, names: str | None = None,
            keep_difficult: bool = False, image_mode: str = "symlink") -> tuple[YoloWriter, list[str]]:
    """Convert one VOC split; returns the writer (its ``stats``) and the class names."""
    root = Path(root)
    ids = split_ids(root, image_set)
    class_names = resolve_names(names, root, ids)
    class_of = {n: i for i, n in enumerate(class_names)}
    writer = YoloWriter(out, split, image_mode)
    for image_id in ids:
        xml_file = root / "Annotations" / f"{image_id}.xml"
        if not xml_file.is_file():
            writer.stats.skipped["ids without an XML"] += 1
            continue
        ann = parse_xml(xml_file)
        image = root / "JPEGImages" / (ann["filename"] or f"{image_id}.jpg")
        if not image.is_file():
            image = root / "JPEGImages" / f"{image_id}.jpg"
        if not image.is_file():
            writer.stats.skipped["images not found"] += 1
            continue
        if ann["size"] is None:
            with Image.open(image) as im:  # reads the header only
                ann["size"] = im.size
        writer.write(image, xml_rows(ann, class_of, keep_difficult, writer.stats.skipped))
    write_names_yaml(out, class_names)
    return writer, class_names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="VOC year folder (Annotations, JPEGImages, ImageSets)")
    ap.add_argument("--image-set", default=None, help="ImageSets/Main/<name>.txt to convert (default: every XML)")
    ap.add_argument("--names", default=None, help="comma-separated class names, or 'auto' (default: VOC's 20)")
    ap.add_argument("--keep-difficult", action="store_true", help="keep objects marked difficult (default: skip)")
    add_output_flags(ap)
    args = ap.parse_args(argv)

    def work() -> None:
        if not (args.root / "Annotations").is_dir():
            raise MissingFileError(f"{args.root} has no Annotations/ folder (expected a VOC year folder)")
        writer, names = convert(args.root, args.out, args.split, args.image_set, args.names,
                                args.keep_difficult, args.images_mode)
        print(f"{len(names)} classes: {', '.join(names)}")
        print(writer.stats.summary(args.out))

    return run_cli("voc_to_yolo", work)


if __name__ == "__main__":
    sys.exit(main())
