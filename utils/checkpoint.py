"""Checkpoints: atomic writes, safe loading (weights_only=True) and model reconstruction.

A checkpoint is a plain dict of tensors and builtins:
    task ('detect'), model_cfg (model YAML dict), model (state_dict, EMA weights when training
    used EMA), names (list[str]), nc, hyp (dict), epoch (int, -1 when finished), best_fitness,
    optimizer (state_dict or None), ema (EMA state_dict or None), ema_updates, train_args (dict),
    date (ISO string).
Anchors live in the state_dict (buffer ``model.<i>.anchors``), so refitted anchors travel with it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

REQUIRED_KEYS = ("task", "model_cfg", "model", "names")


class CheckpointError(Exception):
    """A weights file that is missing, unreadable, or not a detection checkpoint of this project."""


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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; raise CheckpointError with a clear message."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"cannot read weights {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is not a checkpoint of this project (expected keys {list(REQUIRED_KEYS)})")
    if ckpt["task"] != "detect":
        raise CheckpointError(f"{path} is a '{ckpt['task']}' checkpoint; this tool needs a 'detect' checkpoint")
    return ckpt


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild the model stored in a checkpoint. Returns (DetectionModel in eval mode, ckpt dict)."""
    from models.yolo import build_model

    ckpt = load_checkpoint(path)
    model = build_model(ckpt["model_cfg"], nc=ckpt["nc"] if "nc" in ckpt else None)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the stored model graph: {str(e)[:200]}") from None
    return model.float().to(device).eval(), ckpt
