"""The server's scoring of a global state each round: its test rows, and beside them what the
run also measures there (a backdoor's trigger test, each continual stage's rows, an offsite
emulator's figures). Built by :mod:`fedfm.assemble` from a prepared experiment."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedfm.prepared import Prepared
from fedfm.server.continual import stage_accuracy, stage_rows
from fedfm.state import State


def evaluator(p: Prepared, rows: np.ndarray | None):
    """The server's evaluation of a global state on its test rows (and the trigger test); in a
    continual run, given the round, also on the rows of each stage seen (``stage_accuracy``)."""
    if p.stages is not None:
        everyone = np.arange(len(p.test)) if rows is None else rows
        per_stage = stage_rows(p.stages, p.test.labels, everyone)

    def evaluate(state: State, rnd: int | None = None) -> dict[str, Any]:
        p.task.set_state(state)
        metrics = p.task.evaluate(p.test_tokens, p.test.labels, rows)
        if p.stages is not None and rnd is not None:
            metrics["stage_accuracy"] = stage_accuracy(
                p.stages,
                rnd,
                per_stage,
                lambda r: p.task.evaluate(p.test_tokens, p.test.labels, r)["accuracy"],
            )
        if p.triggered is not None:  # backdoor: share of triggered rows classified as the target
            tokens, labels = p.triggered
            target = np.full(len(labels), p.attack.target, dtype=labels.dtype)
            metrics["attack_success_rate"] = p.task.evaluate(tokens, target)["accuracy"]
        if p.client_task is not None:  # offsite: the emulator's figures beside the full model's
            p.client_task.set_state(state)
            emulated = p.client_task.evaluate(p.test_tokens, p.test.labels, rows)
            metrics.update({f"emulator_{k}": v for k, v in emulated.items()})
        return metrics

    return evaluate
