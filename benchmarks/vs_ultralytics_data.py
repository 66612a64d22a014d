"""The shared data of benchmarks/vs_ultralytics.py: a fixed train subset, link trees, one ground truth.

Layout written under ``root`` (the source dataset is only read)::

    train.txt, val.txt          the chosen images (absolute source paths), the record of the subset
    ours/images/{train,val}/    symlinks to those images, labels/{train,val}/ symlinks to their labels
    ultra/images/..., labels/   the same links again, so each tool's label cache has its own folder
    ours.yaml, ultra.yaml       dataset YAMLs for train.py/val.py and for ultralytics
    gt_val.json                 COCO ground truth of the val split (image id by file name), both sides
    data.json                   what prepare_data returned, for a later report-only call

Both tools map ``.../images/x.jpg`` to ``.../labels/x.txt``, so a link tree is all they need.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import yaml

from utils.coco_eval import yolo_labels_to_coco
from utils.data.config import load_data_config
from utils.data.label_cache import img2label_paths, load_labels
from utils.errors import ConfigError

TOOLS = ("ours", "ultra")


def choose_subset(files: list[str], n: int, seed: int) -> list[str]:
    """``n`` files drawn with ``random.Random(seed)`` from the sorted list, returned sorted.

    Sorting first makes the draw independent of the order the folder was listed in.
    """
    pool = sorted(files)
    if n <= 0 or n >= len(pool):
        return pool
    return sorted(random.Random(seed).sample(pool, n))


def _write_list(path: Path, files: list[str]) -> None:
    """Write the list, or check that an existing one is the same (a run may be using it)."""
    text = "".join(f"{f}\n" for f in files)
    if path.is_file() and path.read_text() != text:
        raise ConfigError(f"{path} holds a different subset (other --train-images or --seed?): "
                          "use another --work folder")
    path.write_text(text)


def _link_tree(tool_root: Path, split: str, files: list[str]) -> None:
    """images/<split>/<name> and labels/<split>/<stem>.txt symlinks; existing links are kept."""
    for img, lab in zip(files, img2label_paths(files)):
        for src, folder in ((img, "images"), (lab, "labels")):
            dst = tool_root / folder / split / Path(src).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not dst.is_symlink() and Path(src).exists():
                os.symlink(src, dst)


def _write_yaml(path: Path, tool_root: Path, names: list[str]) -> None:
    cfg = {"path": str(tool_root), "train": "images/train", "val": "images/val",
           "names": dict(enumerate(names))}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


def _write_gt(path: Path, val_files: list[str], names: list[str]) -> None:
    """COCO GT of the linked val images, built as val.py builds it (validated YOLO labels)."""
    ls = load_labels(val_files, prefix="gt: ")
    gt = yolo_labels_to_coco(ls.labels, ls.shapes, names, ls.img_files)
    path.write_text(json.dumps(gt))


def prepare_data(data_yaml: Path, root: Path, n_train: int, seed: int) -> dict:
    """Build (or reuse) the layout above; returns paths and counts.

    Returns:
        ``{"ours_yaml", "ultra_yaml", "gt": str paths, "names": list, "n_train", "n_val", "seed": int}``.
    """
    src = load_data_config(data_yaml)
    train = choose_subset(src["train"], n_train, seed)
    val = sorted(src["val"])
    root.mkdir(parents=True, exist_ok=True)
    _write_list(root / "train.txt", train)
    _write_list(root / "val.txt", val)
    for tool in TOOLS:
        _link_tree(root / tool, "train", train)
        _link_tree(root / tool, "val", val)
        _write_yaml(root / f"{tool}.yaml", root / tool, src["names"])
    gt = root / "gt_val.json"
    if not gt.is_file():
        linked = [str(root / "ours" / "images" / "val" / Path(f).name) for f in val]
        _write_gt(gt, linked, src["names"])
    info = {"ours_yaml": str(root / "ours.yaml"), "ultra_yaml": str(root / "ultra.yaml"), "gt": str(gt),
            "names": list(src["names"]), "n_train": len(train), "n_val": len(val), "seed": seed}
    (root / "data.json").write_text(json.dumps(info, indent=2))
    return info
