"""A privacy audit: the loss-threshold membership-inference attack (Yeom et al. 2018).

The attacker scores each row by −loss under the final model; members tend to have lower loss
than non-members. The AUC of that score is the empirical side of ε: 0.5 means the model does not
tell members apart.

**Members are the rows some client actually trained on** (recorded by the clients' trainers,
``Trainer.seen``, and kept in checkpoints), not every row of the partition: with a few local
steps per round most partition rows are never drawn, and counting them as members would pull
the AUC towards 0.5. Non-members are held-out test rows, which no client trained on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata


def auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """P(score of a random member > score of a random non-member), ties counting one half
    (the Mann–Whitney U statistic over m·n)."""
    m, n = len(member_scores), len(nonmember_scores)
    if m == 0 or n == 0:
        raise ValueError(f"an AUC needs members and non-members (got {m} and {n})")
    ranks = rankdata(np.concatenate([member_scores, nonmember_scores]), method="average")
    return float((ranks[:m].sum() - m * (m + 1) / 2) / (m * n))


def membership_auc(prepared, rows: int, seed: int, trained: np.ndarray) -> tuple[float, int]:
    """AUC of the loss-threshold attack on up to ``rows`` members drawn from ``trained`` (the
    training rows clients trained on) against as many test rows; and the members used."""
    p = prepared
    rng = np.random.default_rng([seed, 0x41A])
    size = min(rows, len(trained), len(p.test))
    members = rng.choice(trained, size=size, replace=False)
    nonmembers = rng.choice(len(p.test), size=size, replace=False)
    member_loss, _ = p.task.per_example(p.train_tokens, p.train.labels, members)
    nonmember_loss, _ = p.task.per_example(p.test_tokens, p.test.labels, nonmembers)
    return auc(-member_loss, -nonmember_loss), size


def audit_summary(prepared, trained: np.ndarray | None, rows: int, seed: int) -> dict[str, Any]:
    """The audit's figures for summary.json: ``mia_auc``, the members and non-members it drew
    (``mia_rows`` each) and how many rows clients trained on (``mia_trained_rows``)."""
    trained = np.zeros(0, dtype=np.int64) if trained is None else trained
    if len(trained) == 0 or len(prepared.test) == 0:
        return {"mia_auc": None, "mia_rows": 0, "mia_trained_rows": int(len(trained))}
    value, used = membership_auc(prepared, rows, seed, trained)
    return {"mia_auc": value, "mia_rows": used, "mia_trained_rows": int(len(trained))}
