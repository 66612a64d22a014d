"""AutoAnchor: check how well the anchors fit the labels and recompute them when they don't.

The fit is YOLOv5's ratio metric: a label of size (w, h) matches an anchor (aw, ah) when
max(w/aw, aw/w, h/ah, ah/h) < thr (the ``anchor_t`` hyperparameter), which is exactly when the
loss's target assignment can use that anchor. Best possible recall (BPR) is the fraction of
labels that match at least one anchor of the model. When BPR < 0.98, new anchors are computed by
k-means with distance 1 - IoU (YOLOv2; boxes aligned at the origin) and refined by a genetic
(mutation) search on YOLOv5's anchor fitness. All sizes are in pixels of the training image.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

BPR_OK = 0.98  # YOLOv5's threshold: above it the anchors are kept as they are
MIN_WH_PX = 2.0  # labels under 2 px are degenerate and would drag the small anchors down
PREFIX = "AutoAnchor: "


def _ratio_metric(anchors: np.ndarray, wh: np.ndarray) -> np.ndarray:
    """(N, k) match quality in (0, 1]: min over w and h of min(r, 1/r), r = label / anchor."""
    r = wh[:, None, :] / anchors[None, :, :]
    return np.minimum(r, 1 / r).min(2)


def anchor_bpr(anchors_px: np.ndarray | torch.Tensor, wh_px: np.ndarray | torch.Tensor,
               thr: float) -> tuple[float, float]:
    """Best possible recall of ``anchors_px`` (k, 2) [w, h] for labels ``wh_px`` (N, 2) [w, h].

    Returns (bpr, anchors_above_thr): the fraction of labels whose best anchor is within the
    ratio ``thr`` in both w and h, and the mean number of anchors within ``thr`` per label.
    """
    a = np.asarray(torch.as_tensor(anchors_px).detach().cpu().reshape(-1, 2), dtype=np.float64)
    wh = np.asarray(torch.as_tensor(wh_px).detach().cpu(), dtype=np.float64).reshape(-1, 2)
    if not len(wh):
        return 0.0, 0.0
    x = _ratio_metric(a, wh)
    bpr = float((x.max(1) > 1 / thr).mean())
    aat = float((x > 1 / thr).sum(1).mean())
    return bpr, aat


def anchor_fitness(anchors: np.ndarray, wh: np.ndarray, thr: float) -> float:
    """YOLOv5 fitness: mean over labels of the best anchor's ratio metric, 0 where it fails thr."""
    best = _ratio_metric(anchors, wh).max(1)
    return float((best * (best > 1 / thr)).mean())


def _iou_origin(wh: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(N, k) IoU of boxes of sizes ``wh`` and ``centroids``, both placed at the origin (YOLOv2)."""
    inter = np.minimum(wh[:, None, 0], centroids[None, :, 0]) * np.minimum(wh[:, None, 1], centroids[None, :, 1])
    union = wh.prod(1)[:, None] + centroids.prod(1)[None, :] - inter
    return inter / union


def _kmeans_pp_init(wh: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding with distance 1 - IoU: each new centroid drawn with prob ~ distance^2."""
    centroids = [wh[rng.integers(len(wh))]]
    for _ in range(1, n):
        d = (1 - _iou_origin(wh, np.array(centroids))).min(1) ** 2
        p = d / d.sum() if d.sum() > 0 else np.full(len(wh), 1 / len(wh))
        centroids.append(wh[rng.choice(len(wh), p=p)])
    return np.array(centroids, dtype=np.float64)


def _kmeans_iou(wh: np.ndarray, n: int, rng: np.random.Generator, iters: int = 300) -> np.ndarray:
    """Lloyd iterations with distance 1 - IoU; centroids are the mean w, h of their cluster."""
    k = _kmeans_pp_init(wh, n, rng)
    assign = None
    for _ in range(iters):
        dist = 1 - _iou_origin(wh, k)
        new_assign = dist.argmin(1)
        if assign is not None and np.array_equal(new_assign, assign):
            break
        assign = new_assign
        for j in range(n):
            members = wh[assign == j]
            # an empty cluster restarts at the worst-fitting label so all n anchors stay useful
            k[j] = members.mean(0) if len(members) else wh[dist.min(1).argmax()]
    return k


def _evolve(k: np.ndarray, wh: np.ndarray, thr: float, gen: int, imgsz: int,
            rng: np.random.Generator, verbose: bool) -> np.ndarray:
    """Genetic refinement (YOLOv5): mutate all anchors by up to ~+-30%, keep a mutant if fitter."""
    mp, sigma = 0.9, 0.1  # mutation probability per value, mutation scale
    best_f = anchor_fitness(k, wh, thr)
    bar = tqdm(range(gen), desc=f"{PREFIX}evolving anchors", disable=not verbose)
    for _ in bar:
        v = np.ones_like(k)
        while (v == 1).all():  # a mutation must change at least one value
            v = ((rng.random(k.shape) < mp) * rng.random(k.shape) * rng.standard_normal(k.shape) * sigma + 1)
            v = v.clip(0.3, 3.0)
        kg = (k * v).clip(MIN_WH_PX, imgsz)
        f = anchor_fitness(kg, wh, thr)
        if f > best_f:
            best_f, k = f, kg
            bar.set_description(f"{PREFIX}evolving anchors, fitness {best_f:.4f}")
    return k


def kmean_anchors(wh_px: np.ndarray | torch.Tensor, n: int = 9, imgsz: int = 640, thr: float = 4.0,
                  gen: int = 1000, seed: int = 0, verbose: bool = True) -> np.ndarray:
    """Compute ``n`` anchors for label sizes ``wh_px`` (N, 2) [w, h] in training-image pixels.

    k-means (distance 1 - IoU, k-means++ init) followed by ``gen`` generations of mutation that
    maximise :func:`anchor_fitness` at ``thr``. Labels under 2 px are ignored; anchors are kept
    within [2, imgsz] px. Returns float32 (n, 2) [w, h] in pixels, sorted by area, small first.
    Raises ValueError when there are fewer usable labels than anchors.
    """
    wh = np.asarray(torch.as_tensor(wh_px).detach().cpu(), dtype=np.float64).reshape(-1, 2)
    wh = wh[(wh >= MIN_WH_PX).all(1)]
    if len(np.unique(wh, axis=0)) < n:
        raise ValueError(f"need at least {n} distinct label sizes >= {MIN_WH_PX:g} px "
                         f"to compute {n} anchors, got {len(np.unique(wh, axis=0))}")
    rng = np.random.default_rng(seed)
    k = _kmeans_iou(wh, n, rng)
    k = _evolve(k, wh, thr, gen, imgsz, rng, verbose)
    k = k[np.argsort(k.prod(1))]
    return k.astype(np.float32)


def label_wh_px(labels: list[np.ndarray], shapes_wh: np.ndarray, imgsz: int) -> np.ndarray:
    """Label sizes in training-image pixels, (N, 2) [w, h].

    Args:
        labels: per image (n, 5) [cls, cx, cy, w, h] normalized (``dataset.labels``).
        shapes_wh: (num_images, 2) original [w, h] (``dataset.shapes``); images are resized so
            their long side is ``imgsz``, as the data pipeline does.
    """
    shapes = np.asarray(shapes_wh, dtype=np.float64).reshape(-1, 2)
    shapes = imgsz * shapes / shapes.max(1, keepdims=True)  # long side -> imgsz
    whs = [np.asarray(lb, dtype=np.float64)[:, 3:5] * s for lb, s in zip(labels, shapes) if len(lb)]
    return np.concatenate(whs, 0) if whs else np.zeros((0, 2))


def _format(anchors: np.ndarray) -> str:
    return ", ".join(f"{w:.1f},{h:.1f}" for w, h in anchors.reshape(-1, 2))


def check_anchors(model: nn.Module, labels_wh_px: np.ndarray | torch.Tensor, thr: float = 4.0,
                  imgsz: int = 640, verbose: bool = True, gen: int = 1000, seed: int = 0,
                  force: bool = False) -> dict:
    """Check the model's anchors against the labels and replace them when BPR < 0.98.

    Args:
        model: a DetectionModel (or a wrapper with ``.module``); its ``detect.anchors`` buffer is
            (nl, na, 2) [w, h] in input pixels, P2 (smallest stride) first.
        labels_wh_px: (N, 2) label [w, h] in training-image pixels, without jitter (see
            :func:`label_wh_px`); YOLOv5's random 0.9-1.1 scale jitter is applied here.
        thr: ratio threshold (hyp ``anchor_t``).
        force: recompute even when BPR is high (for YAMLs that give only an anchor count).

    New anchors (nl * na, sorted by area and split small to large across levels) are written into
    ``model.detect.anchors`` only when they raise BPR (with ``force``: also at equal BPR and a
    higher fitness). The buffer is updated in place, so a checkpoint saved afterwards holds them.
    Returns
    ``{'bpr_before': float, 'bpr_after': float, 'recomputed': bool}``; ``recomputed`` is True when
    the model's anchors were replaced. A head without anchors is skipped (BPR values are NaN).
    """
    detect = getattr(model, "module", model).detect
    if not hasattr(detect, "anchors"):  # anchor-free head (DecoupledDetect): nothing to fit
        _log(verbose, f"{type(detect).__name__} has no anchors, skipping the anchor check")
        return {"bpr_before": float("nan"), "bpr_after": float("nan"), "recomputed": False}
    anchors = detect.anchors  # (nl, na, 2)
    wh0 = np.asarray(torch.as_tensor(labels_wh_px).detach().cpu(), dtype=np.float64).reshape(-1, 2)
    rng = np.random.default_rng(seed)
    wh = wh0 * rng.uniform(0.9, 1.1, size=(len(wh0), 1))  # augment scale jitter
    bpr, aat = anchor_bpr(anchors, wh, thr)
    _log(verbose, f"{aat:.2f} anchors/target, Best Possible Recall (BPR) = {bpr:.4f}")
    result = {"bpr_before": bpr, "bpr_after": bpr, "recomputed": False}
    if bpr >= BPR_OK and not force:
        _log(verbose, "current anchors are a good fit to the dataset")
        return result
    nl, na = anchors.shape[:2]
    _log(verbose, f"computing {nl * na} anchors for {nl} levels (thr={thr:g}, imgsz={imgsz})")
    try:
        new = kmean_anchors(wh0, nl * na, imgsz, thr, gen=gen, seed=seed, verbose=verbose)
    except ValueError as e:
        _log(verbose, f"{e}; keeping the original anchors")
        return result
    new_bpr, _ = anchor_bpr(new, wh, thr)
    # forced (count-only anchors): BPR may already be 1, so accept a better fit at equal BPR
    better_fit = anchor_fitness(new, wh, thr) > anchor_fitness(anchors.cpu().numpy().reshape(-1, 2), wh, thr)
    if new_bpr > bpr or (force and new_bpr >= bpr and better_fit):
        with torch.no_grad():
            anchors.copy_(torch.as_tensor(new, dtype=anchors.dtype, device=anchors.device).view(nl, na, 2))
        result.update(bpr_after=new_bpr, recomputed=True)
        _log(verbose, f"new anchors (w,h px, small to large) BPR = {new_bpr:.4f}: {_format(new)}")
    else:
        _log(verbose, f"computed anchors (BPR = {new_bpr:.4f}) are no better; keeping the original anchors")
    return result


def _log(verbose: bool, msg: str) -> None:
    if verbose:
        print(f"{PREFIX}{msg}")
