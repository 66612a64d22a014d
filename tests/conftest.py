"""Shared test fixtures: the repository root, one compute thread, and the optional shared datasets.

The repository root is on sys.path through pytest's ``pythonpath`` setting (pyproject.toml).
Tests never need anything beside the repository: ``shared_datasets`` skips a test when the full
datasets folder (``../shared/datasets``) is absent, and only checks about that folder itself use it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"

# One thread: the test models are tiny, and on a busy 2-core machine two OpenMP threads that
# wait on each other spin and run up to 50x slower (measured: a 30-step fit took 280 s vs 6 s).
# Scripts started by subprocess inherit the setting through the environment.
if not os.environ.get("OMP_NUM_THREADS", "").isdigit():
    os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """``../shared/datasets`` beside the repository; skips the test when it is not there."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"{SHARED_DATASETS} is not beside the repository")
    return SHARED_DATASETS
