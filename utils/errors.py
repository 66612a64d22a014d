"""The project's error types: one base class for every error a user can fix.

Entry scripts catch :class:`SodError` alone and print it as one line (exit code 1); any other
exception is a bug and keeps its traceback. Each subclass also derives from the built-in type
that describes it (ValueError, FileNotFoundError ...) so library callers can catch either.
"""

from __future__ import annotations

from pathlib import Path


class SodError(Exception):
    """Base class of every user-facing error of this project."""


class ConfigError(SodError, ValueError):
    """A bad flag, flag combination, hyperparameter, model YAML or training config."""


class DatasetError(SodError, ValueError):
    """A dataset YAML, split or image folder that cannot be used."""


class LabelError(DatasetError):
    """Labels that cannot be trained on (e.g. most class ids outside the dataset's names)."""


class CheckpointError(SodError, ValueError):
    """A weights file that is missing, unreadable, or not a detection checkpoint of this project."""


class SourceError(SodError, ValueError):
    """A detect.py source (file, folder, glob, video, stream) that cannot be opened."""


class CocoFormatError(SodError, ValueError):
    """A COCO ground-truth or results JSON that is malformed or does not match its pair."""


class TrainingError(SodError, RuntimeError):
    """A run that has to stop: a non-finite loss, a loader with no batches."""


class RunFolderError(SodError, OSError):
    """A run folder that cannot be created or written, or a disk too full for checkpoints."""


class RunInterrupted(SodError):
    """A run stopped on request (SIGTERM, SIGINT) after writing last.pt; ``exit_code`` is 128 + signal."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


class ExportError(SodError, RuntimeError):
    """An exported model (ONNX, TorchScript) whose outputs differ from the PyTorch model's."""


class MissingFileError(SodError, FileNotFoundError):
    """A file or folder named by the user that does not exist."""


def read_yaml(path: str | Path, what: str = "YAML file"):
    """``yaml.safe_load`` of ``path``; malformed YAML becomes a ConfigError naming file and line.

    Args:
        path: the file to read.
        what: how the message calls the file ("dataset YAML", "hyperparameter file" ...).
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except yaml.MarkedYAMLError as e:
        raise ConfigError(f"{yaml_error_where(path, e)}: malformed {what}: {yaml_error_text(e)}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed {what}: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: {what} is not UTF-8 text") from None


def yaml_error_where(path, e) -> str:
    """``file:line:column`` of a PyYAML error (1-based), or the file alone without a mark."""
    mark = e.problem_mark or e.context_mark
    return f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)


def yaml_error_text(e) -> str:
    """The problem, plus where the unclosed construct began when PyYAML found it lines later."""
    text = e.problem or e.context or "syntax error"
    if e.context and e.context_mark is not None and e.problem_mark is not None \
            and e.context_mark.line != e.problem_mark.line:
        text += f" ({e.context} that starts at line {e.context_mark.line + 1})"
    return text
