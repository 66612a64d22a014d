"""What the dataset converters share: YOLO label rows, the output layout and the counts they report.

Every converter writes this project's layout under ``--out``::

    <out>/images/<split>/<name>.jpg   # a symlink to the original (default), a copy, or a rewritten image
    <out>/labels/<split>/<name>.txt   # one ``cls cx cy w h`` row per object, normalized, 6 decimals

so that ``path: <out>`` with ``train: images/train`` in a dataset YAML finds both. Run the
converters as modules from the repository root (``python -m data.scripts.coco_to_yolo ...``).
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_MODES = ("symlink", "copy", "none")


def yolo_row(cls: int, x1: float, y1: float, x2: float, y2: float, w: int, h: int) -> str | None:
    """A box in original pixels (xyxy) -> ``'cls cx cy w h'`` normalized; clipped to the image.

    Returns None when nothing of the box is left inside the ``w`` x ``h`` image.
    """
    x1, y1 = max(0.0, float(x1)), max(0.0, float(y1))
    x2, y2 = min(float(w), float(x2)), min(float(h), float(y2))
    if x2 <= x1 or y2 <= y1:
        return None
    return f"{cls} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}"


@dataclass
class ConversionStats:
    """What a conversion wrote and what it left out (reason -> count), printed at the end."""

    images: int = 0
    boxes: int = 0
    skipped: Counter = field(default_factory=Counter)

    def summary(self, out: Path) -> str:
        text = f"wrote {self.images} label files with {self.boxes} boxes under {out}"
        if self.skipped:
            text += "; left out: " + ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        return text


class YoloWriter:
    """Writes ``labels/<split>/<stem>.txt`` and places the image beside it in ``images/<split>/``.

    ``image_mode``: 'symlink' (default; no copy of a large dataset), 'copy', or 'none' (labels
    only; then the images must already be under ``<out>/images/<split>``).
    """

    def __init__(self, out: Path, split: str, image_mode: str = "symlink"):
        if image_mode not in IMAGE_MODES:
            raise ValueError(f"image_mode must be one of {IMAGE_MODES}, got {image_mode!r}")
        self.images_dir = Path(out) / "images" / split
        self.labels_dir = Path(out) / "labels" / split
        self.image_mode = image_mode
        self.labels_dir.mkdir(parents=True, exist_ok=True)
        if image_mode != "none":
            self.images_dir.mkdir(parents=True, exist_ok=True)
        self.stats = ConversionStats()

    def write(self, image: Path, rows: list[str], image_written: bool = False) -> None:
        """Labels of ``image`` (its file stem names the txt); ``image_written``: the caller wrote the image."""
        (self.labels_dir / f"{image.stem}.txt").write_text("".join(f"{r}\n" for r in rows))
        if not image_written:
            self._place_image(image)
        self.stats.images += 1
        self.stats.boxes += len(rows)

    def image_path(self, image: Path) -> Path:
        """Where ``image`` goes in the output layout."""
        return self.images_dir / image.name

    def _place_image(self, image: Path) -> None:
        dst = self.image_path(image)
        if self.image_mode == "none" or dst.resolve() == image.resolve():
            return
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        if self.image_mode == "symlink":
            os.symlink(os.path.abspath(image), dst)
        else:
            shutil.copyfile(image, dst)


def add_output_flags(ap) -> None:
    """``--out``, ``--split`` and ``--images-mode``: the output flags every converter shares."""
    ap.add_argument("--out", type=Path, required=True,
                    help="dataset root to write images/<split> and labels/<split> in")
    ap.add_argument("--split", default="train", help="split name under images/ and labels/ (train, val, test)")
    ap.add_argument("--images-mode", choices=IMAGE_MODES, default="symlink",
                    help="how images reach <out>/images/<split>: symlink (default), copy, or none")


def write_names_yaml(out: Path, names: list[str]) -> Path:
    """``<out>/dataset.yaml``: ``path: .``, the splits found under ``<out>/images`` and ``names``.

    A starting point for training (``--data <out>/dataset.yaml``); rewritten on every conversion,
    so converting train and then val leaves a file that lists both.
    """
    out = Path(out)
    splits = sorted(p.name for p in (out / "images").iterdir() if p.is_dir()) if (out / "images").is_dir() else []
    lines = ["# written by the converter; edit freely", "path: .   # this folder"]
    lines += [f"{s}: images/{s}" for s in splits]
    lines += ["names:"] + [f"  {i}: {_yaml_str(n)}" for i, n in enumerate(names)]
    path = out / "dataset.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _yaml_str(s: str) -> str:
    """A class name as a YAML scalar (quoted, so names like 'yes' or '1' stay strings)."""
    return "'" + str(s).replace("'", "''") + "'"
