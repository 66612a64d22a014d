"""Run folders: ``runs/detect/exp``, ``exp2``, ``exp3`` ... as in YOLOv5; the checks before a run."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from utils.errors import CheckpointError, RunFolderError

# Free space a training run needs at least beside its run folder: a few checkpoints and plots of a
# small model. A run that cannot save should fail before it trains, not after its first epoch.
MIN_FREE_BYTES = 100 * 2**20


def check_writable(folder: str | Path, min_free: int = MIN_FREE_BYTES) -> None:
    """Raise RunFolderError unless ``folder`` can be created and written and its disk has ``min_free`` bytes.

    Writability is tested by creating a file (permission bits alone do not tell: root ignores
    them, a read-only mount does not show in them).
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise RunFolderError(f"cannot write to {folder}: {e.strerror or e}; choose another --project") from None
    free = shutil.disk_usage(folder).free
    if free < min_free:
        raise RunFolderError(f"{folder}: only {free / 2**20:.0f} MiB free on its disk, training needs at least "
                             f"{min_free / 2**20:.0f} MiB for checkpoints and plots; free space or choose another "
                             "--project")


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


def job_marker(project: str | Path, job_id: str) -> Path:
    """The file in ``project`` that names the run folder of torchrun job ``job_id`` (for elastic restarts)."""
    return Path(project) / f".torchrun-{re.sub(r'[^A-Za-z0-9_.-]', '_', job_id)}"
