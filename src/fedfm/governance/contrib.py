"""Contribution values from the kept updates, without retraining.

A *utility* scores a global state on the server's validation rows (accuracy; ``-loss`` for a
task without accuracy). Every method rebuilds the aggregates it needs from the kept updates
(:class:`~fedfm.governance.kept.KeptRound`), so its cost is evaluations, not training runs:

``loo``          round-wise leave-one-out: Σₜ Uₜ(Nₜ) − Uₜ(Nₜ∖{i}), Nₜ the clients of round t,
                 Uₜ(S) the utility of round t's start moved by the mean update of S;
``gtg_shapley``  GTG-Shapley (Liu et al., 2022): the round-wise Shapley value Σₜ φᵢᵗ of the same
                 Uₜ, estimated from guided permutations (each client leads in turn) with
                 between-round truncation (a round that did not change the utility is skipped)
                 and within-round truncation (once a prefix is as good as the whole round, the
                 rest add nothing), until the estimates settle or the budget is spent;
``tmc_shapley``  truncated Monte-Carlo Shapley (Ghorbani & Zou, 2019) of the whole run: V(S) is
                 the utility of the model rebuilt by replaying every round with only S's kept
                 updates (multi-round reconstruction), V(N) the trained model (FedAvg).

Sampled methods report a 95% confidence half-width per client (1.96 standard errors of the
sampled marginals). Subsets are cached: one evaluation per distinct aggregate.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fedfm.governance.kept import KeptRound
from fedfm.state import State

log = logging.getLogger(__name__)

Score = Callable[[State], float]

ROUND_TRUNCATION = 1e-3  # |Uₜ(Nₜ) − Uₜ(∅)| below this: the round moved nothing, skip it
PREFIX_TRUNCATION = 1e-3  # a prefix within this of the whole: the rest add nothing
SETTLED = 0.05  # the estimates settled: mean relative change over the last n permutations
MAX_PERMUTATIONS = 100  # per client (and round): a cap when every subset is already cached


@dataclass
class Valuation:
    method: str
    values: dict[str, float]  # higher = more useful
    confidence: dict[str, float] = field(default_factory=dict)  # 95% half-width (sampled)
    evaluations: int = 0
    permutations: int = 0
    per_round: dict[int, dict[str, float]] = field(default_factory=dict)


class Utility:
    """``score`` of aggregates, cached by what they are built from; counts evaluations and
    logs progress on long valuations."""

    def __init__(self, score: Score) -> None:
        self.score = score
        self.cache: dict[tuple, float] = {}
        self.evaluations = 0
        self._last_log = time.monotonic()

    def of(self, key: tuple, build: Callable[[], State]) -> float:
        if key not in self.cache:
            self.cache[key] = float(self.score(build()))
            self.evaluations += 1
            if time.monotonic() - self._last_log > 10:
                self._last_log = time.monotonic()
                log.info("contribution: %d evaluations so far", self.evaluations)
        return self.cache[key]

    def round(self, kept: KeptRound, subset: Sequence[str]) -> float:
        """Uₜ(S): round ``kept``'s start moved by the mean update of ``subset``."""
        key = ("round", kept.round, frozenset(subset))
        return self.of(key, lambda: kept.aggregate(subset))


def clients_of(rounds: Sequence[KeptRound]) -> list[str]:
    """Every client that took part, in order of first appearance."""
    seen: dict[str, None] = {}
    for kept in rounds:
        seen.update(dict.fromkeys(kept.clients))
    return list(seen)


def leave_one_out(rounds: Sequence[KeptRound], utility: Utility) -> Valuation:
    values = dict.fromkeys(clients_of(rounds), 0.0)
    per_round: dict[int, dict[str, float]] = {}
    for kept in rounds:
        whole = utility.round(kept, kept.clients)
        per_round[kept.round] = {}
        for c in kept.clients:
            marginal = whole - utility.round(kept, [x for x in kept.clients if x != c])
            per_round[kept.round][c] = marginal
            values[c] += marginal
    return Valuation("loo", values, evaluations=utility.evaluations, per_round=per_round)


def exact_round_shapley(rounds: Sequence[KeptRound], utility: Utility) -> Valuation:
    """The exact round-wise Shapley values (every subset of every round: 2ⁿ evaluations per
    round); the reference the sampled estimates are tested against."""
    values = dict.fromkeys(clients_of(rounds), 0.0)
    for kept in rounds:
        n = len(kept.clients)
        for i, c in enumerate(kept.clients):
            others = [x for j, x in enumerate(kept.clients) if j != i]
            for mask in range(1 << (n - 1)):
                s = [others[j] for j in range(n - 1) if mask >> j & 1]
                w = math.factorial(len(s)) * math.factorial(n - len(s) - 1) / math.factorial(n)
                values[c] += w * (utility.round(kept, [*s, c]) - utility.round(kept, s))
    return Valuation("exact_shapley", values, evaluations=utility.evaluations)


class _Running:
    """Running mean and variance of each client's sampled marginals (Welford)."""

    def __init__(self, clients: Sequence[str]) -> None:
        self.n = dict.fromkeys(clients, 0)
        self.mean = dict.fromkeys(clients, 0.0)
        self.m2 = dict.fromkeys(clients, 0.0)

    def add(self, client: str, x: float) -> None:
        self.n[client] += 1
        d = x - self.mean[client]
        self.mean[client] += d / self.n[client]
        self.m2[client] += d * (x - self.mean[client])

    def half_width(self, client: str) -> float:
        n = self.n[client]
        return 1.96 * math.sqrt(self.m2[client] / (n - 1) / n) if n > 1 else float("inf")


def _settled(history: list[dict[str, float]], n: int) -> bool:
    """The estimates moved less than :data:`SETTLED` (relative, on average) over the last
    ``n`` permutations."""
    if len(history) <= n:
        return False
    now, then = history[-1], history[-1 - n]
    scale = sum(abs(v) for v in now.values()) / len(now) or 1e-12
    change = sum(abs(now[c] - then[c]) for c in now) / len(now)
    return change / scale < SETTLED


def _permutation(clients: Sequence[str], k: int, rng: np.random.Generator) -> list[str]:
    """The k-th guided permutation: client k mod n leads, the rest in random order."""
    lead = clients[k % len(clients)]
    rest = [c for c in clients if c != lead]
    return [lead, *(rest[i] for i in rng.permutation(len(rest)))]


def _walk(
    order: Sequence[str],
    value: Callable[[Sequence[str]], float],
    empty: float,
    whole: float,
    running: _Running,
) -> None:
    """One permutation's marginals, truncated once a prefix is as good as the whole."""
    previous = empty
    for j, c in enumerate(order):
        if abs(whole - previous) < PREFIX_TRUNCATION:
            running.add(c, 0.0)
            continue
        v = value(order[: j + 1])
        running.add(c, v - previous)
        previous = v


def gtg_shapley(
    rounds: Sequence[KeptRound], utility: Utility, budget: int, rng: np.random.Generator
) -> Valuation:
    """GTG-Shapley; ``budget`` caps the evaluations (0: 20·n per round)."""
    clients = clients_of(rounds)
    values = dict.fromkeys(clients, 0.0)
    variance = dict.fromkeys(clients, 0.0)
    per_round: dict[int, dict[str, float]] = {}
    permutations = 0
    for t, kept in enumerate(rounds):
        n = len(kept.clients)
        cap = budget if budget else 20 * n * len(rounds)
        round_cap = utility.evaluations + max(1, (cap - utility.evaluations) // (len(rounds) - t))
        empty = utility.round(kept, [])
        whole = utility.round(kept, kept.clients)
        if abs(whole - empty) < ROUND_TRUNCATION:  # between-round truncation
            per_round[kept.round] = dict.fromkeys(kept.clients, 0.0)
            continue
        running = _Running(kept.clients)
        history: list[dict[str, float]] = []
        k = 0
        # Each client leads once at least; then until the budget is spent or the values settle.
        while (utility.evaluations < round_cap or k < n) and k < MAX_PERMUTATIONS * n:
            order = _permutation(kept.clients, k, rng)
            _walk(order, lambda s, kept=kept: utility.round(kept, s), empty, whole, running)
            k += 1
            history.append(dict(running.mean))
            if k >= 2 * n and _settled(history, n):
                break
        permutations += k
        per_round[kept.round] = dict(running.mean)
        for c in kept.clients:
            values[c] += running.mean[c]
            variance[c] += running.half_width(c) ** 2
    confidence = {c: math.sqrt(v) for c, v in variance.items()}
    return Valuation(
        "gtg_shapley", values, confidence, utility.evaluations, permutations, per_round
    )


class Replay:
    """V(S): the model rebuilt by replaying every kept round with only S's updates (each the
    client's state minus that round's recorded start), from the first round's start."""

    def __init__(self, rounds: Sequence[KeptRound]) -> None:
        self.start = rounds[0].before
        self.rounds = [
            (set(k.clients), {c: k.delta(c) for c in k.clients}, dict(k.examples)) for k in rounds
        ]

    def __call__(self, subset: Sequence[str]) -> State:
        members = set(subset)
        out = OrderedDict((n, t.to(torch.float32).clone()) for n, t in self.start.items())
        for clients, deltas, examples in self.rounds:
            taking = [c for c in deltas if c in members and c in clients]
            if not taking:
                continue
            total = float(sum(examples[c] for c in taking))
            for c in taking:
                for name, d in deltas[c].items():
                    out[name].add_(d, alpha=examples[c] / total)
        return OrderedDict((n, out[n].to(t.dtype)) for n, t in self.start.items())


def tmc_shapley(
    rounds: Sequence[KeptRound], utility: Utility, budget: int, rng: np.random.Generator
) -> Valuation:
    """Truncated Monte-Carlo Shapley of the replayed run; ``budget`` caps the evaluations
    (0: 30·n)."""
    clients = clients_of(rounds)
    n = len(clients)
    replay = Replay(rounds)
    cap = budget if budget else 30 * n

    def value(subset: Sequence[str]) -> float:
        return utility.of(("replay", frozenset(subset)), lambda: replay(subset))

    empty, whole = value([]), value(clients)
    running = _Running(clients)
    history: list[dict[str, float]] = []
    k = 0
    while (utility.evaluations < cap or k < n) and k < MAX_PERMUTATIONS * n:
        _walk(_permutation(clients, k, rng), value, empty, whole, running)
        k += 1
        history.append(dict(running.mean))
        if k >= 2 * n and _settled(history, n):
            break
    confidence = {c: running.half_width(c) for c in clients}
    return Valuation("tmc_shapley", dict(running.mean), confidence, utility.evaluations, k)


METHODS = ("loo", "gtg_shapley", "tmc_shapley")


def value_clients(
    method: str,
    rounds: Sequence[KeptRound],
    score: Score,
    budget: int = 0,
    seed: int = 0,
) -> Valuation:
    """Each client's value by ``method`` (one of :data:`METHODS`) from the kept ``rounds``."""
    utility = Utility(score)
    rng = np.random.default_rng([seed, 0xC0417])
    if method == "loo":
        return leave_one_out(rounds, utility)
    if method == "gtg_shapley":
        return gtg_shapley(rounds, utility, budget, rng)
    if method == "tmc_shapley":
        return tmc_shapley(rounds, utility, budget, rng)
    raise ValueError(f"unknown contribution method {method!r}; allowed: {', '.join(METHODS)}")
