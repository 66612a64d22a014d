"""Dataset report (utils/data/report.py, stats.py, recommend.py) on the bundled sample and synthetic stats."""

from __future__ import annotations

import numpy as np

from tests.helpers import SAMPLE
from utils.data import report
from utils.data.recommend import recommend
from utils.data.stats import bin_counts, split_stats


def _sample_sides(split: str) -> np.ndarray:
    """sqrt(area) of every box of the sample's split in original px, read straight from the txt files (640x512)."""
    sides = []
    for txt in sorted((SAMPLE / "labels" / split).glob("*.txt")):
        for line in txt.read_text().splitlines():
            _, _, _, w, h = map(float, line.split())
            sides.append(np.sqrt(w * 640 * h * 512))
    return np.array(sides)


def test_report_counts_match_the_label_files(tmp_path, capsys):
    assert report.main(["--data", "data/hit-uav-sample.yaml", "--save-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for split in ("train", "val"):
        sides = _sample_sides(split)
        tiny, small = int((sides < 16).sum()), int((sides < 32).sum())
        medium, large = int(((sides >= 32) & (sides < 96)).sum()), int((sides >= 96).sum())
        n_images = len(list((SAMPLE / "images" / split).glob("*.jpg")))
        line = next(ln for ln in out.split(f"\n{split}: ", 1)[1].splitlines() if ln.startswith("all "))
        cells = line.split()
        assert int(cells[1]) == n_images and int(cells[2]) == len(sides)
        assert [int(cells[i]) for i in (3, 5, 7, 9)] == [tiny, small, medium, large]
        assert float(cells[13]) == round(float(np.percentile(sides, 50)), 1)
    assert "640x512: 80" in out and "Recommendation" in out and "--imgsz 640" in out
    for png in ("box_sides.png", "box_wh.png", "class_counts.png"):
        assert (tmp_path / png).stat().st_size > 1000


def test_bins_use_original_pixels_and_tiny_is_part_of_small():
    labels = [np.array([[0, 0.5, 0.5, 0.01, 0.01], [1, 0.5, 0.5, 0.02, 0.02]])]
    s = split_stats("train", labels, np.array([[1000, 1000]]))
    assert np.allclose(s.side, [10, 20])
    assert bin_counts(s.side) == {"tiny": 1, "small": 2, "medium": 0, "large": 0}
    assert s.images_per_class == {0: 1, 1: 1} and s.backgrounds == 0


def test_recommendation_follows_the_numbers():
    rng = np.random.default_rng(0)
    # 4000x3000 frames with 10-20 px objects: slicing at native resolution, and a P2 head
    labels = [np.column_stack([np.zeros(50), rng.uniform(0.1, 0.9, (50, 2)), rng.uniform(10, 20, 50) / 4000,
                               rng.uniform(10, 20, 50) / 3000]) for _ in range(5)]
    rec = recommend(split_stats("train", labels, np.tile([4000, 3000], (5, 1))))
    assert rec.slice_tile == 640 and rec.slice_overlap == 0.2 and rec.scale == 1.0 and rec.p2
    assert rec.bpr > 0.9 and any("--slice 640" in line for line in rec.lines())

    # 640x480 frames with 60-120 px objects: whole frames at 640, no P2
    labels = [np.column_stack([np.zeros(20), rng.uniform(0.3, 0.7, (20, 2)), rng.uniform(60, 120, 20) / 640,
                               rng.uniform(60, 120, 20) / 480]) for _ in range(5)]
    rec = recommend(split_stats("train", labels, np.tile([640, 480], (5, 1))))
    assert rec.slice_tile is None and rec.imgsz == 640 and not rec.p2 and rec.small_fraction == 0.0

    # 1000 px frames: --imgsz rounds up to a multiple of 32
    rec = recommend(split_stats("train", labels, np.tile([1000, 750], (5, 1))))
    assert rec.imgsz == 1024
