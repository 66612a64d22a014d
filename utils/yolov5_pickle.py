"""Read official YOLOv5 checkpoints (pickled whole models) without running code from the file.

An ultralytics/yolov5 (v6.0+) ``*.pt`` file is a dict whose ``'model'`` / ``'ema'`` entry is a
pickled ``models.yolo.DetectionModel``: unpickling it normally imports YOLOv5's code and may run
anything the file names. Here the unpickler builds only

* tensors and their storages (``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter``),
  torch dtypes and sizes, ``collections.OrderedDict``, sets, and numpy arrays of plain dtypes;
* an inert :class:`Placeholder` for each class of YOLOv5's ``models.yolo`` / ``models.common``,
  ``torch.nn.modules.*`` and ``pathlib`` paths: it records the pickled state (a module's
  ``__dict__``: ``_parameters``, ``_buffers``, ``_modules``, attributes) and has no behaviour.

Any other global (``os.system``, ``builtins.eval``, a YOLOv5 ``utils.*`` object ...) stops the load
with one :class:`~utils.errors.CheckpointError` naming it. Nothing from the file is imported or run.
"""

from __future__ import annotations

import collections
import pickle
import pickletools
import zipfile
from pathlib import Path

import torch

from utils.errors import CheckpointError

# Modules whose classes become placeholders (never imported): YOLOv5's model code and torch's layers.
PLACEHOLDER_MODULES = ("models.yolo", "models.common", "pathlib")
PLACEHOLDER_PREFIXES = ("torch.nn.modules.",)

# What tells a YOLOv5 pickle from one of this project: globals from these modules.
YOLOV5_MODULES = ("models.yolo", "models.common")
YOLOV5_MARKERS = tuple(m.encode() for m in YOLOV5_MODULES)


def _numpy_globals() -> dict:
    """numpy's array reconstruction under the names numpy 1.x and 2.x pickle it with."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    out = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[f"{mod}._reconstruct"] = multiarray._reconstruct
        out[f"{mod}.scalar"] = multiarray.scalar
    return out


def _allowed_callables() -> dict:
    """Globals that may be called while unpickling: each only builds data."""
    import _codecs

    return {
        "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
        "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
        "torch.Size": torch.Size,
        "torch.device": torch.device,
        "collections.OrderedDict": collections.OrderedDict,
        "builtins.set": set,
        "builtins.frozenset": frozenset,
        "_codecs.encode": _codecs.encode,  # how protocol 2 stores bytes (numpy array payloads)
        **_numpy_globals(),
    }


class Placeholder:
    """Inert stand-in for a pickled class instance: keeps its state, does nothing else.

    ``qualified_name`` (a class attribute) is the ``module.name`` the file gave; ``state`` is the
    pickled ``__dict__`` (for an nn.Module: ``_parameters``, ``_buffers``, ``_modules`` ...);
    ``args`` the constructor arguments when the pickle calls the class (e.g. a ``PosixPath``).
    """

    qualified_name = "?"

    def __init__(self, *args, **kwargs):
        self.args = args
        self.state = {}

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.state = state if isinstance(state, dict) else {"_state": state}

    def __repr__(self) -> str:
        return f"<placeholder {self.qualified_name}>"


def placeholder_class(module: str, name: str) -> type:
    """A new :class:`Placeholder` subclass standing for ``module.name``."""
    return type(name, (Placeholder,), {"qualified_name": f"{module}.{name}", "__module__": __name__})


class ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allowlist; ``args[0]`` is its ``module.name``."""


class Unpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves globals only to tensors, plain data and placeholders."""

    _allowed: dict | None = None

    def find_class(self, module: str, name: str):
        if module == "__builtin__":  # protocol 2 names builtins by their Python 2 module
            module = "builtins"
        full = f"{module}.{name}"
        if Unpickler._allowed is None:
            Unpickler._allowed = _allowed_callables()
        if full in Unpickler._allowed:
            return Unpickler._allowed[full]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module in PLACEHOLDER_MODULES or module.startswith(PLACEHOLDER_PREFIXES):
            return placeholder_class(module, name)
        raise ForbiddenGlobal(full)


def load(file, **kwargs):
    """``pickle.load`` with the restricted :class:`Unpickler` (torch.load calls it for old formats)."""
    return Unpickler(file, **kwargs).load()


def pickled_modules(data: bytes) -> set[str]:
    """The modules of the globals a pickle names (GLOBAL and STACK_GLOBAL opcodes), without loading it."""
    mods, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            mods.add(arg.split(" ", 1)[0])
        elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
            mods.add(strings[-2])
        elif isinstance(arg, str):
            strings.append(arg)
    return mods


def is_yolov5_pickle(path: str | Path) -> bool:
    """True when ``path`` is a torch zip file whose pickle names YOLOv5's model classes."""
    try:
        with zipfile.ZipFile(path) as z:
            pkl = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if pkl is None:
                return False
            data = z.read(pkl)
            if not any(m in data for m in YOLOV5_MARKERS):  # cheap test first
                return False
            return bool(pickled_modules(data) & set(YOLOV5_MODULES))
    except (zipfile.BadZipFile, OSError, ValueError):  # ValueError: pickletools on a corrupt stream
        return False


def load_yolov5_pickle(path: str | Path):
    """Unpickle ``path`` with the restricted unpickler; tensors go to the CPU.

    Raises:
        CheckpointError: one line naming the first global outside the allowlist, or why the file
            cannot be read.
    """
    import sys

    try:
        # weights_only=False is what lets torch use our pickle module: the restriction is ours.
        return torch.load(path, map_location="cpu", pickle_module=sys.modules[__name__], weights_only=False)
    except ForbiddenGlobal as e:
        raise CheckpointError(f"{path}: refusing to load: it names the global '{e.args[0]}', which is neither a "
                              "tensor nor a YOLOv5 model class (loading it could run code)") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as e:
        first = (str(e).strip().splitlines() or ["empty or truncated file"])[0]
        raise CheckpointError(f"cannot read YOLOv5 weights {path}: {type(e).__name__}: {first[:200]}") from None


def module_tree(obj: Placeholder, prefix: str = ""):
    """Yield ``(dotted name, placeholder)`` for a pickled nn.Module and all its submodules."""
    yield prefix, obj
    for name, child in (obj.state.get("_modules") or {}).items():
        if isinstance(child, Placeholder):
            yield from module_tree(child, f"{prefix}{name}.")


def placeholder_state_dict(obj: Placeholder) -> dict[str, torch.Tensor]:
    """The state_dict a pickled nn.Module would give: parameters and persistent buffers by dotted name."""
    out = {}
    for prefix, m in module_tree(obj):
        skip = m.state.get("_non_persistent_buffers_set") or set()
        for kind in ("_parameters", "_buffers"):
            for name, t in (m.state.get(kind) or {}).items():
                if isinstance(t, torch.Tensor) and not (kind == "_buffers" and name in skip):
                    out[f"{prefix}{name}"] = t.detach()
    return out
