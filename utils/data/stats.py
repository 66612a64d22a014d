"""Box and image statistics of a dataset split in original pixels: counts, size bins, percentiles.

Pure NumPy on a :class:`~utils.data.label_cache.LabelSet`; the dataset report
(utils/data/report.py) prints and plots them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

# (name, lower, upper) bounds on sqrt(area) in original px. COCO's small/medium/large; 'tiny' is the
# project's extra bin and is part of 'small' as in val.py's tables.
SIZE_BINS = (("tiny", 0.0, 16.0), ("small", 0.0, 32.0), ("medium", 32.0, 96.0), ("large", 96.0, float("inf")))
PERCENTILES = (5, 25, 50, 75, 95)


@dataclass
class SplitStats:
    """Everything the report needs about one split.

    ``cls``: (n,) class of every box; ``wh``: (n, 2) box [w, h] in original pixels;
    ``image_wh``: (m, 2) original [w, h] of every usable image; ``images_per_class``: class ->
    number of images holding it; ``backgrounds``: images without boxes.
    """

    name: str
    cls: np.ndarray
    wh: np.ndarray
    image_wh: np.ndarray
    images_per_class: dict[int, int]
    backgrounds: int

    @property
    def side(self) -> np.ndarray:
        """(n,) sqrt(w * h): the side of the square of the same area, the measure of COCO's bins."""
        return np.sqrt(self.wh[:, 0] * self.wh[:, 1])


def split_stats(name: str, labels: list[np.ndarray], shapes_wh: np.ndarray) -> SplitStats:
    """Stats of one split from per-image (k, 5) [cls, cx, cy, w, h] normalized labels and (m, 2) image [w, h]."""
    shapes = np.asarray(shapes_wh, dtype=np.float64).reshape(-1, 2)
    cls, wh, per_class = [], [], Counter()
    for lb, (w, h) in zip(labels, shapes):
        lb = np.asarray(lb, dtype=np.float64).reshape(-1, 5)
        cls.append(lb[:, 0].astype(np.int64))
        wh.append(lb[:, 3:5] * (w, h))
        per_class.update(set(lb[:, 0].astype(int).tolist()))
    return SplitStats(name=name, cls=np.concatenate(cls) if cls else np.zeros(0, np.int64),
                      wh=np.concatenate(wh) if wh else np.zeros((0, 2)), image_wh=shapes,
                      images_per_class=dict(per_class), backgrounds=sum(len(lb) == 0 for lb in labels))


def bin_counts(side: np.ndarray) -> dict[str, int]:
    """Boxes per size bin (``SIZE_BINS``) from sqrt(area) sides in original px."""
    return {name: int(((side >= lo) & (side < hi)).sum()) for name, lo, hi in SIZE_BINS}


def percentiles(values: np.ndarray) -> dict[int, float]:
    """``PERCENTILES`` of ``values`` (NaN when empty)."""
    if not len(values):
        return {p: float("nan") for p in PERCENTILES}
    return {p: float(v) for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES))}


def image_size_counts(image_wh: np.ndarray, top: int = 5) -> list[tuple[tuple[int, int], int]]:
    """The ``top`` most common (w, h) image sizes with their counts."""
    return Counter(tuple(int(v) for v in wh) for wh in image_wh).most_common(top)
