"""Drawing detections on BGR images with OpenCV, and saving box crops.

Boxes everywhere in this file are ``xyxy`` in pixels of the image they are drawn on.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import cv2
import numpy as np
import torch


def class_color(cls: int) -> tuple[int, int, int]:
    """A stable, distinct BGR colour for class index ``cls``.

    Hues step by the golden ratio so neighbouring class ids get far-apart colours for any
    number of classes; saturation and value alternate a little to separate hue collisions.
    """
    hue = (cls * 0.618033988749895) % 1.0
    sat = 0.85 if cls % 2 == 0 else 0.65
    val = 0.95 if (cls // 2) % 2 == 0 else 0.8
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return int(b * 255), int(g * 255), int(r * 255)


def class_name(names, c: int) -> str:
    """The name of class ``c``, or its number when ``names`` has no entry for it."""
    return str(names[c]) if 0 <= c < len(names) else str(c)


def default_line_width(img_shape: tuple[int, ...]) -> int:
    """Line width that stays visible on 4K frames and thin on small ones (YOLOv5's rule)."""
    return max(round(sum(img_shape[:2]) / 2 * 0.003), 2)


def _text_color(bg: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on background ``bg`` (BGR)."""
    luma = 0.114 * bg[0] + 0.587 * bg[1] + 0.299 * bg[2]
    return (0, 0, 0) if luma > 150 else (255, 255, 255)


def box_label(img: np.ndarray, xyxy, label: str, color: tuple[int, int, int], lw: int) -> None:
    """Draw one box and, when ``label`` is not empty, its label on ``img`` (HxWx3 BGR, in place).

    The label sits on a filled bar above the box, or inside the box when the box touches the
    top border, so it never leaves the image.
    """
    p1 = (int(xyxy[0]), int(xyxy[1]))
    p2 = (int(xyxy[2]), int(xyxy[3]))
    cv2.rectangle(img, p1, p2, color, thickness=lw, lineType=cv2.LINE_AA)
    if not label:
        return
    font_thickness = max(lw - 1, 1)
    scale = lw / 3
    (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, font_thickness)
    outside = p1[1] - th - 3 >= 0  # room for the bar above the box?
    bar_p2 = (p1[0] + tw, p1[1] - th - 3 if outside else p1[1] + th + 3)
    cv2.rectangle(img, p1, bar_p2, color, -1, cv2.LINE_AA)
    text_org = (p1[0], p1[1] - 2 if outside else p1[1] + th + 2)
    cv2.putText(img, label, text_org, cv2.FONT_HERSHEY_SIMPLEX, scale, _text_color(color),
                font_thickness, cv2.LINE_AA)


def draw_detections(img: np.ndarray, det: torch.Tensor, names: list[str],
                    line_thickness: int | None = None, hide_labels: bool = False,
                    hide_conf: bool = False) -> np.ndarray:
    """Draw detections on ``img`` in place and return it.

    Args:
        img: HxWx3 uint8 BGR image.
        det: (n, 6) rows ``[x1, y1, x2, y2, conf, cls]`` in ``img`` pixels.
        names: class names indexed by class id (ids outside the list are drawn as the number).
        line_thickness: box line width in pixels; None picks one from the image size.
        hide_labels: draw boxes only.
        hide_conf: draw the class name without the confidence.
    """
    lw = line_thickness or default_line_width(img.shape)
    # Draw the least confident first so the most confident labels end up on top.
    for *xyxy, conf, cls in reversed(det.tolist()):
        c = int(cls)
        name = class_name(names, c)
        label = "" if hide_labels else (name if hide_conf else f"{name} {conf:.2f}")
        box_label(img, xyxy, label, class_color(c), lw)
    return img


def save_crop(img: np.ndarray, xyxy, path: Path, gain: float = 1.02, pad: int = 10) -> Path:
    """Save the crop of ``img`` around box ``xyxy`` (pixels) to ``path``; return the path used.

    The box is enlarged by ``gain`` and ``pad`` pixels (context helps when looking at tiny
    objects) and clipped to the image. An existing file is not
    overwritten: ``name.jpg`` becomes ``name2.jpg``, ``name3.jpg`` ...
    """
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    w, h = (x2 - x1) * gain + pad, (y2 - y1) * gain + pad
    h_img, w_img = img.shape[:2]
    xa, xb = int(max(cx - w / 2, 0)), int(min(cx + w / 2, w_img))
    ya, yb = int(max(cy - h / 2, 0)), int(min(cy + h / 2, h_img))
    crop = img[ya:max(yb, ya + 1), xa:max(xb, xa + 1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    out, n = path, 2
    while out.exists():
        out = path.with_name(f"{path.stem}{n}{path.suffix}")
        n += 1
    cv2.imwrite(str(out), crop)
    return out
