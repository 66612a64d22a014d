"""Run folders: ``runs/detect/exp``, ``exp2``, ``exp3`` ... as in YOLOv5."""

from __future__ import annotations

import re
from pathlib import Path

from utils.errors import CheckpointError


def increment_path(path: str | Path, exist_ok: bool = False, mkdir: bool = True) -> Path:
    """Return ``path`` or, when it exists, the first free ``path{N}`` with N >= 2.

    ``runs/detect/exp`` -> ``runs/detect/exp2`` if ``exp`` exists, ``exp3`` if ``exp2`` exists
    too, etc. N is one more than the largest existing suffix, so deleting ``exp2`` does not
    make a later run reuse a number below an existing ``exp5``. With ``exist_ok`` the path is
    returned unchanged. A file path keeps its suffix (``out.txt`` -> ``out2.txt``).

    Args:
        path: the wanted path.
        exist_ok: reuse ``path`` even if it exists.
        mkdir: create the returned path as a directory (pass False for a file path).
    """
    path = Path(path)
    if path.exists() and not exist_ok:
        stem, suffix = (path.stem, path.suffix) if path.is_file() else (path.name, "")
        pattern = re.compile(rf"^{re.escape(stem)}(\d+){re.escape(suffix)}$")
        numbers = [int(m.group(1)) for p in path.parent.iterdir() if (m := pattern.match(p.name))]
        n = max([1, *numbers]) + 1
        path = path.with_name(f"{stem}{n}{suffix}")
    if mkdir:
        path.mkdir(parents=True, exist_ok=True)
    return path


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
