"""Valuing a run's clients: the kept rounds, the server's validation rows, a method, payouts and
flags, written to ``<run_dir>/contributions.json`` (``fedfm contrib``, or ``[governance]
contrib`` at the end of training)::

    {"method": ..., "values": {client: value}, "payouts": {client: share},
     "evaluations": n, "confidence": {client: ±}, "flags": {client: [reasons]}, ...}
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedfm.errors import ConfigError
from fedfm.governance.contrib import METHODS, value_clients
from fedfm.governance.kept import load_round, require_kept
from fedfm.governance.payout import free_riders, payouts
from fedfm.metrics.report import rebuild_report
from fedfm.prepared import Prepared
from fedfm.server.observers import RoundObserver
from fedfm.state import State

log = logging.getLogger(__name__)

CONTRIBUTIONS = "contributions.json"


def validation_rows(p: Prepared, rows: int) -> np.ndarray:
    """The server's rows each evaluation scores: the first ``rows`` of its test set (0: its
    evaluation rows, ``data.eval_rows``)."""
    if rows <= 0:
        return p.eval_rows
    return np.arange(min(rows, len(p.test)))


def scorer(p: Prepared, rows: np.ndarray):
    """A global state → its accuracy on ``rows`` (``-loss`` for a task without accuracy)."""
    if p.test_tokens is None or len(rows) == 0:
        raise ConfigError(
            "governance.contrib: the server holds no validation rows (evaluation.where = "
            "'clients'); contribution values need the server's own test set"
        )

    def score(state: State) -> float:
        p.task.set_state(state)
        metrics = p.task.evaluate(p.test_tokens, p.test.labels, rows)
        accuracy = metrics.get("accuracy")
        return float(accuracy) if accuracy is not None else -float(metrics["loss"])

    return score


def contributions(
    run_dir: Path,
    p: Prepared,
    method: str,
    budget: int = 0,
    rows: int = 0,
    floor: float = 0.0,
    total: float = 1.0,
) -> dict[str, Any]:
    """Value the clients of ``run_dir`` from its kept updates; write and return
    ``contributions.json``. ``p`` holds the task and the server's validation rows."""
    if method not in METHODS:
        raise ConfigError(f"--method {method!r} is not allowed; allowed: {', '.join(METHODS)}")
    rounds = [load_round(run_dir, r) for r in require_kept(run_dir)]
    chosen = validation_rows(p, rows)
    saved = p.task.get_state()
    t0 = time.perf_counter()
    try:
        valuation = value_clients(method, rounds, scorer(p, chosen), budget, p.config.seed)
    finally:
        p.task.set_state(saved)
    flags = free_riders(valuation.values, rounds)
    result = {
        "method": method,
        "values": valuation.values,
        "payouts": payouts(valuation.values, list(flags), total, floor),
        "evaluations": valuation.evaluations,
        "confidence": valuation.confidence,
        "flags": flags,
        "permutations": valuation.permutations,
        "utility": f"accuracy on {len(chosen)} server validation rows",
        "rounds": [r.round for r in rounds],
        "seconds": round(time.perf_counter() - t0, 3),
        "payout_total": total,
        "payout_floor": floor,
    }
    if valuation.per_round:
        result["per_round"] = {str(k): v for k, v in valuation.per_round.items()}
    path = Path(run_dir) / CONTRIBUTIONS
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    if (Path(run_dir) / "summary.json").is_file():  # a finished run: its report gets the chart
        rebuild_report(Path(run_dir))
    return result


class Contributions(RoundObserver):
    """``[governance] contrib``: value the clients once training ends."""

    def __init__(self, p: Prepared) -> None:
        self.p = p

    def finish(self, run_dir: Path, state: State, export_dir: Path) -> dict[str, Any]:
        g: Any = self.p.config.governance
        result = contributions(
            run_dir,
            self.p,
            g.contrib,
            g.contrib_budget,
            g.contrib_rows,
            g.payout_floor,
            g.payout_total,
        )
        log.info("contribution values (%s): %s", g.contrib, result["values"])
        return {"contributions": CONTRIBUTIONS, "contribution_evaluations": result["evaluations"]}
