"""Dataset YAML loading (YOLOv5 format, declarative: paths and class names only).

A dataset YAML looks like::

    path: ../datasets/hit-uav   # dataset root; relative paths are relative to this YAML's folder
    train: images/train         # folder (searched recursively), .txt list of images, or a list
    val: images/val
    test:                       # optional
    names: {0: Person, 1: Car}  # or a list: [Person, Car]
    nc: 2                       # optional; must equal len(names)
    train_json: annotations/train_coco.json   # optional COCO ground truth, relative to path

``load_data_config`` resolves every split to a sorted list of image files so the rest of the
code never deals with folders, list files or relative paths again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from utils.errors import DatasetError, MissingFileError, read_yaml
from utils.image_formats import is_image_file

SPLITS = ("train", "val", "test")
JSON_KEYS = ("train_json", "val_json", "test_json")
ALLOWED_KEYS = frozenset({"path", "names", "nc", "download", *SPLITS, *JSON_KEYS})
REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve_data_yaml(path: str | Path) -> Path:
    """Find a dataset YAML given as a path, or as a bare name inside the repository's data/ folder.

    ``hit-uav-sample.yaml`` and ``data/hit-uav-sample.yaml`` both resolve to
    ``<repo>/data/hit-uav-sample.yaml`` when no such file exists relative to the working folder.
    """
    p = Path(path)
    candidates = [p, REPO_ROOT / p, REPO_ROOT / "data" / p]
    for c in candidates:
        if c.is_file():
            return Path(os.path.abspath(c))
    raise MissingFileError(f"dataset YAML '{path}' not found (also looked in {REPO_ROOT / 'data'})")


def _parse_names(names: Any, nc: Any, yaml_file: Path) -> list[str]:
    """Normalize ``names`` (list, or dict {id: name} with ids 0..n-1) and check it against ``nc``."""
    if isinstance(names, dict):
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DatasetError(f"'names' keys must be integer class ids in {yaml_file}") from None
        if ids != list(range(len(ids))):
            raise DatasetError(f"'names' ids must be 0..{len(ids) - 1} without gaps in {yaml_file}, got {ids}")
        by_id = {int(k): v for k, v in names.items()}
        names = [by_id[i] for i in ids]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"'names' must be a non-empty list or {{id: name}} dict in {yaml_file}")
    names = [str(n) for n in names]
    if nc is not None and (not isinstance(nc, int) or nc != len(names)):
        raise DatasetError(f"'nc: {nc}' does not match the {len(names)} entries of 'names' in {yaml_file}")
    return names


def _images_in_folder(folder: Path) -> list[Path]:
    """All image files under ``folder`` (recursive)."""
    return [f for f in folder.rglob("*") if is_image_file(f) and f.is_file()]


def _images_in_list_file(list_file: Path, root: Path) -> list[Path]:
    """Image paths listed one per line in a .txt file; relative lines are relative to ``root``."""
    files = []
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line)
            files.append(p if p.is_absolute() else root / p)
    return files


def resolve_split(spec: Any, root: Path, split: str, yaml_file: Path) -> list[str]:
    """Turn a split entry (folder, .txt list, or a list of those) into a sorted list of image files.

    Raises FileNotFoundError naming the split and the YAML when a folder or list file is missing
    or the split contains no images.
    """
    specs = spec if isinstance(spec, list) else [spec]
    files: list[Path] = []
    for s in specs:
        if not isinstance(s, str) or not s:
            raise DatasetError(f"'{split}' entries must be paths (strings) in {yaml_file}, got {s!r}")
        p = Path(s) if Path(s).is_absolute() else root / s
        if p.is_dir():
            files += _images_in_folder(p)
        elif p.is_file() and p.suffix.lower() == ".txt":
            files += _images_in_list_file(p, root)
        elif p.is_file() and is_image_file(p):
            files.append(p)
        else:
            raise MissingFileError(f"'{split}' path {p} (from {yaml_file}) does not exist")
    files = [f for f in files if is_image_file(f)]
    if not files:
        raise MissingFileError(f"'{split}' in {yaml_file} contains no images ({', '.join(map(str, specs))})")
    # Unique and sorted so that the order (and the seeded sampling built on it) is reproducible.
    return sorted({os.path.abspath(f) for f in files})


def load_data_config(path: str | Path) -> dict[str, Any]:
    """Load and validate a dataset YAML.

    Returns a dict with keys: ``path`` (Path, dataset root), ``train`` / ``val`` / ``test``
    (list[str] of image files, or None when absent), ``names`` (list[str]), ``nc`` (int),
    ``train_json`` / ``val_json`` / ``test_json`` (Path, only when given) and ``yaml_file`` (Path).
    Raises DatasetError for unknown keys or malformed entries (YAML syntax: ConfigError with the
    line), MissingFileError for missing paths.
    """
    yaml_file = resolve_data_yaml(path)
    raw = read_yaml(yaml_file, "dataset YAML")
    if not isinstance(raw, dict):
        raise DatasetError(f"dataset YAML {yaml_file} must be a mapping of keys to values")
    unknown = sorted(str(k) for k in raw if k not in ALLOWED_KEYS)
    if unknown:
        allowed = ", ".join(sorted(ALLOWED_KEYS))
        raise DatasetError(f"unknown key '{unknown[0]}' in dataset YAML {yaml_file} (allowed: {allowed})")
    for key in ("train", "val", "names"):
        if raw.get(key) in (None, "", []):
            raise DatasetError(f"dataset YAML {yaml_file} is missing '{key}'")
    for key in ("path", *JSON_KEYS):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise DatasetError(f"'{key}' must be a path (string) in {yaml_file}, got {raw[key]!r}")

    root = Path(raw.get("path") or ".")
    # abspath, not resolve: a symlinked images/ folder must keep its sibling labels/ folder.
    root = Path(os.path.abspath(root if root.is_absolute() else yaml_file.parent / root))
    if not root.is_dir():
        raise MissingFileError(f"dataset path {root} (from 'path' in {yaml_file}) does not exist")

    names = _parse_names(raw["names"], raw.get("nc"), yaml_file)
    cfg: dict[str, Any] = {"path": root, "names": names, "nc": len(names), "yaml_file": yaml_file}
    for split in SPLITS:
        spec = raw.get(split)
        cfg[split] = None if spec in (None, "", []) else resolve_split(spec, root, split, yaml_file)
    for key in JSON_KEYS:
        if raw.get(key):
            p = Path(raw[key])
            p = p if p.is_absolute() else root / p
            if not p.is_file():
                raise MissingFileError(f"'{key}' file {p} (from {yaml_file}) does not exist")
            cfg[key] = p
    return cfg
