"""DetectionModel and the model YAML parser (registry lookup, literal arguments, no eval).

A model YAML has ``backbone`` and ``head`` rows ``[from, number, module, args]`` and either
``depth_multiple``/``width_multiple`` or a ``scales:`` table ``{n: [depth, width], ...}``.
``models/yolov5s-p2.yaml`` resolves to scale ``s`` of ``models/yolov5-p2.yaml`` when no file of
that name exists.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path

import torch
import yaml
from torch import nn

import models.attention  # noqa: F401  (registers the attention blocks)
import models.common  # noqa: F401  (registers the convolutional blocks)
import models.sr  # noqa: F401  (registers the feature super-resolution generator)
from models.head import Detect
from models.head_decoupled import DecoupledDetect
from models.registry import ModelConfigError, get_module

HEADS = (Detect, DecoupledDetect)  # the detection heads a model YAML may end in
MODEL_KEYS = {"nc", "scales", "scale", "depth_multiple", "width_multiple", "anchors", "backbone", "head"}
SCALED_NAME = re.compile(r"^(yolov5)([nslmx])(.*)$")


def _read_yaml(path: Path):
    """yaml.safe_load; a syntax error becomes one ModelConfigError line naming file and line."""
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ModelConfigError(f"{path}{line}: malformed model YAML: {e.problem or e.context}") from None


def load_model_yaml(cfg: str | Path) -> dict:
    """Read a model YAML, resolving ``yolov5<scale><rest>.yaml`` to ``yolov5<rest>.yaml`` + scale."""
    path = Path(cfg)
    scale = None
    if not path.exists():
        match = SCALED_NAME.match(path.stem)
        base = path.with_name(f"{match[1]}{match[3]}{path.suffix}") if match else None
        if base is None or not base.exists():
            raise ModelConfigError(f"model YAML not found: {cfg}")
        path, scale = base, match[2]
    d = _read_yaml(path)
    if not isinstance(d, dict):
        raise ModelConfigError(f"{path}: a model YAML must be a mapping")
    unknown = set(d) - MODEL_KEYS
    if unknown:
        raise ModelConfigError(f"{path}: unknown model key(s) {sorted(unknown)}; allowed: {sorted(MODEL_KEYS)}")
    if scale is not None:
        d["scale"] = scale
    d["yaml_file"] = path.name if scale is None else f"{path.stem[:6]}{scale}{path.stem[6:]}{path.suffix}"
    return d


def _multiples(d: dict) -> tuple[float, float]:
    """(depth_multiple, width_multiple) from explicit keys or the ``scales`` table."""
    scales = d.get("scales")
    if scales:
        scale = d.get("scale") or next(iter(scales))
        if scale not in scales:
            raise ModelConfigError(f"scale '{scale}' not in the model's scales {list(scales)}")
        d["scale"] = scale
        return float(scales[scale][0]), float(scales[scale][1])
    return float(d.get("depth_multiple", 1.0)), float(d.get("width_multiple", 1.0))


def _resolve_arg(a, symbols: dict):
    """Replace the symbols ``nc`` / ``anchors`` by their values; everything else is a literal."""
    return symbols[a] if isinstance(a, str) and a in symbols else a


def parse_model(d: dict, ch: int = 3) -> tuple[nn.Sequential, list[int]]:
    """Build the layer list from a model dict. Returns (layers, indices whose output is kept)."""
    try:  # a YAML of the wrong shape must give one clear error, not a traceback
        gd, gw = _multiples(d)
        symbols = {"nc": d["nc"], "anchors": d.get("anchors", 3)}
        rows = list(d["backbone"]) + list(d["head"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelConfigError(f"model YAML needs 'nc', 'backbone' and 'head' lists and numeric scales "
                               f"({type(e).__name__}: {e})") from None
    channels: list[int] = [ch]
    layers, save = [], set()
    for i, row in enumerate(rows):
        if not (isinstance(row, list) and len(row) == 4 and isinstance(row[2], str)):
            raise ModelConfigError(f"model row {i} must be [from, number, module, args], got {row}")
        f, n, name, args = row
        cls = get_module(name.removeprefix("nn."))
        try:  # wrong types or an input index outside the graph
            args = [_resolve_arg(a, symbols) for a in (args or [])]
            for k in cls.width_args:
                args[k] = math.ceil(args[k] * gw / 8) * 8
            n = max(round(n * gd), 1) if n > 1 else n
            # channels[0] is the image; row r's output is channels[r + 1], and -k is k rows back
            c_in = ([channels[j if j < 0 else j + 1] for j in f] if isinstance(f, list)
                    else channels[f if f < 0 else f + 1])
        except (TypeError, ValueError, IndexError) as e:
            raise ModelConfigError(f"model row {i} {row}: {type(e).__name__}: {e}") from None
        if cls.multi_input != isinstance(f, list):
            raise ModelConfigError(f"model row {i}: {name} takes {'a list of' if cls.multi_input else 'one'} input(s)")
        try:
            m = _build_row(cls, c_in, n, args)
        except (TypeError, ValueError) as e:  # wrong argument count or value in the row
            raise ModelConfigError(f"model row {i} ({name} {args}): {e}") from None
        m.i, m.f, m.type = i, f, name
        save.update(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(m)
        channels.append(m.out_channels)
    return nn.Sequential(*layers), sorted(save)


def _build_row(cls: type, c_in, n: int, args: list) -> nn.Module:
    """Instantiate one YAML row: ``n`` stacked copies, or ``n`` passed as the repeat argument."""
    if cls.repeat_arg:
        return cls(c_in, *args[:1], n, *args[1:])  # (c1, c2, n, ...) as in YOLOv5
    blocks = [cls(c_in, *args) for _ in range(n)]
    m = blocks[0] if n == 1 else nn.Sequential(*blocks)
    m.out_channels = blocks[-1].out_channels
    return m


class DetectionModel(nn.Module):
    """A YOLO graph built from a model YAML, ending in a detection head (one of :data:`HEADS`).

    forward(x): x float (B, 3, H, W) in [0, 1] -> list of raw level outputs, identical in train and
    eval mode: (B, na, ny, nx, 5 + nc) for Detect, (B, 4 * reg_max + nc, ny, nx) for
    DecoupledDetect. predict(x) -> (B, N, 5 + nc) decoded boxes (the same for both heads).
    """

    def __init__(self, cfg: str | Path | dict, nc: int | None = None, ch: int = 3):
        super().__init__()
        self.yaml = copy.deepcopy(cfg) if isinstance(cfg, dict) else load_model_yaml(cfg)
        if nc is not None:
            self.yaml["nc"] = nc
        self.model, self.save = parse_model(self.yaml, ch)
        self.nc = self.yaml["nc"]
        detect = self.model[-1]
        if not isinstance(detect, HEADS):
            raise ModelConfigError("the last row of a model YAML must be a detection head: "
                                   + " or ".join(h.__name__ for h in HEADS))
        s = 256
        with torch.no_grad():
            self.eval()
            out = self.forward(torch.zeros(1, ch, s, s))
            self.train()
        detect.stride.copy_(torch.tensor([s / o.shape[2] for o in out]))
        detect.initialize_biases()
        _init_weights(self)

    @property
    def detect(self) -> Detect | DecoupledDetect:
        return self.model[-1]

    @property
    def stride(self) -> torch.Tensor:
        return self.detect.stride

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_until(x, len(self.model) - 1)

    def forward_until(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """The output of row ``layer`` (0-based) for input ``x``; rows after it are not run.

        Used by the SR branch's 2x teacher, which needs the stride-8 features only.
        """
        if not 0 <= layer < len(self.model):
            raise IndexError(f"layer {layer} outside the model's {len(self.model)} rows")
        outputs = []
        for m in self.model:
            if m.f != -1:
                x = outputs[m.f] if isinstance(m.f, int) else [x if j == -1 else outputs[j] for j in m.f]
            x = m(x)
            if m.i == layer:
                return x
            outputs.append(x if m.i in self.save else None)
        return x

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Decoded predictions (B, N, 5 + nc): cx, cy, w, h in input pixels, obj, class scores."""
        return self.detect.decode(self.forward(x))

    def fuse(self) -> "DetectionModel":
        """Fold BatchNorm into the preceding conv of every Conv block (faster inference)."""
        from models.common import Conv

        for m in self.modules():
            if isinstance(m, Conv):
                m.fuse()
        return self

    def info(self, imgsz: int = 640, verbose: bool = False) -> str:
        """One-line summary (layers, parameters, GFLOPs at imgsz); per-layer table when verbose."""
        from models.summary import model_summary

        return model_summary(self, imgsz, verbose)


def _init_weights(model: nn.Module) -> None:
    """BatchNorm and activation settings used by YOLOv5 (PyTorch default conv init)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps, m.momentum = 1e-3, 0.03
        elif isinstance(m, (nn.SiLU, nn.ReLU, nn.LeakyReLU)):
            m.inplace = True


def build_model(cfg: str | Path | dict, nc: int | None = None, ch: int = 3) -> DetectionModel:
    """Build a DetectionModel from a YAML path (scale letters resolved) or a parsed dict."""
    return DetectionModel(cfg, nc=nc, ch=ch)
