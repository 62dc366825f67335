"""Privacy accounting of client-level DP-FedAvg, on top of opacus' accountants.

Client-level DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent Language
Models") is, round after round, the *sampled Gaussian mechanism*: each client takes part with
probability ``q = clients_per_round / num_clients``, its update is clipped to L2 norm ``C``, and
Gaussian noise of std ``σ·C`` is added to the **sum** of the clipped updates. Adding or removing
one client moves that sum by at most ``C``, so ``σ`` is exactly opacus' ``noise_multiplier``, one
round is one opacus step with ``sample_rate = q``, and the unit of privacy is a whole client (all
its examples). The maths are opacus': RDP of the sampled Gaussian (Mironov et al. 2019) with the
conversion of Balle et al. 2020, or numerical composition of privacy random variables (Gopi et
al. 2021, ``prv``, usually tighter). This module maps rounds to steps and keeps the count.

What the guarantee assumes, and the caller must keep:

* opacus analyses **Poisson** sampling (each client in independently with probability ``q``) and
  add/remove adjacency. Drawing exactly ``clients_per_round`` clients without replacement (what
  ``Strategy.select`` does) and accounting it as Poisson is the usual approximation in FL
  simulations, not a proof; a run that needs the proof samples clients by Poisson and divides by
  the *expected* count (see :func:`fedfm.privacy.dp.dp_fedavg_central`).
* every round that could have used a client's data is one step, including rounds whose result is
  later discarded, and the noise added is at least ``σ·C`` on the sum.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING

from fedfm.config import check, check_choice
from fedfm.errors import ConfigError, ResumeError

if TYPE_CHECKING:
    from fedfm.config import PrivacyConfig

ACCOUNTANTS = ("rdp", "prv")
"""The accountant kinds, as in ``privacy.accountant``."""

EPSILON_TOLERANCE = 0.01
"""Calibration stops when ε(σ) is in ``[target − 0.01, target]`` (opacus' default)."""


def _check_mechanism(kind: str, noise_multiplier: float, sample_rate: float) -> None:
    check_choice("privacy.accountant", kind, ACCOUNTANTS)
    check(
        noise_multiplier > 0 and math.isfinite(noise_multiplier),
        "privacy.noise_multiplier",
        noise_multiplier,
        "a finite number > 0 (σ = 0 gives ε = ∞)",
    )
    check(
        0 < sample_rate <= 1,
        "sample_rate",
        sample_rate,
        "0 < q ≤ 1 (clients_per_round / num_clients)",
    )


def _check_delta(delta: float) -> None:
    check(0 < delta < 1, "privacy.delta", delta, "0 < delta < 1")


def _is_count(value: object, minimum: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum


def client_sample_rate(clients_per_round: int, num_clients: int) -> float:
    """q = clients_per_round / num_clients: the chance that one client takes part in a round."""
    check(num_clients >= 1, "partition.clients", num_clients, "≥ 1")
    check(
        1 <= clients_per_round <= num_clients,
        "federation.clients_per_round",
        clients_per_round,
        f"1 … partition.clients ({num_clients})",
    )
    return clients_per_round / num_clients


def epsilon_for(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, kind: str = "rdp"
) -> float:
    """ε after ``steps`` steps of the sampled Gaussian mechanism (σ, q), at δ, by opacus' accountant.

    ``rdp`` uses opacus' default RDP orders; ``prv`` returns opacus' upper bound with its default
    ``eps_error = 0.01``. 0 steps spend ε = 0.
    """
    _check_mechanism(kind, noise_multiplier, sample_rate)
    _check_delta(delta)
    check(_is_count(steps, 0), "steps", steps, "an integer ≥ 0")
    if steps == 0:
        return 0.0
    from opacus.accountants import create_accountant  # lazy: opacus adds ~0.5 s to import time

    accountant = create_accountant(mechanism=kind)
    # The same single history entry that opacus builds from `steps` identical step() calls.
    accountant.history = [(noise_multiplier, sample_rate, int(steps))]
    with warnings.catch_warnings():
        # q = 1 makes the PRV take log(1 − q) = −inf on a branch that np.where then discards.
        warnings.filterwarnings("ignore", message="divide by zero encountered in log")
        return float(accountant.get_epsilon(delta=delta))


def epsilon_of_history(
    history: list[tuple[float, float, int]], delta: float, kind: str = "rdp"
) -> float:
    """ε at δ of a composition of sampled Gaussian mechanisms ``[(σ, q, steps), …]`` (opacus'
    history format: each entry may have its own σ and q). An empty history spends ε = 0."""
    _check_delta(delta)
    for sigma, rate, steps in history:
        _check_mechanism(kind, sigma, rate)
        check(_is_count(steps, 1), "steps", steps, "an integer ≥ 1")
    if not history:
        return 0.0
    from opacus.accountants import create_accountant

    accountant = create_accountant(mechanism=kind)
    accountant.history = [(float(s), float(q), int(n)) for s, q, n in history]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="divide by zero encountered in log")
        return float(accountant.get_epsilon(delta=delta))


@lru_cache(maxsize=64)
def noise_for_target_epsilon(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    rounds: int,
    kind: str = "rdp",
    epsilon_tolerance: float = EPSILON_TOLERANCE,
) -> float:
    """The noise multiplier σ that spends at most ``target_epsilon`` at δ over ``rounds`` steps.

    Bisection by opacus' ``get_noise_multiplier``: the σ returned has
    ``target − epsilon_tolerance ≤ ε(σ) ≤ target`` (default tolerance 0.01), measured by the same
    accountant as :func:`epsilon_for`. Takes about 1–3 s with ``rdp`` and 3–8 s with ``prv``;
    results are cached.
    """
    check(
        target_epsilon > 0 and math.isfinite(target_epsilon),
        "privacy.target_epsilon",
        target_epsilon,
        "a finite number > 0",
    )
    check_choice("privacy.accountant", kind, ACCOUNTANTS)
    check(
        0 < sample_rate <= 1,
        "sample_rate",
        sample_rate,
        "0 < q ≤ 1 (clients_per_round / num_clients)",
    )
    _check_delta(delta)
    check(_is_count(rounds, 1), "federation.rounds", rounds, "an integer ≥ 1")
    check(epsilon_tolerance > 0, "epsilon_tolerance", epsilon_tolerance, "> 0")
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="divide by zero encountered in log")
            return float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=int(rounds),
                    accountant=kind,
                    epsilon_tolerance=epsilon_tolerance,
                )
            )
    except ValueError as e:  # opacus: "The privacy budget is too low." (σ would exceed 1e6)
        raise ConfigError(
            f"privacy.target_epsilon = {target_epsilon!r} is not allowed: no noise multiplier "
            f"≤ 1e6 reaches it at delta = {delta}, q = {sample_rate}, {rounds} rounds ({e}); "
            "allowed: a larger target_epsilon or delta, or fewer rounds"
        ) from None


def resolve_noise_multiplier(privacy: PrivacyConfig, sample_rate: float, rounds: int) -> float:
    """``privacy.noise_multiplier`` if set (> 0), else σ calibrated to ``privacy.target_epsilon``."""
    if privacy.noise_multiplier > 0:
        return privacy.noise_multiplier
    return noise_for_target_epsilon(
        privacy.target_epsilon, privacy.delta, sample_rate, rounds, privacy.accountant
    )


class PrivacyAccountant:
    """The ε spent so far by client-level DP-FedAvg: one sampled-Gaussian step per round.

    A thin counter over opacus' RDP or PRV accountant (see :func:`epsilon_for`); σ and q are fixed
    for the run, so the number of rounds is its whole state.
    """

    def __init__(self, kind: str, noise_multiplier: float, sample_rate: float) -> None:
        _check_mechanism(kind, noise_multiplier, sample_rate)
        self.kind = kind
        self.noise_multiplier = float(noise_multiplier)
        self.sample_rate = float(sample_rate)
        self._steps = 0
        self._cache: dict[tuple[int, float], float] = {}

    @property
    def steps(self) -> int:
        """Rounds accounted so far."""
        return self._steps

    def step(self) -> None:
        """Account one round (call it for every round that could have used client data)."""
        self._steps += 1

    def epsilon(self, delta: float) -> float:
        """ε spent so far at δ (an upper bound for ``prv``)."""
        key = (self._steps, float(delta))
        if key not in self._cache:
            self._cache[key] = epsilon_for(
                self.noise_multiplier, self.sample_rate, self._steps, delta, self.kind
            )
        return self._cache[key]

    def state_dict(self) -> dict[str, int]:
        """What a checkpoint must keep: ``{"steps": rounds accounted}``."""
        return {"steps": self._steps}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Restore the count saved by :meth:`state_dict`."""
        steps = state.get("steps") if isinstance(state, Mapping) else None
        if not _is_count(steps, 0):
            raise ResumeError(
                f"privacy accountant state {state!r} is not allowed; allowed: {{'steps': int ≥ 0}}"
            )
        self._steps = int(steps)

    def __repr__(self) -> str:
        return (
            f"PrivacyAccountant(kind={self.kind!r}, noise_multiplier={self.noise_multiplier}, "
            f"sample_rate={self.sample_rate}, steps={self._steps})"
        )
