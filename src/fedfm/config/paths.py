"""Configured paths: ``${FEDFM_DATA}`` and other environment variables, ``~``."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATA_ROOT = "../shared/data"


def data_root() -> str:
    """Where ``${FEDFM_DATA}`` points: the environment variable, else ``../shared/data``."""
    return os.environ.get("FEDFM_DATA", DEFAULT_DATA_ROOT)


def resolve_path(path: str) -> Path:
    """Expand ``${FEDFM_DATA}``, ``~`` and other environment variables in a configured path."""
    env = dict(os.environ)
    env.setdefault("FEDFM_DATA", data_root())
    expanded = path.replace("${FEDFM_DATA}", env["FEDFM_DATA"]).replace(
        "$FEDFM_DATA", env["FEDFM_DATA"]
    )
    return Path(os.path.expanduser(os.path.expandvars(expanded)))
