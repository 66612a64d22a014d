"""Build data/hit-uav-sample: a fixed, seeded 100-image subset of HIT-UAV (80 train + 20 val).

Usage (from the repository root):
    python data/scripts/make_hit_uav_sample.py [--src ../shared/datasets/hit-uav] [--seed 0]

Images and labels are copied unmodified. Each split is drawn so that every class appears in it:
first, for each class from the rarest up, the first image (in seeded random order) containing it;
then the rest in that same order. The output replaces data/hit-uav-sample/{images,labels}.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SRC = ROOT.parent / "shared" / "datasets" / "hit-uav"
DST = ROOT / "data" / "hit-uav-sample"
SPLITS = {"train": 80, "val": 20}
MAX_BYTES = 8 * 2**20

README = """# HIT-UAV sample (100 images)

A 100-image subset, unmodified, of **HIT-UAV: A high-altitude infrared thermal dataset for
Unmanned Aerial Vehicle-based object detection** by Jiashun Suo, Tianyi Wang et al., Harbin
Institute of Technology, *Scientific Data* 10, 227 (2023). Licensed under CC-BY-4.0 (see
`LICENSE` in this folder).

- `images/train` (80) and `images/val` ({n_val}) are 640x512 grayscale thermal JPEGs taken from a
  drone at 60-130 m; most objects are smaller than 32x32 pixels.
- `labels/` holds the YOLO txt labels (`cls cx cy w h`, normalized) of the same images.
- Classes: 0 Person, 1 Car, 2 Bicycle, 3 OtherVehicle (every class occurs in both splits).

It is bundled so that `python train.py` runs without any download. It was produced by
`python data/scripts/make_hit_uav_sample.py` (seed {seed}) from the full dataset; use
`data/hit-uav.yaml` for real training.
"""


def read_classes(label_file: Path) -> set[int]:
    """Class ids present in a YOLO label file (empty set when the file is missing)."""
    if not label_file.is_file():
        return set()
    return {int(float(line.split()[0])) for line in label_file.read_text().splitlines() if line.strip()}


def pick(images: list[Path], labels_dir: Path, n: int, rng: random.Random) -> list[Path]:
    """Seeded choice of ``n`` images covering every class present in the split."""
    order = sorted(images)
    rng.shuffle(order)
    classes = {p: read_classes(labels_dir / f"{p.stem}.txt") for p in order}
    counts: dict[int, int] = {}
    for cs in classes.values():
        for c in cs:
            counts[c] = counts.get(c, 0) + 1
    chosen: list[Path] = []
    for c in sorted(counts, key=lambda k: (counts[k], k)):  # rarest class first
        if not any(c in classes[p] for p in chosen):
            chosen.append(next(p for p in order if c in classes[p]))
    chosen += [p for p in order if p not in chosen][: n - len(chosen)]
    return sorted(chosen[:n])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="HIT-UAV folder with images/ and labels/")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not (args.src / "images").is_dir():
        print(f"error: {args.src} has no images/ folder (expected the HIT-UAV dataset)", file=sys.stderr)
        return 1
    rng = random.Random(args.seed)
    for sub in ("images", "labels"):
        shutil.rmtree(DST / sub, ignore_errors=True)
    total = 0
    for split, n in SPLITS.items():
        images = [p for p in (args.src / "images" / split).iterdir() if p.suffix.lower() == ".jpg"]
        labels_dir = args.src / "labels" / split
        for sub in ("images", "labels"):
            (DST / sub / split).mkdir(parents=True, exist_ok=True)
        for img in pick(images, labels_dir, n, rng):
            # copyfile, not copy2: the source is read-only and its mode bits must not follow.
            shutil.copyfile(img, DST / "images" / split / img.name)
            total += img.stat().st_size
            lbl = labels_dir / f"{img.stem}.txt"
            if lbl.is_file():
                shutil.copyfile(lbl, DST / "labels" / split / lbl.name)
    shutil.copyfile(args.src / "LICENSE", DST / "LICENSE")
    (DST / "README.md").write_text(README.format(n_val=SPLITS["val"], seed=args.seed))
    print(f"wrote {sum(SPLITS.values())} images ({total / 2**20:.1f} MB) to {DST}")
    if total > MAX_BYTES:
        print(f"error: sample is larger than {MAX_BYTES / 2**20:.0f} MB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
