"""Dataset report: what the boxes of a dataset look like, and how to train on it.

    python -m utils.data.report --data data/hit-uav-sample.yaml [--save-dir runs/report/exp]

Prints, per split and per class: images, instances, the COCO size bins (small < 32^2 <= medium
< 96^2 <= large, areas in original pixels) plus a tiny bin (< 16^2, part of small), and the 5th,
25th, 50th, 75th and 95th percentiles of the box side sqrt(w * h), width and height in original
pixels; then the image sizes and a recommendation (image size, slicing, P2 head, anchor fit; the
rules are in utils/data/recommend.py). Histograms of box sides, box width against height and class
counts are saved as PNG in the save folder (runs/report/exp, exp2 ... by default).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from utils.data.config import SPLITS, load_data_config
from utils.data.label_cache import load_labels
from utils.data.recommend import Recommendation, recommend
from utils.data.stats import PERCENTILES, SIZE_BINS, SplitStats, bin_counts, image_size_counts, percentiles, split_stats

BIN_EDGES_PX = (16, 32, 96)


def collect(data_yaml: str | Path) -> tuple[list[SplitStats], list[str]]:
    """Stats of every split of a dataset YAML (train, val, test when present) and its class names."""
    data = load_data_config(data_yaml)
    out = []
    for split in SPLITS:
        if data.get(split):
            ls = load_labels(data[split], prefix=f"{split}: ")
            out.append(split_stats(split, ls.labels, ls.shapes))
    return out, data["names"]


def _row(label: str, images: int, side: np.ndarray, wh: np.ndarray) -> str:
    bins = bin_counts(side)
    n = max(len(side), 1)
    ps = percentiles(side)
    cells = [f"{label:<16.16}", f"{images:>7}", f"{len(side):>9}"]
    cells += [f"{bins[b]:>6} {100 * bins[b] / n:>3.0f}%" for b, _, _ in SIZE_BINS]
    cells += [f"{ps[p]:>6.1f}" for p in PERCENTILES]
    if len(wh):
        cells.append(f"{np.median(wh[:, 0]):>6.1f}x{np.median(wh[:, 1]):<6.1f}")
    return " ".join(cells)


def format_split(s: SplitStats, names: Sequence[str]) -> str:
    """The table of one split: an 'all' row and a row per class, sizes in original pixels."""
    bins = " ".join(f"{b + ' (' + str(int(hi)) + ')' if hi < 1e9 else b:>11}" for b, _, hi in SIZE_BINS)
    head = (f"{'class':<16} {'images':>7} {'instances':>9} {bins} "
            + " ".join(f"{'p' + str(p):>6}" for p in PERCENTILES) + "  median wxh")
    title = (f"\n{s.name}: {len(s.image_wh)} images ({s.backgrounds} without boxes), {len(s.cls)} boxes; "
             "sizes are sqrt(w*h) in original px, small includes tiny")
    lines = [title, head,
             _row("all", len(s.image_wh), s.side, s.wh)]
    for c in sorted(set(s.cls.tolist())):
        m = s.cls == c
        name = names[c] if c < len(names) else f"class{c}"
        lines.append(_row(name, s.images_per_class.get(c, 0), s.side[m], s.wh[m]))
    w_p, h_p = percentiles(s.wh[:, 0]), percentiles(s.wh[:, 1])
    lines.append("box width  px percentiles " + ", ".join(f"p{p} {w_p[p]:.1f}" for p in PERCENTILES))
    lines.append("box height px percentiles " + ", ".join(f"p{p} {h_p[p]:.1f}" for p in PERCENTILES))
    sizes = ", ".join(f"{w}x{h}: {n}" for (w, h), n in image_size_counts(s.image_wh))
    if len(s.image_wh):
        long_side = s.image_wh.max(1)
        lines.append(f"image sizes (w x h: images) {sizes}; long side min {long_side.min():.0f}, "
                     f"median {np.median(long_side):.0f}, max {long_side.max():.0f} px")
    return "\n".join(lines)


def format_report(stats: list[SplitStats], names: Sequence[str], rec: Recommendation | None) -> str:
    text = "\n".join(format_split(s, names) for s in stats)
    if rec is not None:
        text += "\n\nRecommendation (from the train split):\n" + "\n".join(f"  - {line}" for line in rec.lines())
    return text


def save_histograms(stats: list[SplitStats], names: Sequence[str], save_dir: str | Path) -> list[Path]:
    """box_sides.png (sqrt-area histogram per split with the 16/32/96 px edges), box_wh.png, class_counts.png."""
    from utils.plots import new_figure, save_figure

    save_dir = Path(save_dir)
    fig = new_figure((9, 5))
    ax = fig.add_subplot(1, 1, 1)
    sides = [s.side for s in stats if len(s.side)]
    lo = min((float(v.min()) for v in sides), default=1.0)
    hi = max((float(v.max()) for v in sides), default=100.0)
    edges = np.geomspace(max(lo * 0.95, 0.5), max(hi, 2 * lo, 2.0) * 1.05, 50)
    for s in stats:
        if len(s.side):
            ax.hist(s.side, bins=edges, histtype="step", linewidth=1.5, label=f"{s.name} ({len(s.side)})")
    for e in BIN_EDGES_PX:
        ax.axvline(e, color="k", linestyle="--", linewidth=0.8)
    ax.set(xscale="log", xlabel="box side sqrt(w*h), original px (lines: 16 / 32 / 96)", ylabel="boxes")
    ax.legend()
    paths = [save_figure(fig, save_dir / "box_sides.png")]

    fig = new_figure((6, 6))
    ax = fig.add_subplot(1, 1, 1)
    for s in stats:
        if len(s.wh):
            ax.scatter(s.wh[:, 0], s.wh[:, 1], s=2, alpha=0.3, label=s.name)
    ax.set(xscale="log", yscale="log", xlabel="box width (px)", ylabel="box height (px)")
    if any(len(s.wh) for s in stats):
        ax.legend()
    paths.append(save_figure(fig, save_dir / "box_wh.png"))

    fig = new_figure((max(6, 0.5 * len(names) + 2), 4))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(len(stats), 1)
    for i, s in enumerate(stats):
        counts = np.bincount(s.cls, minlength=len(names))[: len(names)]
        ax.bar(np.arange(len(names)) + i * width, counts, width=width, label=s.name)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, labels=list(names), rotation=90)
    ax.set(ylabel="instances")
    ax.legend()
    paths.append(save_figure(fig, save_dir / "class_counts.png"))
    return paths


def run(args: argparse.Namespace) -> Path:
    from utils.run_dir import increment_path

    stats, names = collect(args.data)
    train = next((s for s in stats if s.name == "train"), stats[0] if stats else None)
    rec = recommend(train) if train is not None and len(train.side) else None
    print(format_report(stats, names, rec))
    save_dir = Path(args.save_dir) if args.save_dir else increment_path(Path("runs/report/exp"))
    paths = save_histograms(stats, names, save_dir)
    print(f"\nHistograms saved to {save_dir}: {', '.join(p.name for p in paths)}")
    return save_dir


def main(argv: list[str] | None = None) -> int:
    from utils.cli import run_cli

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="dataset YAML")
    ap.add_argument("--save-dir", default="", help="folder for the PNGs (default: runs/report/exp, exp2 ...)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    return run_cli("report", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
