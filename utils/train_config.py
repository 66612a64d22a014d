"""TrainConfig: the typed settings of one training run (what train.py's flags turn into).

train.py parses its flags and builds a TrainConfig; the Trainer reads only this object. The
config is stored in every checkpoint (``train_args``) and in the run's opt.yaml as a plain dict
(:meth:`TrainConfig.to_dict`); ``--resume`` rebuilds it with :meth:`TrainConfig.from_dict`, which
rejects keys it does not know instead of silently dropping them.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from utils.errors import ConfigError
from utils.optim import OPTIMIZERS

# Keys that older checkpoints stored but that are no longer part of the config: the resume flag
# itself was saved with the other flags. They are dropped on load, every other unknown key is an
# error.
RETIRED_KEYS = frozenset({"resume"})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run is configured by, besides the hyp file's contents.

    Paths are kept as given (str). ``freeze`` is ``[N]`` (freeze the first N graph rows; ``[0]``
    freezes nothing) or a list of row indices. ``cache`` is None or ``'ram'``.
    """

    weights: str = ""  # initial weights; '' = from scratch
    cfg: str = "models/yolov5n-p2-af.yaml"  # model YAML
    data: str = "data/hit-uav-sample.yaml"  # dataset YAML
    hyp: str = "data/hyps/hyp.scratch.yaml"  # hyperparameter YAML
    epochs: int = 60
    batch_size: int = 16  # the global batch: under torchrun each process takes batch_size / WORLD_SIZE
    imgsz: int = 320  # train image size (px), and val size unless val_imgsz is set
    val_imgsz: int = 0  # validation image size (px); 0 = imgsz
    time: float = 0.0  # wall-clock budget in hours; > 0 plans the epochs to fit it (epochs is the first guess)
    device: str = ""  # '' (auto), 'cpu' or a CUDA index
    workers: int = 2
    project: str = "runs/train"
    name: str = "exp"
    exist_ok: bool = False
    cache: str | None = None
    optimizer: str = "auto"
    cos_lr: bool = False
    patience: int = 100  # epochs without improvement before stopping
    seed: int = 0
    multi_scale: bool = False
    freeze: list[int] = field(default_factory=lambda: [0])
    noautoanchor: bool = False
    noval: bool = False  # validate only after the final epoch
    nosave: bool = False  # save only the final checkpoint
    nbs: int = 16  # nominal batch size: gradients accumulate up to it (YOLOv5: 64)
    close_mosaic: int = 0  # mosaic off for the last N epochs (0 = mosaic throughout, as YOLOv5)
    tensorboard: bool = True  # TensorBoard events in the run folder when the package is installed
    noplots: bool = False  # no PNG/JPG plots in the run folder (evolve generations)
    sync_bn: bool = False  # SyncBatchNorm across torchrun processes (CUDA only)

    def __post_init__(self) -> None:
        # A frozen dataclass: normalize through object.__setattr__ (a tuple from a caller becomes a list).
        object.__setattr__(self, "freeze", [int(v) for v in self.freeze])
        for name in ("epochs", "batch_size", "imgsz", "nbs", "patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.val_imgsz < 0:
            raise ConfigError(f"val_imgsz must be >= 0 (0 = imgsz), got {self.val_imgsz}")
        if self.time < 0:
            raise ConfigError(f"time must be >= 0 hours (0 = no budget), got {self.time}")
        if self.close_mosaic < 0:
            raise ConfigError(f"close_mosaic must be >= 0, got {self.close_mosaic}")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer '{self.optimizer}'; choose one of {OPTIMIZERS}")
        if self.cache not in (None, "ram"):
            raise ConfigError(f"cache must be None or 'ram', got {self.cache!r}")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        """Build from train.py's parsed flags; flags that are not settings (``--resume``) are left out."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str | Path) -> TrainConfig:
        """Rebuild from :meth:`to_dict` output stored in ``source`` (a checkpoint or opt.yaml).

        Keys missing from ``d`` take their defaults; a key the config does not know raises a
        ConfigError that names the key(s) and ``source``.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: the stored training config is not a mapping")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - RETIRED_KEYS)
        if unknown:
            raise ConfigError(f"{source}: unknown training config key(s) {', '.join(unknown)}; "
                              f"known keys are {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        """Plain builtins only: safe for yaml.safe_dump and torch.load(weights_only=True)."""
        return asdict(self)
