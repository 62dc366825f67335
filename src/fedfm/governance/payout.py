"""Payouts from contribution values, and free-rider flags.

A client is flagged a free rider when every update it sent was (next to) nothing (its norm
below :data:`ZERO_UPDATE` of the round's median: it sent the received state back), or when its
value is not positive (it did not help, or it hurt). Flagged clients get nothing; the others
each get ``floor`` of the total, and the rest in proportion to their positive values (equal
shares when no value is positive).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from fedfm.governance.kept import KeptRound

ZERO_UPDATE = 1e-3  # an update this small against the round's median norm is no update


def update_norms(rounds: Sequence[KeptRound]) -> dict[str, list[float]]:
    """Each client's update norm relative to its round's median, per round it took part in."""
    out: dict[str, list[float]] = {}
    for kept in rounds:
        norms = {
            c: float(sum(d.pow(2).sum() for d in kept.delta(c).values()) ** 0.5)
            for c in kept.clients
        }
        median = statistics.median(norms.values()) or 1e-12
        for c, v in norms.items():
            out.setdefault(c, []).append(v / median)
    return out


def free_riders(values: dict[str, float], rounds: Sequence[KeptRound]) -> dict[str, list[str]]:
    """``{client: reasons}`` for the flagged clients: ``zero_update``, ``non_positive_value``."""
    flags: dict[str, list[str]] = {}
    norms = update_norms(rounds)
    for c, value in values.items():
        reasons = []
        if norms.get(c) and max(norms[c]) < ZERO_UPDATE:
            reasons.append("zero_update")
        if value <= 0:
            reasons.append("non_positive_value")
        if reasons:
            flags[c] = reasons
    return flags


def payouts(
    values: dict[str, float], flagged: Sequence[str], total: float = 1.0, floor: float = 0.0
) -> dict[str, float]:
    """Split ``total``: nothing to flagged clients; ``floor`` × total to each other client; the
    rest in proportion to positive values. Every client of ``values`` gets an entry."""
    paid = [c for c in values if c not in set(flagged)]
    out = dict.fromkeys(values, 0.0)
    if not paid:
        return out
    base = min(floor, 1.0 / len(paid)) * total
    rest = total - base * len(paid)
    positive = {c: max(values[c], 0.0) for c in paid}
    mass = sum(positive.values())
    for c in paid:
        share = positive[c] / mass if mass > 0 else 1.0 / len(paid)
        out[c] = base + rest * share
    return out
