"""A privacy audit: membership-inference attacks and the figures that score them.

Two attacks, both scoring rows so that a higher score says "member":

- the **loss threshold** (Yeom et al. 2018): −loss under the final model, run at the end of every
  run with ``privacy.audit = true``;
- **offline LiRA** (Carlini et al. 2022, "Membership Inference Attacks From First Principles"):
  the row's logit-scaled confidence under the final model, compared with a Gaussian fitted to
  its confidence under shadow models that never trained on it (:func:`lira_offline`; the shadows
  are trained by ``fedfm audit --attack lira``, :mod:`fedfm.trust.lira`). Per-example
  calibration removes what the loss attack mistakes for membership: rows that are easy (low
  loss) for every model.

Besides the AUC, :func:`tpr_at_fpr` gives the true-positive rate at a low false-positive rate,
which is what LiRA argues matters: an attack that confidently identifies a few members is a
privacy failure even at an AUC near 0.5.

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
from scipy.stats import norm, rankdata


def auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """P(score of a random member > score of a random non-member), ties counting one half
    (the Mann–Whitney U statistic over m·n)."""
    m, n = len(member_scores), len(nonmember_scores)
    if m == 0 or n == 0:
        raise ValueError(f"an AUC needs members and non-members (got {m} and {n})")
    ranks = rankdata(np.concatenate([member_scores, nonmember_scores]), method="average")
    return float((ranks[:m].sum() - m * (m + 1) / 2) / (m * n))


def tpr_at_fpr(member_scores: np.ndarray, nonmember_scores: np.ndarray, fpr: float) -> float:
    """The share of members scored above the strictest threshold that lets at most
    ⌊fpr·n⌋ of the n non-members through (ties at the threshold count as negatives)."""
    n = len(nonmember_scores)
    if len(member_scores) == 0 or n == 0:
        raise ValueError(f"a TPR needs members and non-members (got {len(member_scores)} and {n})")
    if not 0 <= fpr < 1:
        raise ValueError(f"fpr = {fpr!r}; allowed: 0 ≤ fpr < 1")
    allowed = int(np.floor(fpr * n + 1e-9))  # false positives allowed
    threshold = np.sort(nonmember_scores)[::-1][allowed]  # the (allowed+1)-th highest
    return float(np.mean(member_scores > threshold))


def logit_confidence(loss: np.ndarray) -> np.ndarray:
    """LiRA's statistic from a row's cross-entropy loss: with p = exp(−loss) the probability
    of the true label, log(p / (1 − p)), computed stably (Carlini et al. 2022, §4.2: the logit
    makes the confidence close to Gaussian across models)."""
    loss = np.maximum(np.asarray(loss, dtype=np.float64), 1e-30)  # p = 1 exactly: clip
    return -loss - np.log(-np.expm1(-loss))


def lira_offline(
    target: np.ndarray, shadows: np.ndarray, global_variance: bool = True
) -> np.ndarray:
    """Offline LiRA scores (higher: member) of n rows from their statistic under the target
    model, ``target`` (n,), and under K shadow models none of which trained on them,
    ``shadows`` (K, n).

    Per row, the shadows give μ_out and σ_out; the score is log Φ((target − μ_out) / σ_out),
    the log of the one-sided test's confidence that the target's statistic is above what
    models without the row give. With few shadows (the paper: under 64) σ is pooled over all
    rows (``global_variance``), which is more stable than a per-row estimate.
    """
    shadows = np.asarray(shadows, dtype=np.float64)
    if shadows.ndim != 2 or shadows.shape[1] != len(target):
        raise ValueError(f"shadows must be (K, {len(target)}); got {shadows.shape}")
    if shadows.shape[0] < 2:
        raise ValueError(f"a Gaussian needs at least 2 shadows (got {shadows.shape[0]})")
    mean = shadows.mean(axis=0)
    if global_variance:  # the within-row variance, pooled over rows
        std = np.full_like(mean, np.sqrt(shadows.var(axis=0, ddof=1).mean()))
    else:
        std = shadows.std(axis=0, ddof=1)
    std = np.maximum(std, 1e-6)  # identical shadows: a step, not a division by zero
    return norm.logcdf((np.asarray(target, dtype=np.float64) - mean) / std)


def audit_rows(
    prepared, rows: int, seed: int, trained: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The audit's members (up to ``rows`` of ``trained``, the rows clients trained on) and as
    many non-members (test rows), drawn with the run seed: every attack scores these."""
    rng = np.random.default_rng([seed, 0x41A])
    size = min(rows, len(trained), len(prepared.test))
    members = rng.choice(trained, size=size, replace=False)
    nonmembers = rng.choice(len(prepared.test), size=size, replace=False)
    return members, nonmembers


def member_losses(prepared, members: np.ndarray, nonmembers: np.ndarray):
    """Per-row losses of the members (training rows) and non-members (test rows) under the
    task's current state."""
    p = prepared
    member_loss, _ = p.task.per_example(p.train_tokens, p.train.labels, members)
    nonmember_loss, _ = p.task.per_example(p.test_tokens, p.test.labels, nonmembers)
    return member_loss, nonmember_loss


def membership_auc(prepared, rows: int, seed: int, trained: np.ndarray) -> tuple[float, int]:
    """AUC of the loss-threshold attack on up to ``rows`` members drawn from ``trained`` (the
    training rows clients trained on) against as many test rows; and the members used."""
    members, nonmembers = audit_rows(prepared, rows, seed, trained)
    member_loss, nonmember_loss = member_losses(prepared, members, nonmembers)
    return auc(-member_loss, -nonmember_loss), len(members)


def audit_summary(prepared, trained: np.ndarray | None, rows: int, seed: int) -> dict[str, Any]:
    """The audit's figures for summary.json: ``mia_auc``, the members and non-members it drew
    (``mia_rows`` each) and how many rows clients trained on (``mia_trained_rows``)."""
    trained = np.zeros(0, dtype=np.int64) if trained is None else trained
    if len(trained) == 0 or len(prepared.test) == 0:
        return {"mia_auc": None, "mia_rows": 0, "mia_trained_rows": int(len(trained))}
    value, used = membership_auc(prepared, rows, seed, trained)
    return {"mia_auc": value, "mia_rows": used, "mia_trained_rows": int(len(trained))}
