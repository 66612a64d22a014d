"""COCO files: ground truth built from YOLO labels, and COCO JSON ground truth / results read and checked.

Boxes are ``[x, y, w, h]`` in original image pixels and ``area`` is ``w * h`` in original pixels,
as the COCO evaluator (utils/coco_eval.py) expects. Every malformed file gives one CocoFormatError
naming the file and the problem.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from utils.errors import CocoFormatError


def yolo_labels_to_coco(labels: Sequence[np.ndarray], shapes_wh: np.ndarray, names: Sequence[str],
                        file_names: Sequence[str] | None = None) -> dict:
    """COCO ground-truth dict from YOLO labels, in original image pixels.

    Args:
        labels: per image an (n, 5) array ``[cls, cx, cy, w, h]`` normalized to [0, 1].
        shapes_wh: (N, 2) original image ``(width, height)``.
        names: class names; category id = class index.
        file_names: per image file name (defaults to ``'<index>'``).

    Image ids are 1-based positions in ``labels``; annotation ``area`` is box w*h in original
    pixels (the size used for the small/medium/large bins); ``iscrowd`` is 0.
    """
    shapes_wh = np.asarray(shapes_wh, dtype=np.float64).reshape(-1, 2)
    if len(labels) != len(shapes_wh):
        raise ValueError(f"{len(labels)} label arrays but {len(shapes_wh)} image shapes")
    images, anns = [], []
    for i, (lab, (w, h)) in enumerate(zip(labels, shapes_wh)):
        name = Path(file_names[i]).name if file_names is not None else str(i)
        images.append({"id": i + 1, "width": int(w), "height": int(h), "file_name": name})
        lab = np.asarray(lab, dtype=np.float64).reshape(-1, 5)
        bw, bh = lab[:, 3] * w, lab[:, 4] * h
        x1, y1 = lab[:, 1] * w - bw / 2, lab[:, 2] * h - bh / 2
        for c, x, y, ww, hh in zip(lab[:, 0].astype(int).tolist(), x1.tolist(), y1.tolist(),
                                   bw.tolist(), bh.tolist()):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": c,
                         "bbox": [x, y, ww, hh], "area": ww * hh, "iscrowd": 0})
    cats = [{"id": i, "name": str(n)} for i, n in enumerate(names)]
    return {"images": images, "annotations": anns, "categories": cats}


def _path_parts(path: str) -> tuple[str, ...]:
    """Components of a path written with / or \\ (COCO files made on Windows), without '.' and '..'."""
    return tuple(p for p in re.split(r"[/\\]+", path) if p not in ("", ".", ".."))


def _read_json(path: str | Path, what: str):
    path = Path(path)
    if not path.is_file():
        raise CocoFormatError(f"{what} file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CocoFormatError(f"{what} file {path} is not valid JSON: {e}") from None


def load_coco_gt(path: str | Path) -> dict:
    """Read and check a COCO ground-truth JSON (``images``, ``annotations``, ``categories``).

    Annotations without ``area`` get box w*h, without ``iscrowd`` get 0. Raises CocoFormatError.
    """
    gt = _read_json(path, "COCO ground-truth")
    keys = ("images", "annotations", "categories")
    if not isinstance(gt, dict) or not all(isinstance(gt.get(k), list) for k in keys):
        raise CocoFormatError(f"COCO ground-truth {path} needs lists 'images', 'annotations' and 'categories'")
    try:
        img_ids = {int(im["id"]) for im in gt["images"]}
        for im in gt["images"]:
            int(im["width"]), int(im["height"])
        cat_ids = {int(c["id"]) for c in gt["categories"]}
        for a in gt["annotations"]:
            x, y, w, h = (float(v) for v in a["bbox"])
            a.setdefault("area", w * h)
            a.setdefault("iscrowd", 0)
            if int(a["image_id"]) not in img_ids or int(a["category_id"]) not in cat_ids:
                raise CocoFormatError(f"COCO ground-truth {path}: annotation {a.get('id')} refers to an "
                                      "unknown image or category")
            a["id"] = int(a["id"])
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, CocoFormatError):
            raise
        raise CocoFormatError(f"COCO ground-truth {path} has a malformed entry ({type(e).__name__}: {e})") from None
    return gt


def load_coco_results(path: str | Path, gt: dict) -> list[dict]:
    """Read and check a COCO results JSON: a list of ``{image_id, category_id, bbox [x, y, w, h], score}``.

    Every image and category id must exist in ``gt``. Raises CocoFormatError naming the problem.
    """
    res = _read_json(path, "predictions")
    if not isinstance(res, list):
        raise CocoFormatError(f"predictions {path} must be a JSON list of detections (COCO results format)")
    img_ids = {int(im["id"]) for im in gt["images"]}
    cat_ids = {int(c["id"]) for c in gt["categories"]}
    out = []
    for i, d in enumerate(res):
        try:
            box = [float(v) for v in d["bbox"]]
            item = {"image_id": int(d["image_id"]), "category_id": int(d["category_id"]),
                    "bbox": box, "score": float(d["score"])}
        except (KeyError, TypeError, ValueError):
            raise CocoFormatError(f"predictions {path}: entry {i} needs image_id, category_id, "
                                  "bbox [x, y, w, h] and score") from None
        if len(box) != 4:
            raise CocoFormatError(f"predictions {path}: entry {i} bbox must have 4 numbers")
        if item["image_id"] not in img_ids:
            raise CocoFormatError(f"predictions {path}: entry {i} has image_id {item['image_id']} "
                                  "not in the ground truth")
        if item["category_id"] not in cat_ids:
            raise CocoFormatError(f"predictions {path}: entry {i} has category_id {item['category_id']} "
                                  "not in the ground truth")
        out.append(item)
    return out
