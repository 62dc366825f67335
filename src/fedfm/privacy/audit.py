"""A privacy audit: the loss-threshold membership-inference attack (Yeom et al. 2018).

The attacker scores each row by −loss under the final model; members (rows some client trained
on) tend to have lower loss than non-members (held-out test rows). The AUC of that score is the
empirical side of ε: 0.5 means the model does not tell members apart.
"""

from __future__ import annotations

import numpy as np


def auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """P(score of a random member > score of a random non-member), ties counting one half."""
    scores = np.concatenate([member_scores, nonmember_scores])
    ranks = np.empty(len(scores))
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    # average ranks over ties
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    m, n = len(member_scores), len(nonmember_scores)
    return float((ranks[:m].sum() - m * (m + 1) / 2) / (m * n))


def membership_auc(prepared, rows: int, seed: int) -> float:
    """AUC of the loss-threshold attack: ``rows`` members drawn from the clients' training rows
    against as many non-members from the test set (rows the model never trained on)."""
    p = prepared
    rng = np.random.default_rng([seed, 0x41A])
    members = np.concatenate(p.partition.indices)
    members = rng.choice(members, size=min(rows, len(members)), replace=False)
    nonmembers = rng.choice(len(p.test), size=min(rows, len(p.test)), replace=False)
    member_loss, _ = p.task.per_example(p.train_tokens, p.train.labels, members)
    nonmember_loss, _ = p.task.per_example(p.test_tokens, p.test.labels, nonmembers)
    return auc(-member_loss, -nonmember_loss)
