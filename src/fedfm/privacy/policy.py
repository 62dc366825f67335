"""A network client's own privacy policy: what it refuses, whatever the server asks.

The server sends the experiment (σ, the clipping norm, the threshold of secure aggregation,
who takes part in which round). A client that does not trust the server with its privacy states
its own terms when it joins (``fedfm join --require-secagg --min-threshold K --max-epsilon E``)
and :class:`PrivacyPolicy` holds them:

* ``require_secagg``: never send an update in the clear. An experiment without secure
  aggregation is refused at join; a round that asks for a plain update ends the client.
* ``min_threshold``: refuse a secure round whose threshold t (the fewest clients whose inputs
  a completed sum holds) is below K. With a low t, a server that drops clients on purpose learns
  the sum of few updates.
* ``max_epsilon``: the client keeps its own account (:class:`ClientLedger`) and stops taking part
  once the next round would carry ε above E. It trusts nothing the server could bend:
  no amplification by sampling (q = 1: the server picks who takes part), and each round's σ is
  what the sum is sure to carry, σ·√(t/n) for t of the n = ``clients_per_round`` shares under
  secure aggregation (σ/√n without it: the server then sees this client's share alone). Central
  DP cannot meet a budget at all: the server sees each update before it adds the noise.
* a client never sends a second masked input for a round it has already masked in another
  secure session (a round re-run after a server crash, with other survivors, would let two sums
  differ by one client's update), unless it adds fresh noise of its own (distributed DP from its
  CSPRNG): then each input is one more release in its account, and DP's composition covers
  whatever the server computes from both sums.

See docs/security.md for the threat model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fedfm.config import check
from fedfm.errors import FedFMError
from fedfm.privacy.accounting import epsilon_of_history
from fedfm.privacy.mechanisms import mechanism


class PolicyError(FedFMError):
    """The server's experiment or request breaks this client's privacy policy."""


@dataclass(frozen=True)
class PrivacyPolicy:
    """The terms a network client states at join (all off by default)."""

    require_secagg: bool = False
    min_threshold: int = 0  # 0: any threshold the protocol allows (≥ 2)
    max_epsilon: float = 0.0  # 0: no budget
    reproducible_noise: bool = False  # DP noise from the experiment's seed (the server knows it)

    def __post_init__(self) -> None:
        check(
            self.min_threshold == 0 or self.min_threshold >= 2,
            "--min-threshold",
            self.min_threshold,
            "0 (any) or an integer ≥ 2",
        )
        check(
            self.max_epsilon >= 0 and math.isfinite(self.max_epsilon),
            "--max-epsilon",
            self.max_epsilon,
            "a finite number ≥ 0 (0: no budget)",
        )

    def check_experiment(self, config) -> None:
        """Refuse, before any training, an experiment this policy can never accept."""
        secure = config.secagg.enabled
        if (self.require_secagg or self.min_threshold) and not secure:
            flag = "--require-secagg" if self.require_secagg else "--min-threshold"
            raise PolicyError(
                f"the server's experiment has secagg.enabled = false; this client requires "
                f"secure aggregation ({flag})"
            )
        if self.min_threshold and config.federation.clients_per_round < self.min_threshold:
            raise PolicyError(
                f"the server's experiment has federation.clients_per_round = "
                f"{config.federation.clients_per_round}, fewer than --min-threshold "
                f"{self.min_threshold}: no round could meet it"
            )
        if not self.max_epsilon:
            return
        dp = mechanism(config)
        if not dp.client_noise:
            why = (
                "the server adds the noise after it has seen each update"
                if dp.server_noise
                else "its updates are not differentially private"
            )
            raise PolicyError(
                f"the server's experiment has privacy.dp = {config.privacy.dp!r}: {why}, so no "
                f"ε bounds what the server learns; --max-epsilon needs privacy.dp = 'distributed'"
            )
        best = ClientLedger(self, config).round_epsilon(config.federation.clients_per_round)
        if best > self.max_epsilon:
            raise PolicyError(
                f"one round of the server's experiment (σ = {config.privacy.noise_multiplier:g}, "
                f"δ = {config.privacy.delta:g}) spends ε = {best:.3g} even when every share "
                f"reaches the sum, above --max-epsilon {self.max_epsilon:g}"
            )

    def check_plain_round(self, rnd: int) -> None:
        """A round that asks for an update in the clear."""
        if self.require_secagg:
            raise PolicyError(
                f"round {rnd}: the server asks for an update in the clear; this client requires "
                "secure aggregation (--require-secagg)"
            )


@dataclass
class ClientLedger:
    """The ε this client has spent by its own account, and the rounds it has masked."""

    policy: PrivacyPolicy
    config: object
    history: list[tuple[float, float, int]] = field(default_factory=list)
    masked: dict[int, str] = field(default_factory=dict)  # round → secure session

    def _fresh_noise(self) -> bool:
        """Each input carries noise drawn afresh by this client (then every input is one more
        accounted release, and any two sums are a composition the ledger covers)."""
        return mechanism(self.config).client_noise and not self.policy.reproducible_noise

    def _sigma(self, threshold: int) -> float:
        """The noise multiplier the sum is sure to carry (see the module docstring)."""
        sigma, shares = (
            self.config.privacy.noise_multiplier,
            self.config.federation.clients_per_round,
        )
        if threshold:  # at least t shares of std σC/√n each reach the sum
            return sigma * math.sqrt(min(threshold, shares) / shares)
        return sigma / math.sqrt(shares)  # the server sees this client's share alone

    def round_epsilon(self, threshold: int) -> float:
        """ε after the rounds so far plus one more at ``threshold`` (0: no secure sum)."""
        return epsilon_of_history(
            [*self.history, (self._sigma(threshold), 1.0, 1)], self.config.privacy.delta
        )

    def epsilon(self) -> float:
        """ε spent so far."""
        return epsilon_of_history(self.history, self.config.privacy.delta)

    def refuse(self, rnd: int, session: str, threshold: int) -> str:
        """Why this client must not send its input for round ``rnd`` ('' when it may).
        ``threshold``: the secure round's t (0 for a plain round)."""
        if session and self.masked.get(rnd, session) != session and not self._fresh_noise():
            return (
                f"round {rnd} was already masked in another secure session; without fresh "
                "noise of its own, a second masked input over the same update would let two "
                "sums differ by it"
            )
        p = self.policy
        if threshold and p.min_threshold and threshold < p.min_threshold:
            return f"the round's threshold {threshold} is below --min-threshold {p.min_threshold}"
        if p.max_epsilon and mechanism(self.config).client_noise:
            after = self.round_epsilon(threshold)
            if after > p.max_epsilon:
                return (
                    f"this round would bring ε to {after:.3g}, above --max-epsilon "
                    f"{p.max_epsilon:g} (spent: {self.epsilon():.3g})"
                )
        return ""

    def spend(self, rnd: int, session: str, threshold: int) -> None:
        """This client sent its input for round ``rnd``: account it."""
        if session:
            self.masked[rnd] = session
        if mechanism(self.config).client_noise:
            self.history.append((self._sigma(threshold), 1.0, 1))

    def exhausted(self) -> bool:
        """No further round, even one where every share reaches the sum, fits the budget."""
        p = self.policy
        if not (p.max_epsilon and mechanism(self.config).client_noise):
            return False
        return self.round_epsilon(self.config.federation.clients_per_round) > p.max_epsilon
