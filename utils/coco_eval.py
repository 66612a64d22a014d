"""COCO-style box evaluation (AP, AP50, AP75, APs/m/l, AR1/10/100, ARs/m/l) with faster-coco-eval.

Boxes are evaluated in original image pixels and object areas are box ``w * h`` in original
pixels, so the size bins mean what they mean in the COCO paper: small < 32^2 <= medium < 96^2
<= large. Extra named bins (e.g. ``tiny``: areas below 16^2) are reported as ``AP_<name>`` and
``AR_<name>``. Ground truth is either a COCO JSON or built from YOLO labels with the true image
sizes (:func:`utils.coco_files.yolo_labels_to_coco`; reading and checking COCO files is in utils/coco_files.py).

Detections per image: COCO's maxDets [1, 10, 100] by default (AP and the size bins use the last
entry). ``max_dets`` replaces the last entry (``[1, 10, 300]``: keys AR1, AR10, AR300) for dense
scenes where 100 caps recall; the table says which limit was used.

Images of a dataset find their COCO image id by file name: by basename when the ground truth's
basenames are unique, else by the relative path in ``file_name`` (``seq1/000001.jpg`` matches
``.../seq1/000001.jpg``). Names that stay ambiguous are an error naming them, never a silent merge.

faster-coco-eval reproduces pycocotools' numbers (tested to 1e-3) with a C++ core that is many
times faster, so this evaluation can run every epoch.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from utils.coco_files import _path_parts, load_coco_gt, load_coco_results, yolo_labels_to_coco  # noqa: F401 (re-exported)
from utils.errors import CocoFormatError, ConfigError

MAX_AREA = 1e5**2  # pycocotools' upper bound for "all" and "large"
COCO_RANGES: dict[str, tuple[float, float]] = {
    "small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, MAX_AREA)}
COCO_MAX_DETS = 100  # COCO's detections per image; the default, so figures compare with published ones
# faster-coco-eval's stats_as_dict labels (AR at each maxDets entry: see _lib_key)
_LIB_KEYS = {"AP": "AP_all", "AP50": "AP_50", "AP75": "AP_75", "APs": "AP_small",
             "APm": "AP_medium", "APl": "AP_large", "ARs": "AR_small", "ARm": "AR_medium", "ARl": "AR_large"}
_LIB_DEFAULT_AR = {1: "AR_all", 10: "AR_second", 100: "AR_third"}  # its labels for maxDets [1, 10, 100]


def max_dets_list(max_dets: int = COCO_MAX_DETS) -> list[int]:
    """COCO's maxDets [1, 10, 100] with the last entry replaced by ``max_dets`` (entries >= it dropped)."""
    if isinstance(max_dets, bool) or not isinstance(max_dets, int) or max_dets < 1:
        raise ConfigError(f"COCO maxDets must be an integer >= 1, got {max_dets!r}")
    return [*(d for d in (1, 10) if d < max_dets), max_dets]


def coco_keys(max_dets: int = COCO_MAX_DETS) -> tuple[str, ...]:
    """The 12 COCO figures' keys; the AR keys name the maxDets entries (AR1, AR10, AR100 by default)."""
    return ("AP", "AP50", "AP75", "APs", "APm", "APl", *(f"AR{d}" for d in max_dets_list(max_dets)),
            "ARs", "ARm", "ARl")


def max_dets_of(stats: dict[str, float]) -> int:
    """The maxDets a stats dict was computed with (its largest ``AR<n>`` key; 100 when it has none)."""
    return max((int(k[2:]) for k in stats if re.fullmatch(r"AR\d+", k)), default=COCO_MAX_DETS)


COCO_KEYS = coco_keys()


def _lib_key(key: str, dets: list[int]) -> str:
    """faster-coco-eval's stats_as_dict label of one of our keys."""
    if re.fullmatch(r"AR\d+", key):
        d = int(key[2:])
        return _LIB_DEFAULT_AR[d] if dets == [1, 10, 100] else f"AR_{d}"
    return _LIB_KEYS[key]
DEFAULT_AREA_RANGES = ("tiny=0,16",)  # val.py default: tiny objects, side below 16 px


def parse_area_ranges(specs: Iterable[str]) -> dict[str, tuple[float, float]]:
    """Parse ``name=lo,hi`` items (box side lengths in pixels; ``hi`` may be ``inf``) into areas.

    ``['tiny=0,16']`` -> ``{'tiny': (0.0, 256.0)}``. Names must be identifiers and must not
    shadow ``all``, ``small``, ``medium`` or ``large``. Raises ConfigError on a bad item.
    """
    out: dict[str, tuple[float, float]] = {}
    for spec in specs:
        m = re.fullmatch(r"([A-Za-z_]\w*)=([^,]+),([^,]+)", spec.strip())
        if not m:
            raise ConfigError(f"bad --area-ranges item '{spec}': expected NAME=MIN,MAX (side in pixels), e.g. tiny=0,16")
        name = m.group(1)
        try:
            lo, hi = float(m.group(2)), float(m.group(3))
        except ValueError:
            raise ConfigError(f"bad --area-ranges item '{spec}': MIN and MAX must be numbers") from None
        if name in ("all", *COCO_RANGES) or name in out:
            raise ConfigError(f"bad --area-ranges item '{spec}': name '{name}' is reserved or repeated")
        if not 0 <= lo < hi:
            raise ConfigError(f"bad --area-ranges item '{spec}': need 0 <= MIN < MAX")
        out[name] = (lo * lo, min(hi * hi, MAX_AREA))
    return out


@contextlib.contextmanager
def gc_paused():
    """Pause the cyclic garbage collector while building ~10^5-10^6 annotation dicts.

    Those dicts form no cycles, yet every few hundred allocations trigger a collection that
    walks all of them again; pausing it makes building and indexing about twice as fast.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """float64 numpy copy of a tensor (any device) or array-like."""
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)


def _silent(*args, **kwargs) -> None:
    """print_function for faster-coco-eval: its progress messages would clutter every epoch."""


class CocoEvaluator:
    """Collects detections and computes COCO box metrics against one ground truth.

    Class index <-> category id: identity when the GT category ids are ``0..nc-1`` (GT built
    from YOLO labels); otherwise (real COCO: 1..90 with gaps) class index ``i`` is the ``i``-th
    category id in sorted order, and :attr:`mapping_note` says so.

    Args:
        gt: COCO ground-truth dict (see :func:`load_coco_gt`, :func:`yolo_labels_to_coco`).
        area_ranges: extra named bins ``{name: (min_area, max_area)}`` in original pixels^2.
        nc: number of classes of the model; must equal the number of GT categories when given.
        max_dets: detections per image that count (COCO's maxDets, last entry); 100 = COCO's.
    """

    def __init__(self, gt: dict, area_ranges: dict[str, tuple[float, float]] | None = None,
                 nc: int | None = None, max_dets: int = COCO_MAX_DETS):
        self.gt = gt
        self.area_ranges = dict(area_ranges or {})
        self.max_dets = max_dets_list(max_dets)[-1]
        self.cat_ids = sorted(int(c["id"]) for c in gt["categories"])
        if nc is not None and nc != len(self.cat_ids):
            raise CocoFormatError(f"the model has {nc} classes but the COCO ground truth has {len(self.cat_ids)} categories")
        identity = self.cat_ids == list(range(len(self.cat_ids)))
        self.mapping_note = "" if identity else (
            f"COCO category ids are not 0..{len(self.cat_ids) - 1}: class index i is the i-th "
            f"category id in sorted order ({self.cat_ids[0]}..{self.cat_ids[-1]})")
        self._cat_lut = np.asarray(self.cat_ids, dtype=np.float64)
        self._by_basename: dict[str, list[tuple[tuple[str, ...], int]]] = {}  # name -> [(file_name parts, id)]
        for im in gt["images"]:
            parts = _path_parts(str(im.get("file_name", "")))
            if parts:
                self._by_basename.setdefault(parts[-1], []).append((parts, int(im["id"])))
        self._chunks: list[np.ndarray] = []  # (n, 7) rows [image_id, x, y, w, h, score, category_id]
        self.seen_ids: set[int] = set()

    def image_id(self, file: str | Path) -> int:
        """GT image id of an image file, matched by file name (see the module docstring).

        Raises CocoFormatError when no GT image has that name, or when several do and their
        ``file_name`` paths do not single out one.
        """
        parts = _path_parts(os.path.abspath(file))
        found = self._by_basename.get(parts[-1], [])
        if len(found) == 1:
            return found[0][1]
        if not found:
            raise CocoFormatError(f"image {parts[-1]} is not in the COCO ground truth")
        hits = [i for gt_parts, i in found if parts[-len(gt_parts):] == gt_parts]
        if len(hits) == 1:
            return hits[0]
        names = ", ".join(sorted("/".join(p) for p, _ in found))
        raise CocoFormatError(f"image {file}: the COCO ground truth has {len(found)} images named {parts[-1]} "
                              f"({names}) and their file_name paths do not say which one this is (give each "
                              "file_name its folder, e.g. seq1/000001.jpg)")

    def add(self, image_id: int, boxes_xyxy: torch.Tensor | np.ndarray, scores: torch.Tensor | np.ndarray,
            classes: torch.Tensor | np.ndarray) -> None:
        """Add the detections of one image (may be empty; the image then counts as seen).

        Args:
            image_id: GT image id.
            boxes_xyxy: (n, 4) ``x1, y1, x2, y2`` in original image pixels.
            scores: (n,) confidence.
            classes: (n,) class index (mapped to the category id here).
        """
        self.seen_ids.add(int(image_id))
        b, s, c = _as_numpy(boxes_xyxy).reshape(-1, 4), _as_numpy(scores).reshape(-1), _as_numpy(classes).reshape(-1)
        if not len(b):
            return
        ci = c.astype(np.int64)
        if ci.min() < 0 or ci.max() >= len(self._cat_lut):
            raise ValueError(f"class index {int(ci.max())} out of range for {len(self._cat_lut)} categories")
        rows = np.empty((len(b), 7))
        rows[:, 0] = image_id
        rows[:, 1:3] = b[:, :2]
        rows[:, 3:5] = b[:, 2:] - b[:, :2]
        rows[:, 5] = s
        rows[:, 6] = self._cat_lut[ci]
        self._chunks.append(rows)

    def add_results(self, results: list[dict]) -> None:
        """Add detections already in COCO results format (category ids, ``bbox`` xywh)."""
        if not results:
            return
        # tuples, not lists: numpy converts them about 2.5x faster (matters at 500k detections)
        with gc_paused():
            rows = np.array([(r["image_id"], *r["bbox"], r["score"], r["category_id"]) for r in results], np.float64)
        self._chunks.append(rows)

    @property
    def num_detections(self) -> int:
        """Number of detections added so far."""
        return sum(len(c) for c in self._chunks)

    def results(self, decimals: int | None = None) -> list[dict]:
        """All detections as COCO results dicts ``{image_id, category_id, bbox [x, y, w, h], score}``."""
        if not self._chunks:
            return []
        rows = np.concatenate(self._chunks, 0)
        boxes = rows[:, 1:5] if decimals is None else rows[:, 1:5].round(decimals)
        scores = rows[:, 5] if decimals is None else rows[:, 5].round(decimals + 2)
        return [{"image_id": int(i), "category_id": int(c), "bbox": b, "score": s}
                for i, c, b, s in zip(rows[:, 0].tolist(), rows[:, 6].tolist(), boxes.tolist(), scores.tolist())]

    def _detection_dataset(self) -> dict:
        """The detections as a COCO dataset dict, built directly rather than via ``loadRes``.

        ``loadRes`` also adds a polygon per box (never read by box evaluation) and costs as
        much as the evaluation itself on 500k detections; ids, areas and iscrowd are the same.
        """
        anns: list[dict] = []
        if self._chunks:
            rows = np.concatenate(self._chunks, 0)
            gt_ids = np.array([int(im["id"]) for im in self.gt["images"]])
            unknown = ~np.isin(rows[:, 0].astype(np.int64), gt_ids)
            if unknown.any():
                bad = int(rows[unknown, 0][0])
                raise CocoFormatError(f"detections refer to image id {bad}, which is not in the ground truth")
            cols = (rows[:, 0].astype(np.int64).tolist(), rows[:, 6].astype(np.int64).tolist(),
                    rows[:, 1:5].tolist(), rows[:, 5].tolist(), (rows[:, 3] * rows[:, 4]).tolist())
            anns = [{"id": k, "image_id": i, "category_id": c, "bbox": b, "score": sc, "area": a, "iscrowd": 0}
                    for k, (i, c, b, sc, a) in enumerate(zip(*cols), 1)]
        return {"images": self.gt["images"], "categories": self.gt["categories"], "annotations": anns}

    def save_json(self, path: str | Path) -> Path:
        """Write the detections as a COCO results JSON (boxes to 3 decimals, scores to 5)."""
        path = Path(path)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.results(decimals=3), f)
        return path

    def gt_counts(self, img_ids: Iterable[int] | None = None) -> dict[str, int]:
        """Number of non-crowd GT boxes in each size bin (COCO bins, then the extra ones)."""
        keep = None if img_ids is None else set(img_ids)
        areas = np.array([float(a["area"]) for a in self.gt["annotations"]
                          if not a.get("iscrowd", 0) and (keep is None or int(a["image_id"]) in keep)])
        ranges = {**COCO_RANGES, **self.area_ranges}
        return {k: int(((areas >= lo) & (areas < hi)).sum()) if areas.size else 0 for k, (lo, hi) in ranges.items()}

    def summarize(self, img_ids: Iterable[int] | None = None) -> dict[str, float]:
        """Run the COCO evaluation; returns :func:`coco_keys` (of ``max_dets``) plus ``AP_<name>``/``AR_<name>``
        per extra bin.

        Args:
            img_ids: evaluate only these GT images (e.g. the images of the val split);
                None = every GT image. GT images without detections count as missed.

        A figure COCO leaves undefined (-1: no GT in that bin) is reported as 0.0.
        """
        from faster_coco_eval import COCO, COCOeval_faster  # heavy C++ extension: load on first use

        keys = [*coco_keys(self.max_dets), *(f"{p}_{n}" for n in self.area_ranges for p in ("AP", "AR"))]
        ids = None if img_ids is None else sorted(set(int(i) for i in img_ids))
        if ids == [] or not self.gt["images"]:
            return dict.fromkeys(keys, 0.0)
        # the library annotates GT dicts in place; give it copies so self.gt stays clean
        gt = {**self.gt, "annotations": [dict(a) for a in self.gt["annotations"]]}
        ranges = {k: list(v) for k, v in {**COCO_RANGES, **self.area_ranges}.items()}
        dets = max_dets_list(self.max_dets)
        with contextlib.redirect_stdout(io.StringIO()), gc_paused():
            coco_gt = COCO(gt, print_function=_silent)
            coco_dt = COCO(self._detection_dataset(), print_function=_silent)
            ev = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", ranges=ranges, print_function=_silent)
            ev.params.maxDets = dets
            if ids is not None:
                ev.params.imgIds = ids
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        lib = ev.stats_as_dict
        out = {k: lib[_lib_key(k, dets)] for k in coco_keys(self.max_dets)}
        for n in self.area_ranges:
            out[f"AP_{n}"], out[f"AR_{n}"] = lib[f"AP_{n}"], lib[f"AR_{n}"]
        return {k: max(float(v), 0.0) for k, v in out.items()}


def format_coco_table(stats: dict[str, float], gt_counts: dict[str, int] | None = None) -> str:
    """The COCO figures as a two-block text table (AP row, AR row), extra bins beside the COCO ones,
    and the maxDets they were computed with."""
    extras = [k[3:] for k in stats if k.startswith("AP_")]
    max_dets = max_dets_of(stats)
    ap_keys = ["AP", "AP50", "AP75", "APs", "APm", "APl", *(f"AP_{n}" for n in extras)]
    ar_keys = [*(f"AR{d}" for d in max_dets_list(max_dets)), "ARs", "ARm", "ARl", *(f"AR_{n}" for n in extras)]
    width = max(9, *(len(k) + 2 for k in ap_keys + ar_keys))
    lines = []
    for label, ks in (("COCO", ap_keys), ("", ar_keys)):
        lines.append(f"{label:>8}" + "".join(f"{k:>{width}}" for k in ks))
        lines.append(" " * 8 + "".join(f"{stats.get(k, 0.0):>{width}.3f}" for k in ks))
    default = " (COCO's)" if max_dets == COCO_MAX_DETS else f" per image (COCO's is {COCO_MAX_DETS})"
    lines.append(" " * 8 + f"maxDets {max_dets}{default}: AP and the size bins count the top {max_dets} detections")
    if gt_counts:
        lines.append(" " * 8 + "objects per size bin: " + ", ".join(f"{k} {v}" for k, v in gt_counts.items()))
    return "\n".join(lines)


def evaluate_files(gt_json: str | Path, pred_json: str | Path,
                   area_ranges: dict[str, tuple[float, float]] | None = None,
                   max_dets: int = COCO_MAX_DETS) -> tuple[dict[str, float], CocoEvaluator]:
    """Evaluate an existing COCO results file against a COCO GT file (every GT image counts)."""
    gt = load_coco_gt(gt_json)
    evaluator = CocoEvaluator(gt, area_ranges, max_dets=max_dets)
    evaluator.add_results(load_coco_results(pred_json, gt))
    return evaluator.summarize(), evaluator
