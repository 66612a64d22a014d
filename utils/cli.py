"""What the entry scripts share: the one-line error rule and the inference flags.

Every script's ``main()`` runs its work through :func:`run_cli`: a :class:`~utils.errors.SodError`
(something the user can fix) becomes one line on stderr and exit code 1 (or the error's own
``exit_code``, e.g. 143 for a run stopped by SIGTERM), Ctrl-C exit code 130,
and any other exception is a bug that keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from utils.errors import SodError


def run_cli(prog: str, work: Callable[[], object], on_interrupt: str = "interrupted") -> int:
    """Run ``work()``; returns the exit code (0 done, 1 user error, 130 interrupted, or the error's exit_code)."""
    try:
        work()
    except SodError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return int(getattr(e, "exit_code", 1))
    except KeyboardInterrupt:
        print(f"\n{prog}: {on_interrupt}", file=sys.stderr)
        return 130
    return 0


def add_inference_flags(p: argparse.ArgumentParser, *, conf_thres: float, iou_thres: float, max_det: int | None,
                        max_det_help: str = "maximum detections per image") -> None:
    """The flags val.py and detect.py share (YOLOv5 names), with each script's own defaults."""
    p.add_argument("--conf-thres", type=float, default=conf_thres, help="confidence threshold")
    p.add_argument("--iou-thres", type=float, default=iou_thres, help="NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=max_det, help=max_det_help)
    p.add_argument("--device", default="", help="'' (auto), cpu, 0 or cuda:0")
    p.add_argument("--half", action="store_true", help="FP16 inference (CUDA only)")
    p.add_argument("--augment", action="store_true", help="test-time augmentation (flip, scales 0.83/0.67)")
    p.add_argument("--save-txt", action="store_true", help="write YOLO txt predictions to labels/")
    p.add_argument("--save-conf", action="store_true", help="add the confidence to --save-txt lines")
    p.add_argument("--save-json", action="store_true", help="write predictions.json (COCO results format)")
