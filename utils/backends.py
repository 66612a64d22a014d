"""Run what export.py writes: ONNX (ONNX Runtime) and TorchScript models, as val.py and detect.py models.

Every backend has one interface, :meth:`ExportedModel.predict`: float images (B, 3, H, W) in
[0, 1] -> decoded predictions (B, N, 5 + nc) ``[cx, cy, w, h (input px), obj, cls...]``, the
output of ``DetectionModel.predict``. To the evaluation and slicing code an exported model looks
like a DetectionModel whose forward returns that one tensor as its only "level" and whose head
(:class:`DecodedHead`) passes it through: ``decode_candidates`` keeps per image the rows whose
objectness is above the threshold, the rows NMS would look at, as the PyTorch heads do.

export.py embeds metadata (class names, strides, input size and batch, dynamic or not) in the
file: ONNX ``metadata_props['sodyolo']``, TorchScript extra file ``sodyolo.json``.
A fixed-size export takes inputs up to its size: smaller ones are padded right and bottom (boxes
keep their coordinates) and batches are cut to its batch size.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from utils.data.augment import PAD_VALUE
from utils.errors import CheckpointError, ConfigError

META_KEY = "sodyolo"  # ONNX metadata_props key
META_FILE = "sodyolo.json"  # TorchScript extra file
PAD = PAD_VALUE / 255  # letterbox grey, for padding inputs to a fixed export size


def export_metadata(names: list[str], strides: list[float], imgsz: tuple[int, int], batch: int,
                    dynamic: bool) -> str:
    """The JSON string export.py stores in the file."""
    return json.dumps({"task": "detect", "names": list(names), "nc": len(names), "strides": [float(s) for s in strides],
                       "imgsz": [int(imgsz[0]), int(imgsz[1])], "batch": int(batch), "dynamic": bool(dynamic),
                       "output": "decoded (B, N, 5 + nc): cx, cy, w, h in input pixels, objectness, class scores"})


def _parse_metadata(text: str | None, path) -> dict:
    try:
        meta = json.loads(text) if text else None
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict) or not {"names", "strides", "imgsz", "batch", "dynamic"} <= set(meta):
        raise CheckpointError(f"{path} carries no metadata of export.py (class names, strides, input size); "
                              "export it with this project's export.py")
    return meta


class DecodedHead:
    """Head stand-in for a graph that already decodes: raw = [decoded (B, N, 5 + nc)]."""

    def decode(self, raw: list[torch.Tensor]) -> torch.Tensor:
        return raw[0]

    def decode_candidates(self, raw: list[torch.Tensor], conf_thres: float) -> list[torch.Tensor]:
        """Per image the rows (n_i, 5 + nc) with objectness > conf_thres (NMS drops the others)."""
        return [p[p[:, 4] > conf_thres] for p in raw[0]]


class ExportedModel(nn.Module):
    """An exported detector behind the DetectionModel interface that val.py and detect.py use.

    Args:
        run: the runtime call, (B, 3, H, W) float32 tensor -> (B, N, 5 + nc) tensor.
        meta: the metadata dict (names, strides, imgsz, batch, dynamic).
        device: where inputs and outputs live.
        path: the file (for messages).
    """

    def __init__(self, run, meta: dict, device: torch.device, path: Path, kind: str):
        super().__init__()
        self._run = run
        self.meta, self.device, self.path, self.kind = meta, torch.device(device), Path(path), kind
        self.names = list(meta["names"])
        self.nc = len(self.names)
        self.dynamic = bool(meta["dynamic"])
        self.fixed_hw = None if self.dynamic else tuple(int(v) for v in meta["imgsz"])
        self.detect = DecodedHead()
        self.stride = torch.tensor(meta["strides"], dtype=torch.float32)  # an attribute: .half() leaves it

    def fuse(self) -> ExportedModel:
        return self  # folded at export

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.predict(x)]

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) in [0, 1] -> (B, N, 5 + nc) decoded predictions (float32, on ``device``)."""
        x = x.float().contiguous()
        if self.dynamic:
            return self._run(x).to(self.device)
        (h, w), b = self.fixed_hw, int(self.meta["batch"])
        if x.shape[2] > h or x.shape[3] > w:
            raise ConfigError(f"{self.path} was exported for {h}x{w} inputs and got {x.shape[2]}x{x.shape[3]}: "
                              f"use --imgsz {max(h, w)} or smaller, or export with --dynamic")
        x = F.pad(x, (0, w - x.shape[3], 0, h - x.shape[2]), value=PAD)  # boxes keep their coordinates
        outs = []
        for chunk in x.split(b):
            n = chunk.shape[0]
            if n < b:
                chunk = torch.cat((chunk, chunk.new_full((b - n, *chunk.shape[1:]), PAD)))
            outs.append(self._run(chunk)[:n])
        return torch.cat(outs).to(self.device)


def _onnx_model(path: Path, device: torch.device) -> ExportedModel:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("running an .onnx model needs ONNX Runtime: pip install onnxruntime "
                          "(onnxruntime-gpu for CUDA)") from None
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        else:
            print(f"ONNX Runtime has no CUDA provider here (install onnxruntime-gpu); running {path.name} on the CPU")
            device = torch.device("cpu")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()  # honour OMP_NUM_THREADS like torch does
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    except Exception as e:  # ORT raises its own types for invalid graphs
        raise CheckpointError(f"cannot load ONNX model {path}: {str(e).splitlines()[0][:200]}") from None
    meta = _parse_metadata(sess.get_modelmeta().custom_metadata_map.get(META_KEY), path)
    name = sess.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(sess.run(None, {name: x.cpu().numpy()})[0])

    return ExportedModel(run, meta, device, path, "onnx")


def _torchscript_model(path: Path, device: torch.device) -> ExportedModel:
    if device.type != "cpu":  # export.py traces on the CPU: the decode's grids carry a 'cpu' constant
        print(f"{path.name} was traced on the CPU and runs there (export ONNX for CUDA)")
        device = torch.device("cpu")
    files = {META_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
            module = torch.jit.load(str(path), map_location=device, _extra_files=files)
    except Exception as e:  # torch raises several types for foreign files
        raise CheckpointError(f"cannot load TorchScript model {path}: {str(e).splitlines()[0][:200]}") from None
    meta = _parse_metadata(files[META_FILE], path)
    module.eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x.to(device))

    return ExportedModel(run, meta, device, path, "torchscript")


def is_torchscript(path: str | Path) -> bool:
    """True for a TorchScript archive (its zip holds ``code/`` and ``constants.pkl``), whatever its suffix."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_inference_model(weights: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    """A model for val.py / detect.py from a checkpoint (.pt, ours or YOLOv5's), .onnx or TorchScript file.

    Returns (model in eval mode, info): info is the checkpoint dict for checkpoints, the export
    metadata for exported files; both hold ``names``.
    """
    from utils.checkpoint import load_model

    path, device = Path(weights), torch.device(device)
    if not path.is_file():
        raise CheckpointError(f"weights not found: {path}")
    if path.suffix.lower() == ".onnx":
        model = _onnx_model(path, device)
    elif path.suffix.lower() == ".torchscript" or is_torchscript(path):
        model = _torchscript_model(path, device)
    else:
        return load_model(path, device)
    print(f"{model.kind} model {path}: {model.nc} classes, "
          + ("dynamic batch and size" if model.dynamic else f"fixed input {model.fixed_hw[0]}x{model.fixed_hw[1]}, "
             f"batch {model.meta['batch']}"))
    return model.eval(), model.meta
