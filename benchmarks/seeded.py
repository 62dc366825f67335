"""What the seeded bench scripts share: a per-run record kept on disk (a finished run is not
repeated when a script is run again) and the spread of a figure over seeds."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np


def cached_run(out: Path, system: str, seed: int, run: Callable[[], dict]) -> dict:
    """``OUT/per-run/SYSTEM-sSEED.json`` if a run left it, else ``run()``'s record, written there."""
    target = out / "per-run" / f"{system}-s{seed}.json"
    if target.is_file():
        return json.loads(target.read_text())
    record = run()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(record, indent=2) + "\n")
    return record


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value) and every value."""
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        "each": values,
    }
