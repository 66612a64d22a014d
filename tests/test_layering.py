"""Import layering, read from the source with ``ast`` (nothing is imported or executed).

Library code (utils/, models/) never imports an entry script (train, val, detect, export), and
models/ stands on its own: nothing under models/ imports utils. Every import statement counts,
including those inside functions, relative imports, and ``importlib.import_module("...")`` /
``__import__("...")`` calls with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"train", "val", "detect", "export"}


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute dotted module name) of every import in ``source``.

    Args:
        source: Python source text.
        module: dotted name of the module the source belongs to (resolves relative imports).
        is_package: True for an ``__init__.py`` (its own name is the package of relative imports).
    """
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            prefix = ".".join([*base, *(node.module.split(".") if node.module else [])])
            if node.module:
                found.append((node.lineno, prefix))
            else:  # ``from . import x``: each name is a module of that package
                found += [(node.lineno, f"{prefix}.{a.name}" if prefix else a.name) for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return found


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def violations(folder: str, forbidden_top: set[str], root: Path = ROOT) -> list[str]:
    """``file:line imports name`` for every import under ``root/folder`` of a forbidden top-level package."""
    out = []
    for path in sorted((root / folder).rglob("*.py")):
        mod = _module_name(path, root)
        for line, name in imported_modules(path.read_text(encoding="utf-8"), mod, path.name == "__init__.py"):
            if name.split(".")[0] in forbidden_top:
                out.append(f"{path.relative_to(root).as_posix()}:{line} imports {name}")
    return sorted(out)


def test_scanner_finds_every_kind_of_import():
    src = (
        "import os, train\n"
        "from val import run\n"
        "def f():\n"
        "    import detect as d\n"
        "    from export import main\n"
        "    importlib.import_module('utils.boxes')\n"
        "from .. import train as t2\n"
        "from ..utils.boxes import box_iou\n"
        "from . import common\n"
    )
    got = sorted(imported_modules(src, "models.sub.x"))
    assert got == [(1, "os"), (1, "train"), (2, "val"), (4, "detect"), (5, "export"), (6, "utils.boxes"),
                   (7, "models.train"), (8, "models.utils.boxes"), (9, "models.sub.common")]
    top = [name for _, name in imported_modules("from ... import train\nfrom ..boxes import x\n", "utils.data.loader")]
    assert sorted(top) == ["train", "utils.boxes"]
    assert imported_modules("from . import y\n", "utils", is_package=True) == [(1, "utils.y")]


def test_scanner_flags_planted_violations(tmp_path):
    (tmp_path / "models" / "sub").mkdir(parents=True)
    (tmp_path / "models" / "ok.py").write_text("import torch\nfrom models.common import Conv\n")
    (tmp_path / "models" / "bad.py").write_text("def build():\n    from utils.boxes import box_iou\n")
    (tmp_path / "models" / "sub" / "__init__.py").write_text("from ... import detect\n")
    assert violations("models", {"utils"}, tmp_path) == ["models/bad.py:2 imports utils.boxes"]
    assert violations("models", SCRIPTS, tmp_path) == ["models/sub/__init__.py:1 imports detect"]


@pytest.mark.parametrize("folder", ["utils", "models"])
def test_library_never_imports_an_entry_script(folder):
    assert len(list((ROOT / folder).rglob("*.py"))) > 3, f"no Python files under {folder}/"
    assert violations(folder, SCRIPTS) == []


def test_models_import_nothing_from_utils():
    assert violations("models", {"utils"}) == []
