"""Non-maximum suppression on decoded YOLO predictions (torchvision's batched NMS underneath)."""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms

from utils.boxes import xywh2xyxy
from utils.errors import ConfigError


def non_max_suppression(pred: torch.Tensor | list[torch.Tensor], conf_thres: float = 0.25,
                        iou_thres: float = 0.45, classes: list[int] | None = None, agnostic: bool = False,
                        max_det: int = 300, multi_label: bool = False, max_nms: int = 30000) -> list[torch.Tensor]:
    """Filter (B, N, 5 + nc) predictions [cx, cy, w, h, obj, cls...] (sigmoided) per image.

    ``pred`` may also be a list of per-image (n_i, 5 + nc) tensors, e.g. the candidate rows of
    ``decode_candidates`` (images then need no padding to a common N).

    Score = obj * cls. ``multi_label`` keeps every class above ``conf_thres`` for a box (used for
    mAP evaluation), otherwise only the best class. Returns per image a (n, 6) tensor
    [x1, y1, x2, y2, conf, cls] sorted by confidence, at most ``max_det`` rows.
    """
    if not 0 <= conf_thres <= 1 or not 0 <= iou_thres <= 1:
        raise ConfigError(f"conf_thres {conf_thres} and iou_thres {iou_thres} must be within [0, 1]")
    out = []
    for x in pred:
        x = x[x[:, 4] > conf_thres]
        if not x.shape[0]:
            out.append(torch.zeros((0, 6), device=x.device))
            continue
        scores = x[:, 5:] * x[:, 4:5]
        boxes = xywh2xyxy(x[:, :4])
        if multi_label:
            i, j = (scores > conf_thres).nonzero(as_tuple=True)
            det = torch.cat((boxes[i], scores[i, j, None], j[:, None].float()), 1)
        else:
            conf, j = scores.max(1, keepdim=True)
            det = torch.cat((boxes, conf, j.float()), 1)[conf.view(-1) > conf_thres]
        if classes is not None:
            det = det[(det[:, 5:6] == torch.tensor(classes, device=det.device)).any(1)]
        if det.shape[0] > max_nms:
            det = det[det[:, 4].argsort(descending=True)[:max_nms]]
        groups = torch.zeros_like(det[:, 5]) if agnostic else det[:, 5]
        keep = batched_nms(det[:, :4], det[:, 4], groups, iou_thres)[:max_det]
        out.append(det[keep])
    return out
