"""YOLO txt prediction files: one row ``cls cx cy w h [conf]`` per detection, normalized.

The single writer of this format for both val.py (``--save-txt``, labels/<stem>.txt per image)
and detect.py (per image or video frame), so the two always produce files the other tools
(and YOLOv5 label readers) parse the same way.
"""

from __future__ import annotations

from pathlib import Path

import torch

from utils.boxes import xyxy2xywhn


def yolo_txt_lines(det: torch.Tensor, shape_hw: tuple[int, int], save_conf: bool = False) -> list[str]:
    """Rows of a YOLO txt file for the detections of one image.

    Args:
        det: (n, 6) ``[x1, y1, x2, y2, conf, cls]`` in pixels of the original image.
        shape_hw: original image (height, width), the normalization of the box columns.
        save_conf: append the confidence as a sixth column.

    Returns:
        n strings ``"cls cx cy w h"`` (+ ``" conf"``) without newline; ``%g`` numbers as YOLOv5
        writes them, so the files round-trip through any float parser.
    """
    det = det.detach().float().cpu().reshape(-1, 6)
    h, w = shape_hw
    xywhn = xyxy2xywhn(det[:, :4].clone(), w=w, h=h)
    lines = []
    for box, conf, cls in zip(xywhn.tolist(), det[:, 4].tolist(), det[:, 5].tolist()):
        vals = (int(cls), *box, conf) if save_conf else (int(cls), *box)
        lines.append(" ".join("%g" % v for v in vals))
    return lines


def write_yolo_txt(path: str | Path, det: torch.Tensor, shape_hw: tuple[int, int], save_conf: bool = False) -> Path:
    """Write :func:`yolo_txt_lines` to ``path`` (an empty file when there are no detections)."""
    path = Path(path)
    path.write_text("".join(line + "\n" for line in yolo_txt_lines(det, shape_hw, save_conf)), encoding="utf-8")
    return path
