"""Explicit name -> class registry used by the model YAML parser.

A module is usable in a model YAML row once it is decorated with :func:`register`.
The parser never evaluates strings: the row's module name is looked up here and its
arguments are YAML literals (plus the symbols ``nc`` and ``anchors`` from the file).

Contract for a registered class (see ``models/yolo.py:parse_model``):

* ``__init__(self, c1, *args, [n=...])``: ``c1`` is the input channel count (``int``), or
  a ``list[int]`` when the class sets ``multi_input = True`` (e.g. Concat, Detect).
* ``width_args``: indices into ``args`` that are channel counts; the parser multiplies them by
  the model's ``width_multiple`` and rounds up to a multiple of 8.
* ``repeat_arg``: when True, the row's ``number`` (after ``depth_multiple``) is inserted as the
  second argument, ``cls(c1, c2, n, *rest)`` (signature ``(c1, c2, n=1, ...)``); otherwise ``number > 1`` stacks that many copies in an ``nn.Sequential``.
* After construction the instance has ``out_channels`` (int), so the parser needs no
  per-module special cases.
"""

from __future__ import annotations

from torch import nn

MODULES: dict[str, type[nn.Module]] = {}


class ModelConfigError(ValueError):
    """A model YAML that cannot be built; the message names the file, row or key.

    models/ stands alone, so this is not a :class:`utils.errors.SodError`; the library's model
    builders (utils/checkpoint.py) re-raise it as :class:`utils.errors.ConfigError`.
    """


def register(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: make ``cls`` available to model YAMLs under its class name."""
    if cls.__name__ in MODULES and MODULES[cls.__name__] is not cls:
        raise ValueError(f"module name '{cls.__name__}' is registered twice")
    cls.multi_input = getattr(cls, "multi_input", False)
    cls.width_args = getattr(cls, "width_args", ())
    cls.repeat_arg = getattr(cls, "repeat_arg", False)
    MODULES[cls.__name__] = cls
    return cls


def get_module(name: str) -> type[nn.Module]:
    """Return the registered class called ``name`` or raise a ValueError listing the known names."""
    try:
        return MODULES[name]
    except KeyError:
        known = ", ".join(sorted(MODULES))
        raise ModelConfigError(f"unknown module '{name}' in model YAML; known modules: {known}") from None
