"""Hyperparameter files: load, validate (unknown keys are errors) and fill defaults."""

from __future__ import annotations

from pathlib import Path

from utils.errors import ConfigError, MissingFileError, read_yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_HYP = ROOT / "data" / "hyps" / "hyp.scratch.yaml"


def _read_yaml(path: Path) -> dict:
    d = read_yaml(path, "hyperparameter file") or {}
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: a hyperparameter file must be a mapping of key: value")
    return d


def resolve_hyp_path(path: str | Path) -> Path:
    """Find a hyp file as given, or by name under data/hyps/ (``--hyp hyp.sod.yaml``)."""
    p = Path(path)
    for candidate in (p, ROOT / p, ROOT / "data" / "hyps" / p.name):
        if candidate.is_file():
            return candidate
    raise MissingFileError(f"hyperparameter file not found: {path}")


def load_hyp(path: str | Path | None = None) -> dict:
    """Load a hyp YAML. Keys missing from it take the values of data/hyps/hyp.scratch.yaml.

    Raises ConfigError naming the key and the file for a key the project does not know, or a
    value that is not a number.
    """
    defaults = _read_yaml(DEFAULT_HYP)
    if path is None:
        return defaults
    path = resolve_hyp_path(path)
    hyp = _read_yaml(path)
    unknown = sorted(set(hyp) - set(defaults))
    if unknown:
        raise ConfigError(f"{path}: unknown hyperparameter(s) {unknown}; known keys are listed in {DEFAULT_HYP.name}")
    for k, v in hyp.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{path}: hyperparameter '{k}' must be a number, got {v!r}")
    return {**defaults, **hyp}
