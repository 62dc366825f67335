"""Shared fixtures: the real data under ../shared/data and a small, fast experiment config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("FEDFM_DATA", ROOT.parent / "shared" / "data")).resolve()
os.environ["FEDFM_DATA"] = str(DATA)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# A small slice of AG News: fast on 2 cores, yet real text and labels.
TINY = [
    "data.train_rows=800",
    "data.test_rows=400",
    "data.eval_rows=200",
    "data.max_length=48",
    "partition.clients=4",
    "federation.clients_per_round=2",
    "federation.rounds=2",
    "federation.local_steps=5",
    "federation.batch_size=16",
]


@pytest.fixture(autouse=True, scope="session")
def _token_cache(tmp_path_factory):
    """Token caches go to a temporary folder, not the user's ~/.cache."""
    os.environ["FEDFM_CACHE"] = str(tmp_path_factory.mktemp("fedfm-cache"))


@pytest.fixture
def tiny_config():
    """``tiny_config(*overrides)`` → an ExperimentConfig on a small AG News slice."""
    from fedfm.config import load_config

    def make(*overrides: str):
        return load_config(None, [*TINY, *overrides])

    return make


@pytest.fixture(scope="module")
def tiny_config_module():
    """Module-scoped ``tiny_config`` for fixtures that run an experiment once per module."""
    from fedfm.config import load_config

    def make(*overrides: str):
        return load_config(None, [*TINY, *overrides])

    return make
