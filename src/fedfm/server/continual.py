"""Continual federated learning on the server: who can train a stage, how each stage seen so far
is scored, and the run's figures (average accuracy, forgetting; Chaudhry et al., 2018).

Each evaluated round's row carries ``stage_accuracy``: ``{"0": a0, "1": a1, ...}``, the global
model's accuracy on the evaluation rows of every stage seen so far.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from fedfm.data.stages import Stages


def holding(stages: Stages, data: Mapping[str, Any]) -> Callable[[int, list[str]], list[str]]:
    """The Federation's candidate filter: of the available clients, those holding training rows
    of round ``rnd``'s stage (``data``: client → ClientData). The others sit the round out."""
    has = [
        {cid for cid, d in data.items() if len(stages.in_stage(d.labels, d.rows, s))}
        for s in range(len(stages))
    ]

    def filter_clients(rnd: int, client_ids: list[str]) -> list[str]:
        return [cid for cid in client_ids if cid in has[stages.stage_of(rnd)]]

    return filter_clients


def stage_rows(stages: Stages, labels: np.ndarray, rows: np.ndarray) -> list[np.ndarray]:
    """The evaluation ``rows`` of each stage (by their ``labels``)."""
    return [stages.in_stage(labels, rows, s) for s in range(len(stages))]


def stage_accuracy(
    stages: Stages, rnd: int, per_stage: Sequence[np.ndarray], score: Callable[[np.ndarray], float]
) -> dict[str, float]:
    """``{stage: accuracy}`` for every stage seen by round ``rnd``; ``score(rows)`` scores the
    current global model on some evaluation rows."""
    return {str(s): score(per_stage[s]) for s in range(stages.stage_of(rnd) + 1)}


def average_accuracy(final: Mapping[str, float]) -> float:
    """The mean over the stages seen of the final model's accuracy on each stage."""
    return float(np.mean(list(final.values())))


def forgetting(history: Sequence[Mapping[str, float]]) -> float:
    """The mean over the old stages (all seen but the last) of the best accuracy ever logged on
    the stage minus the final one; 0.0 when only one stage was seen. ``history``: each evaluated
    round's ``stage_accuracy``, in order, the last one the final model's."""
    final = history[-1]
    old = sorted(final, key=int)[:-1]
    if not old:
        return 0.0
    drops = [max(h[s] for h in history if s in h) - final[s] for s in old]
    return float(np.mean(drops))


def continual_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``average_accuracy``, ``forgetting`` and the final ``stage_accuracy`` of a run's rows
    ({} when no row has stage accuracies: not a continual run)."""
    history = [r["stage_accuracy"] for r in rows if r.get("stage_accuracy")]
    if not history:
        return {}
    return {
        "average_accuracy": average_accuracy(history[-1]),
        "forgetting": forgetting(history),
        "final_stage_accuracy": dict(history[-1]),
    }
