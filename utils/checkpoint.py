"""Checkpoints: atomic writes, safe loading (weights_only=True) and model reconstruction.

A checkpoint is a plain dict of tensors and builtins:
    task ('detect'), model_cfg (model YAML dict), model (state_dict of the EMA weights), names
    (list[str]), nc, hyp (dict), epoch (int, -1 when finished), best_fitness, optimizer
    (state_dict, None when finished), train_model (state_dict of the raw training weights, None
    when finished), ema_updates, train_args (TrainConfig.to_dict()), date (ISO string), and
    partial_epoch (True when a stop request cut epoch ``epoch`` short; absent otherwise).
Anchors live in the state_dict (buffer ``model.<i>.anchors``), so refitted anchors travel with it.

Official YOLOv5 checkpoints (pickled whole models) are recognised by their pickle and converted
on load by utils/yolov5_import.py (restricted unpickler, nothing from the file runs); everything
below then sees a dict of the form above.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from utils.errors import CheckpointError, ConfigError

REQUIRED_KEYS = ("task", "model_cfg", "model", "names")


def save_checkpoint(ckpt: dict, path: str | Path) -> None:
    """Write ``ckpt`` to ``path`` atomically: a temp file in the same folder, then os.replace.

    A crash mid-write leaves the previous file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def completed_epoch(ckpt: dict) -> int:
    """The last epoch a resumable checkpoint finished (0-based); -1 when it was cut short in epoch 0."""
    return ckpt["epoch"] - 1 if ckpt.get("partial_epoch") else ckpt["epoch"]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True`` (or convert an official YOLOv5 file); raise
    CheckpointError with a clear message. ``map_location`` applies to this project's files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights not found: {path}")
    from utils.yolov5_pickle import is_yolov5_pickle

    if is_yolov5_pickle(path):
        from utils.yolov5_import import convert_yolov5_checkpoint

        return convert_yolov5_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        first = (str(e).strip().splitlines() or ["empty or truncated file"])[0]  # an empty file: no message
        raise CheckpointError(f"cannot read weights {path}: {type(e).__name__}: {first[:200]}") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is not a checkpoint of this project (expected keys {list(REQUIRED_KEYS)})")
    if not all(isinstance(ckpt[k], t) for k, t in (("model_cfg", dict), ("model", dict), ("names", list))):
        raise CheckpointError(f"{path} is malformed: 'model_cfg' and 'model' must be dicts and 'names' a list")
    if ckpt["task"] != "detect":
        raise CheckpointError(f"{path} is a '{ckpt['task']}' checkpoint; this tool needs a 'detect' checkpoint")
    return ckpt


def build_model_checked(cfg, nc: int | None = None):
    """models.yolo.build_model with model-YAML errors turned into this project's ConfigError."""
    from models.registry import ModelConfigError
    from models.yolo import build_model

    try:
        return build_model(cfg, nc=nc)
    except ModelConfigError as e:
        raise ConfigError(str(e)) from None


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model stored in a checkpoint. Returns (DetectionModel in eval mode, ckpt dict)."""
    ckpt = load_checkpoint(path)
    model = build_model_checked(ckpt["model_cfg"], nc=ckpt["nc"] if "nc" in ckpt else None)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:200]  # torch's message spans lines; the CLI prints one
        raise CheckpointError(f"{path}: weights do not match the stored model graph: {detail}") from None
    return model.float().to(device).eval(), ckpt


def build_train_model(cfg: str, weights: str, nc: int):
    """A model from ``cfg`` for ``nc`` classes, initialised from ``weights`` where shapes match.

    With weights and no cfg the checkpoint's own graph is used. Layers whose shapes differ
    (e.g. the Detect convs for another class count) keep their fresh initialisation.
    """
    if not weights:
        return build_model_checked(cfg, nc=nc)
    ckpt = load_checkpoint(weights)
    model = build_model_checked(cfg or ckpt["model_cfg"], nc=nc)
    own = model.state_dict()
    src = ckpt.get("train_model") or ckpt["model"]
    matched = {k: v for k, v in src.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(matched, strict=False)
    print(transfer_report(own, matched, src, weights, ckpt.get("source")))
    return model


def transfer_report(own: dict, matched: dict, src: dict, weights, source: str | None = None) -> str:
    """Lines saying how many tensors were taken and which layers of the new graph kept their init.

    New tensors are grouped by layer (``model.18 (5)`` = five tensors of row 18); the tensors of
    the file that found no slot of the same name and shape are counted.
    """
    what = " (official YOLOv5 checkpoint)" if source == "yolov5" else ""
    lines = [f"transferred {len(matched)}/{len(own)} tensors from {weights}{what}"]
    new = [k for k in own if k not in matched]
    if new:
        groups: dict[str, int] = {}
        for k in new:
            layer = ".".join(k.split(".")[:2])  # model.<i>
            groups[layer] = groups.get(layer, 0) + 1
        lines.append(f"new ({len(new)} tensors, initialised fresh): "
                     + ", ".join(f"{layer} ({n})" for layer, n in groups.items()))
    unused = len(src) - len(matched)
    if unused:
        lines.append(f"not used: {unused} tensors of the file (no layer of the same name and shape)")
    return "\n".join(lines)
