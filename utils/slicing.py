"""Whole-frame and sliced (SAHI-style) inference on one BGR image.

Sliced inference cuts a large frame into overlapping square tiles, runs the tiles through the
model in batches, maps every tile's boxes back to the frame, optionally adds a pass over the
whole frame at model size (for objects larger than a tile), and merges the duplicates that
tiles' overlaps produce. Small objects gain because each tile reaches the model at (close to)
full resolution instead of being shrunk with the whole frame.

All detections returned here are (n, 6) float tensors ``[x1, y1, x2, y2, conf, cls]`` in pixels
of the original image, sorted by confidence.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torchvision.ops import batched_nms

from utils.data.augment import letterbox
from utils.boxes import clip_boxes, scale_boxes
from utils.nms import non_max_suppression
from utils.torch_utils import model_device, time_sync
from utils.tta import tta_predict
from utils.errors import ConfigError

MERGE_MODES = ("nms", "nmm")
MATCH_METRICS = ("ios", "iou")


def tile_coordinates(img_w: int, img_h: int, slice_size: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """Corners ``(x1, y1, x2, y2)`` (pixels, x2/y2 exclusive) of tiles covering an image.

    Tiles are ``slice_size`` square and step by ``floor(slice_size * (1 - overlap))``, so two
    neighbours overlap by at least ``overlap * slice_size``; the last row and column are moved
    flush with the bottom/right border (overlapping their neighbour more) instead of hanging
    over it. A side shorter than ``slice_size`` gets a single tile of that side's length.
    Order: row by row, left to right.
    """
    if slice_size < 1:
        raise ConfigError(f"slice size must be a positive number of pixels, got {slice_size}")
    if not 0 <= overlap < 1:
        raise ConfigError(f"slice overlap must be in [0, 1), got {overlap}")
    step = max(int(slice_size * (1 - overlap)), 1)

    def starts(length: int) -> list[int]:
        if length <= slice_size:
            return [0]
        return [*range(0, length - slice_size, step), length - slice_size]

    return [(x, y, min(x + slice_size, img_w), min(y + slice_size, img_h))
            for y in starts(img_h) for x in starts(img_w)]


def to_tensor(imgs: list[np.ndarray], device: torch.device, half: bool = False) -> torch.Tensor:
    """Same-size HxWx3 uint8 BGR images -> (B, 3, H, W) RGB float in [0, 1] on ``device``."""
    x = torch.from_numpy(np.ascontiguousarray(np.stack(imgs)[..., ::-1].transpose(0, 3, 1, 2)))
    x = x.to(device, non_blocking=True)
    return (x.half() if half else x.float()) / 255


def _model_device_stride(model: nn.Module) -> tuple[torch.device, int]:
    stride = int(model.stride.max()) if hasattr(model, "stride") else 32
    return model_device(model), stride


def _model_predict(model: nn.Module, x: torch.Tensor, augment: bool,
                   conf_thres: float) -> list[torch.Tensor]:
    """Per-image float32 rows (n_i, 5 + nc) [cx, cy, w, h (input px), obj, cls...] for NMS.

    Without TTA only the rows that can pass NMS at ``conf_thres`` are decoded (the head's
    ``decode_candidates``): at detect-time thresholds that is a few hundred of ~100k anchors.
    """
    with torch.inference_mode():
        if augment:
            return list(tta_predict(model, x)[1].float())
        head = getattr(model, "detect", None)
        if hasattr(head, "decode_candidates"):
            return [p.float() for p in head.decode_candidates(model(x), conf_thres)]
        return list(model.predict(x).float())


def _add_times(times: list[float] | None, *dt: float) -> None:
    if times is not None:
        for i, t in enumerate(dt):
            times[i] += t


def predict_image(model: nn.Module, img_bgr: np.ndarray, imgsz: int | tuple[int, int],
                  conf_thres: float = 0.25, iou_thres: float = 0.45, max_det: int = 300,
                  classes: list[int] | None = None, agnostic: bool = False, half: bool = False,
                  augment: bool = False, times: list[float] | None = None) -> torch.Tensor:
    """Whole-frame inference: letterbox to ``imgsz`` (h, w or square), predict, NMS, map back.

    The frame is letterboxed to a rectangle padded only to the stride (YOLOv5 detect.py), so a
    16:9 frame costs about 16:9 of a square. ``times`` (if given, 3 floats) accumulates
    seconds spent in pre-process, inference and NMS. Returns (n, 6) in ``img_bgr`` pixels.
    """
    device, stride = _model_device_stride(model)
    t0 = time_sync()
    img, (rw, rh), pad = letterbox(img_bgr, imgsz, auto=True, stride=stride)
    x = to_tensor([img], device, half)
    t1 = time_sync()
    pred = _model_predict(model, x, augment, conf_thres)
    t2 = time_sync()
    det = non_max_suppression(pred, conf_thres, iou_thres, classes, agnostic, max_det)[0]
    scale_boxes(x.shape[2:], det[:, :4], img_bgr.shape[:2], ((rh, rw), pad))
    _add_times(times, t1 - t0, t2 - t1, time_sync() - t2)
    return det


def _match_scores(box: np.ndarray, boxes: np.ndarray, metric: str) -> np.ndarray:
    """IoU or IoS (intersection over the smaller area) of one xyxy box with (n, 4) boxes -> (n,)."""
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iw * ih
    a = (box[2] - box[0]) * (box[3] - box[1])
    b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    denom = np.minimum(a, b) if metric == "ios" else a + b - inter
    return inter / np.maximum(denom, 1e-9)


def greedy_nmm(det: torch.Tensor, match_thres: float = 0.5, match_metric: str = "ios",
               agnostic: bool = False) -> torch.Tensor:
    """Greedy non-maximum merging of (n, 6) ``[x1, y1, x2, y2, conf, cls]`` detections.

    In descending confidence, each box not yet merged is kept, and every remaining box of the
    same class (any class if ``agnostic``) whose IoS/IoU with it exceeds ``match_thres`` is merged
    into it: the kept box grows to the union of the group and keeps the highest confidence.
    Unlike NMS, an object cut in two by a tile edge comes out as one whole box. Matching is
    against the kept box as first seen, one pass (SAHI's greedy NMM). Returns (m, 6), m <= n.
    """
    if match_metric not in MATCH_METRICS:
        raise ConfigError(f"match metric must be one of {MATCH_METRICS}, got '{match_metric}'")
    if det.shape[0] < 2:
        return det
    order = det[:, 4].argsort(descending=True)
    det = det[order]
    d = det.detach().cpu().double().numpy()  # a loop over kept boxes: cheaper on CPU arrays
    alive = np.ones(len(d), dtype=bool)
    keep, merged = [], []
    for i in range(len(d)):
        if not alive[i]:
            continue
        alive[i] = False
        cand = np.flatnonzero(alive if agnostic else alive & (d[:, 5] == d[i, 5]))
        group = cand[_match_scores(d[i, :4], d[cand, :4], match_metric) > match_thres]
        alive[group] = False
        box = d[np.append(group, i), :4]
        keep.append(i)
        merged.append([*box[:, :2].min(0), *box[:, 2:].max(0)])
    out = det[keep].clone()
    out[:, :4] = torch.tensor(merged, dtype=out.dtype, device=out.device)
    return out


def merge_detections(det: torch.Tensor, merge: str = "nms", iou_thres: float = 0.45,
                     agnostic: bool = False, match_metric: str = "ios") -> torch.Tensor:
    """Remove the duplicates that overlapping tiles (and the full-frame pass) produce.

    ``merge='nms'``: class-aware NMS at ``iou_thres``; ``'nmm'``: :func:`greedy_nmm` with
    ``match_metric`` at threshold ``iou_thres``. Returns (m, 6) sorted by confidence.
    """
    if merge not in MERGE_MODES:
        raise ConfigError(f"merge must be one of {MERGE_MODES}, got '{merge}'")
    if det.shape[0] == 0:
        return det
    if merge == "nmm":
        return greedy_nmm(det, iou_thres, match_metric, agnostic)
    groups = torch.zeros_like(det[:, 5]) if agnostic else det[:, 5]
    return det[batched_nms(det[:, :4], det[:, 4], groups, iou_thres)]


def _predict_tiles(model: nn.Module, img_bgr: np.ndarray, tiles: list[tuple[int, int, int, int]],
                   imgsz: int, batch_size: int, nms_args: dict, half: bool, augment: bool,
                   times: list[float] | None) -> list[torch.Tensor]:
    """Per-tile detections (n, 6) in frame pixels, the tiles run ``batch_size`` at a time."""
    device, _ = _model_device_stride(model)
    out = []
    for b in range(0, len(tiles), batch_size):
        t0 = time_sync()
        batch = tiles[b:b + batch_size]
        boxed = [letterbox(img_bgr[y1:y2, x1:x2], imgsz) for x1, y1, x2, y2 in batch]
        x = to_tensor([im for im, _, _ in boxed], device, half)
        t1 = time_sync()
        pred = _model_predict(model, x, augment, nms_args["conf_thres"])
        t2 = time_sync()
        dets = non_max_suppression(pred, **nms_args)
        for det, (x1, y1, x2, y2), (_, (rw, rh), pad) in zip(dets, batch, boxed):
            scale_boxes(x.shape[2:], det[:, :4], (y2 - y1, x2 - x1), ((rh, rw), pad))
            det[:, [0, 2]] += x1  # tile -> frame: the tile offset, exactly
            det[:, [1, 3]] += y1
            out.append(det)
        _add_times(times, t1 - t0, t2 - t1, time_sync() - t2)
    return out


def sliced_predict(model: nn.Module, img_bgr: np.ndarray, slice_size: int, overlap: float, imgsz: int,
                   conf_thres: float = 0.25, iou_thres: float = 0.45, max_det: int = 300,
                   full_frame: bool = True, batch_size: int = 8, merge: str = "nms",
                   classes: list[int] | None = None, agnostic: bool = False, half: bool = False,
                   *, match_metric: str = "ios", augment: bool = False,
                   times: list[float] | None = None) -> torch.Tensor:
    """Sliced inference on one frame.

    Args:
        model: a DetectionModel in eval mode (``predict(x)`` -> (B, N, 5 + nc) decoded, and
            ``stride``); already ``.half()`` when ``half``.
        img_bgr: HxWx3 uint8 BGR frame at its original size.
        slice_size: tile side in frame pixels; overlap: fraction of a tile shared by neighbours.
        imgsz: the side each (square) tile is letterboxed to; also the full-frame size.
        conf_thres, iou_thres, max_det, classes, agnostic: as in ``non_max_suppression``; applied
            per tile, and ``iou_thres`` / ``max_det`` again when merging.
        full_frame: also run the whole frame at ``imgsz`` and merge its boxes in (skipped when
            a single tile covers the frame).
        batch_size: tiles per forward pass.
        merge: 'nms' or 'nmm' (greedy non-maximum merging, ``match_metric`` 'ios' or 'iou').
        augment: test-time augmentation on every pass.
        times: if given, 3 floats accumulating pre-process, inference and NMS seconds.

    Returns:
        (n, 6) ``[x1, y1, x2, y2, conf, cls]`` in frame pixels, n <= max_det, by confidence.
    """
    if merge not in MERGE_MODES:
        raise ConfigError(f"merge must be one of {MERGE_MODES}, got '{merge}'")
    h, w = img_bgr.shape[:2]
    tiles = tile_coordinates(w, h, slice_size, overlap)
    nms_args = dict(conf_thres=conf_thres, iou_thres=iou_thres, classes=classes, agnostic=agnostic,
                    max_det=max_det)
    dets = _predict_tiles(model, img_bgr, tiles, imgsz, max(batch_size, 1), nms_args, half, augment, times)
    if full_frame and len(tiles) > 1:  # one tile already is the whole frame
        dets.append(predict_image(model, img_bgr, imgsz, half=half, augment=augment, times=times, **nms_args))
    t0 = time_sync()
    det = torch.cat(dets, 0)
    clip_boxes(det[:, :4], (h, w))
    det = merge_detections(det, merge, iou_thres, agnostic, match_metric)
    det = det[det[:, 4].argsort(descending=True)[:max_det]]
    _add_times(times, 0.0, 0.0, time_sync() - t0)
    return det
