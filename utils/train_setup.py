"""Builders used by train.py: model from cfg/weights, layer freezing, resume lookup."""

from __future__ import annotations

from pathlib import Path

import torch

from models.yolo import DetectionModel, build_model
from utils.checkpoint import CheckpointError, load_checkpoint


def build_train_model(cfg: str, weights: str, nc: int) -> DetectionModel:
    """A model from ``cfg`` for ``nc`` classes, initialised from ``weights`` where shapes match.

    With weights and no cfg the checkpoint's own graph is used. Layers whose shapes differ
    (e.g. the Detect convs for another class count) keep their fresh initialisation.
    """
    if not weights:
        return build_model(cfg, nc=nc)
    ckpt = load_checkpoint(weights)
    model = build_model(cfg or ckpt["model_cfg"], nc=nc)
    own = model.state_dict()
    src = ckpt.get("train_model") or ckpt["model"]
    matched = {k: v for k, v in src.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(matched, strict=False)
    print(f"transferred {len(matched)}/{len(own)} tensors from {weights}")
    return model


def freeze_layers(model: torch.nn.Module, freeze: list[int]) -> int:
    """Freeze parameters of graph rows: ``[10]`` = the first 10 rows, ``[0, 1, 2]`` = those rows.

    Returns the number of frozen parameter tensors.
    """
    rows = list(range(freeze[0])) if len(freeze) == 1 else freeze
    prefixes = tuple(f"model.{r}." for r in rows)
    n = 0
    for name, p in model.named_parameters():
        if name.startswith(prefixes):
            p.requires_grad_(False)
            n += 1
    return n


def find_resume_checkpoint(resume: str | bool, project: Path) -> Path:
    """The checkpoint to resume: a given path, or the newest runs/train/*/weights/last.pt."""
    if isinstance(resume, str) and resume not in ("", "True"):
        path = Path(resume)
        if not path.is_file():
            raise CheckpointError(f"--resume checkpoint not found: {path}")
        return path
    candidates = sorted(Path(project).glob("*/weights/last.pt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise CheckpointError(f"--resume: no last.pt found under {project}/*/weights/")
    return candidates[-1]
