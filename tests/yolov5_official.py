"""Write checkpoints in the official ultralytics/yolov5 format (a test helper, not a test module).

YOLOv5 (v6.0+) saves ``{'epoch', 'best_fitness', 'model': <models.yolo.DetectionModel, FP16>,
'ema', 'updates', 'optimizer', 'opt', 'git', 'date'}``. Its module classes are pickled by their
paths (``models.yolo.DetectionModel``, ``models.yolo.Detect``, ``models.common.Conv`` / ``C3`` /
``Bottleneck`` / ``SPPF`` / ``Concat``, ``torch.nn.Upsample``), and its Detect keeps ``anchors``
in grid units (pixels / stride), the strides as a plain attribute and ``grid``/``anchor_grid``
lists. This helper re-dresses a copy of one of our models that way: stand-in classes with
YOLOv5's module paths and names replace ours, so the state-dict keys and shapes are those of the
graph, and ``torch.save`` pickles the whole object as YOLOv5 does.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import types
from pathlib import Path

import torch
from torch import nn

from models.common import C3, SPPF, Bottleneck, Concat, Conv, Upsample
from models.head import Detect
from models.yolo import DetectionModel

OUR_TO_YOLOV5 = {DetectionModel: ("models.yolo", "DetectionModel"), Detect: ("models.yolo", "Detect"),
                 Conv: ("models.common", "Conv"), C3: ("models.common", "C3"),
                 Bottleneck: ("models.common", "Bottleneck"), SPPF: ("models.common", "SPPF"),
                 Concat: ("models.common", "Concat")}


def _standin_modules() -> dict[str, types.ModuleType]:
    """Module objects ``models.yolo`` / ``models.common`` holding nn.Module classes of YOLOv5's names."""
    mods = {}
    for module, name in OUR_TO_YOLOV5.values():
        mod = mods.setdefault(module, types.ModuleType(module))
        setattr(mod, name, type(name, (nn.Module,), {"__module__": module, "__qualname__": name}))
    return mods


@contextlib.contextmanager
def _modules_installed(mods: dict[str, types.ModuleType]):
    """Let pickle find the stand-in classes under their YOLOv5 paths; restore ours afterwards."""
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def yolov5_yaml(model: DetectionModel) -> dict:
    """The model dict YOLOv5 stores in ``model.yaml``: explicit multiples, ``ch``, no ``scales``."""
    d = model.yaml
    scales = d.get("scales")
    gd, gw = scales[d["scale"]] if scales else (d.get("depth_multiple", 1.0), d.get("width_multiple", 1.0))
    return {"nc": d["nc"], "depth_multiple": gd, "width_multiple": gw, "anchors": d["anchors"],
            "backbone": [[f, n, "nn.Upsample" if m == "Upsample" else m, a] for f, n, m, a in d["backbone"]],
            "head": [[f, n, "nn.Upsample" if m == "Upsample" else m, a] for f, n, m, a in d["head"]], "ch": 3}


def save_official_checkpoint(model: DetectionModel, path: Path, names: list[str], extra: dict | None = None) -> Path:
    """Save ``model`` (our graph, P3-P5 rows of YOLOv5) as an official YOLOv5 FP16 checkpoint."""
    mods = _standin_modules()
    m = copy.deepcopy(model).eval().half()
    yaml = yolov5_yaml(model)
    head = m.model[-1]
    stride = head.stride.clone()
    for sub in m.modules():
        if type(sub) in OUR_TO_YOLOV5:
            module, name = OUR_TO_YOLOV5[type(sub)]
            sub.__class__ = getattr(mods[module], name)
        elif type(sub) is Upsample:
            sub.__class__ = nn.Upsample
        sub.__dict__.pop("out_channels", None)
    anchors = (head.anchors.float() / stride.view(-1, 1, 1)).half()  # YOLOv5 keeps grid units
    del head._buffers["stride"]
    head.__dict__.pop("_grid_cache", None)
    head.anchors = anchors
    head.stride = stride  # a plain attribute in YOLOv5
    head.grid = [torch.empty(0) for _ in range(len(stride))]
    head.anchor_grid = [torch.empty(0) for _ in range(len(stride))]
    m.yaml, m.names, m.stride, m.inplace = yaml, list(names), stride, True
    ckpt = {"epoch": -1, "best_fitness": None, "model": m, "ema": None, "updates": None, "optimizer": None,
            "opt": {"weights": "yolov5s.pt", "imgsz": 640, "batch_size": 16}, "git": {"commit": "0" * 7},
            "date": "2022-11-22T00:00:00", **(extra or {})}
    with _modules_installed(mods):
        torch.save(ckpt, path)
    return path
