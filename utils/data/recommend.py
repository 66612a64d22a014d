"""Training recommendations drawn from a split's box and image statistics (the dataset report's last part).

The rules, each printed with the numbers it used:

* **Image size / slicing.** With a median image long side L <= ``MAX_WHOLE_FRAME`` (1280 px) train
  at L rounded up to a multiple of 32: the native resolution, so no object shrinks. Above it, a
  whole frame at 1280 would shrink objects by 1280 / L, so the advice is native-resolution tiles:
  train on crops (hyp ``native_crop: 1.0``) of the tile size and validate/predict with
  ``--slice``. The tile is 640 px, or 1024 when the median object side exceeds 64 px (tiles must
  hold several objects whole); the overlap is the 95th percentile object side over the tile,
  at least 0.2, so almost every object is whole in some tile.
* **P2 head.** At the recommended scale, a box whose side is under 16 px spans less than two cells
  of the stride-8 P3 level; when at least ``P2_FRACTION`` (30%) of the boxes are that small, a P2
  (stride-4) model is advised.
* **Anchor fit.** The best possible recall (``anchor_t`` 4.0) of the model files' default anchors
  for the boxes at the recommended scale; under 0.98 AutoAnchor refits them (leave it on). The
  anchor-free ``-af`` models have no anchors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.autoanchor import anchor_bpr
from utils.data.stats import SplitStats, percentiles
from utils.errors import read_yaml

MAX_WHOLE_FRAME = 1280
P2_FRACTION = 0.30
P3_MIN_SIDE = 16.0  # px at the input: two cells of stride 8
BPR_OK = 0.98
ANCHOR_T = 4.0
MODELS = Path(__file__).resolve().parents[2] / "models"


@dataclass
class Recommendation:
    """The advice and the figures behind it; ``lines()`` is what the report prints."""

    imgsz: int
    scale: float  # input px per original px at the recommended setting
    slice_tile: int | None  # None: whole frames
    slice_overlap: float | None
    small_fraction: float  # share of boxes under P3_MIN_SIDE input px at ``scale``
    p2: bool
    bpr: float
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return list(self.notes)


def default_anchors(p2: bool) -> np.ndarray:
    """(k, 2) [w, h] default anchors of models/yolov5-p2.yaml (P2-P5) or models/yolov5.yaml (P3-P5)."""
    spec = read_yaml(MODELS / ("yolov5-p2.yaml" if p2 else "yolov5.yaml"), "model YAML")
    return np.array(spec["anchors"], dtype=np.float64).reshape(-1, 2)


def _ceil32(x: float) -> int:
    return int(math.ceil(x / 32) * 32)


def recommend(stats: SplitStats) -> Recommendation:
    """Advice for training on the split described by ``stats`` (normally train)."""
    long_side = float(np.median(stats.image_wh.max(1))) if len(stats.image_wh) else 640.0
    side = stats.side
    p = percentiles(side)
    notes = []
    if long_side <= MAX_WHOLE_FRAME:
        imgsz, scale, tile, overlap = _ceil32(long_side), _ceil32(long_side) / long_side, None, None
        notes.append(f"image size: --imgsz {imgsz} (median long side {long_side:.0f} px: native resolution, "
                     "no object shrinks)")
    else:
        tile = 1024 if p[50] > 64 else 640
        overlap = max(0.2, math.ceil(20 * (p[95] / tile)) / 20) if len(side) else 0.2
        imgsz, scale = tile, 1.0
        notes.append(f"image size: median long side {long_side:.0f} px > {MAX_WHOLE_FRAME}: a whole frame would "
                     f"shrink objects {long_side / MAX_WHOLE_FRAME:.1f}x or more")
        notes.append(f"slicing: train --imgsz {tile} on native-resolution crops (hyp native_crop: 1.0), validate and "
                     f"predict with --slice {tile} --overlap {overlap:.2f} (median object side {p[50]:.0f} px, "
                     f"95th percentile {p[95]:.0f} px)")
    small = float((side * scale < P3_MIN_SIDE).mean()) if len(side) else 0.0
    p2 = small >= P2_FRACTION
    verdict = "use a P2 model (e.g. models/yolov5n-p2-af.yaml)" if p2 else "a P3-P5 model is enough"
    notes.append(f"P2 head: {100 * small:.0f}% of boxes are under {P3_MIN_SIDE:.0f} px at the input (less than two "
                 f"stride-8 cells; threshold {100 * P2_FRACTION:.0f}%): {verdict}")
    bpr = anchor_bpr(default_anchors(p2), stats.wh * scale, ANCHOR_T)[0] if len(side) else 0.0
    fit = "they fit" if bpr >= BPR_OK else "AutoAnchor will refit them before training (leave it on)"
    notes.append(f"anchor fit: default {'P2-P5' if p2 else 'P3-P5'} anchors reach best possible recall {bpr:.3f} "
                 f"(anchor_t {ANCHOR_T:g}) at this scale: {fit}; anchor-free -af models need none")
    return Recommendation(imgsz=imgsz, scale=scale, slice_tile=tile, slice_overlap=overlap, small_fraction=small,
                          p2=p2, bpr=bpr, notes=notes)
