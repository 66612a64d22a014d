"""Shared test fixtures: the repository root and a thread count that suits a 2-core CI machine.

The repository root is on sys.path through pytest's ``pythonpath`` setting (pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    return SHARED_DATASETS
