"""Official YOLOv5 checkpoints -> a checkpoint of this project (same graph, same outputs).

YOLOv5 (ultralytics/yolov5 v6.0+) saves ``{'model': DetectionModel (usually FP16), 'ema': ...,
'epoch', 'opt', ...}``. Its model keeps the YAML dict it was built from (``model.yaml``), the class
names and the layers under ``model.<i>``: the same rows, indices and state-dict names as this
project's graph (Conv ``conv``/``bn``, C3 ``cv1..cv3`` and ``m.<j>`` bottlenecks, SPPF ``cv1``/``cv2``,
Detect ``m.<level>`` 1x1 convs). Two things differ and are converted here:

* Detect ``anchors``: YOLOv5 stores them in grid units of each level (pixels / stride); ours are
  in input pixels. The strides in the file are checked against the ones our graph computes.
* Detect ``stride``: an attribute in YOLOv5, a buffer here (taken from our graph).

The file is read with :mod:`utils.yolov5_pickle` (no code from it runs). The result is a plain
checkpoint dict (see utils/checkpoint.py) with FP32 tensors, so ``load_model`` and the
``--weights`` transfer treat it like one of ours.
"""

from __future__ import annotations

from pathlib import Path

import torch

from utils.errors import CheckpointError, ConfigError
from utils.yolov5_pickle import Placeholder, load_yolov5_pickle, module_tree, placeholder_state_dict

DETECTION_MODELS = ("models.yolo.DetectionModel", "models.yolo.Model")
HEAD = "models.yolo.Detect"
YAML_KEYS = ("nc", "depth_multiple", "width_multiple", "anchors", "backbone", "head")  # what our parser reads
ACTIVATIONS = ("torch.nn.modules.activation.SiLU", "torch.nn.modules.linear.Identity")  # of Conv blocks


def _detection_model(raw, path) -> Placeholder:
    """The pickled model of a YOLOv5 checkpoint dict: the EMA when present (as YOLOv5 loads it)."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} is not a YOLOv5 checkpoint (expected a dict with a 'model' entry)")
    model = raw.get("ema") or raw.get("model")
    if not isinstance(model, Placeholder):
        raise CheckpointError(f"{path} has no pickled YOLOv5 model under 'model' or 'ema'")
    if model.qualified_name not in DETECTION_MODELS:
        raise CheckpointError(f"{path} holds a {model.qualified_name}; only YOLOv5 detection models "
                              f"({', '.join(DETECTION_MODELS)}) can be used")
    return model


def model_cfg_from_yolov5(yaml_dict, path) -> dict:
    """Our model dict from the YAML dict a YOLOv5 model carries (same rows; extra keys checked)."""
    if not isinstance(yaml_dict, dict) or "backbone" not in yaml_dict or "head" not in yaml_dict:
        raise CheckpointError(f"{path}: the YOLOv5 model carries no model YAML ('yaml' with backbone and head)")
    if yaml_dict.get("ch", 3) != 3:
        raise CheckpointError(f"{path}: the model takes {yaml_dict['ch']} input channels; only 3 are supported")
    if yaml_dict.get("activation") is not None:
        raise CheckpointError(f"{path}: activation {yaml_dict['activation']!r} is not supported (SiLU only)")
    return {k: yaml_dict[k] for k in YAML_KEYS if k in yaml_dict}


def _names(model: Placeholder, nc: int) -> list[str]:
    """Class names from the model (a list, or a dict {index: name} in newer YOLOv5)."""
    names = model.state.get("names")
    if isinstance(names, dict):
        names = [names[i] for i in sorted(names)]
    if not isinstance(names, (list, tuple)) or len(names) != nc:
        return [str(i) for i in range(nc)]
    return [str(n) for n in names]


def _check_layers(model: Placeholder, path) -> None:
    """Refuse what would load but compute something else: another head or another activation."""
    layers = list(module_tree(model))
    head = [m for name, m in layers if name.count(".") == 2 and name.startswith("model.")]  # model.<i>.
    if not head or head[-1].qualified_name != HEAD:
        found = head[-1].qualified_name if head else "nothing"
        raise CheckpointError(f"{path}: the last layer is {found}; only the YOLOv5 {HEAD} head is supported")
    for name, m in layers:
        if m.qualified_name == "models.common.Conv":
            act = (m.state.get("_modules") or {}).get("act")
            if isinstance(act, Placeholder) and act.qualified_name not in ACTIVATIONS:
                raise CheckpointError(f"{path}: {name}act is {act.qualified_name}; only SiLU is supported")


def map_state_dict(src: dict[str, torch.Tensor], own: dict[str, torch.Tensor], head: str,
                   file_stride: torch.Tensor | None, path) -> dict[str, torch.Tensor]:
    """YOLOv5 state dict -> ours (FP32), for a graph of the same rows.

    Args:
        src: YOLOv5 tensors by name (``model.24.anchors`` in grid units).
        own: our model's state_dict (names and shapes to fill; ``<head>.stride`` is taken from it).
        head: our Detect's prefix, e.g. ``model.24``.
        file_stride: the strides the file's Detect holds (nl,), or None if it has none.
    Raises:
        CheckpointError: names or shapes that do not match, or other strides.
    """
    stride = own[f"{head}.stride"]
    if file_stride is not None and not torch.allclose(file_stride.float().flatten(), stride):
        raise CheckpointError(f"{path}: the file's strides {file_stride.tolist()} differ from the graph's "
                              f"{stride.tolist()}")
    out = {}
    for k, v in src.items():
        if k == f"{head}.anchor_grid":  # a buffer in YOLOv5 before v6.0; derived from anchors
            continue
        v = v.float()
        if k == f"{head}.anchors":
            v = v * stride.view(-1, 1, 1)  # grid units -> input pixels
        out[k] = v
    out[f"{head}.stride"] = stride.clone()
    missing = [k for k in own if k not in out]
    unexpected = [k for k in out if k not in own]
    wrong = [f"{k} {tuple(out[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in out and out[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong)) if items]
        raise CheckpointError(f"{path}: YOLOv5 weights do not fit the graph of their own YAML ({'; '.join(parts)})")
    return out


def convert_yolov5_checkpoint(path: str | Path) -> dict:
    """Read an official YOLOv5 ``.pt`` and return it as a finished checkpoint of this project.

    Returns the dict of utils/checkpoint.py (``task``, ``model_cfg``, ``model`` FP32 state_dict,
    ``names``, ``nc``, ``epoch`` -1) plus ``source: 'yolov5'``. The model is rebuilt from the
    file's own YAML, so its outputs equal the original's up to FP16 -> FP32 (exact).
    """
    from utils.checkpoint import build_model_checked

    raw = load_yolov5_pickle(path)
    model = _detection_model(raw, path)
    cfg = model_cfg_from_yolov5(model.state.get("yaml"), path)
    _check_layers(model, path)
    try:
        ours = build_model_checked(cfg)
    except ConfigError as e:
        raise CheckpointError(f"{path}: its YOLOv5 model YAML cannot be built here: {e}") from None
    head = f"model.{len(ours.model) - 1}"
    detect = dict(module_tree(model)).get(f"{head}.")
    file_stride = detect.state.get("stride") if detect is not None else None
    state = map_state_dict(placeholder_state_dict(model), ours.state_dict(), head,
                           file_stride if isinstance(file_stride, torch.Tensor) else None, path)
    ours.load_state_dict(state)
    nc = int(ours.nc)
    epoch = raw.get("epoch")
    return {"task": "detect", "model_cfg": ours.yaml, "model": ours.state_dict(), "names": _names(model, nc),
            "nc": nc, "epoch": -1, "source": "yolov5",
            "source_epoch": epoch if isinstance(epoch, int) else -1}
