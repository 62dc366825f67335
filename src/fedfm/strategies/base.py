"""The Strategy interface: configure a round, aggregate its updates."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from fedfm.registry import Registry
from fedfm.state import FitInstructions, State, Update


@dataclass
class ServerContext:
    """What the server offers a strategy that declares it needs more than the updates."""

    #: (round, global state) → the state the server reaches training on its own clean root set.
    root_update: Callable[[int, State], State] | None = None
    #: The experiment's seed, for a rule that draws randomness (FLAME's noise): seeded per round.
    seed: int = 0


class Strategy:
    """The server's rule. Subclasses set ``Spec`` and override :meth:`aggregate`.

    Plumbing shared by every strategy (sampling, byte accounting, validation, checkpoints) lives
    in the Federation loop; a strategy holds only its own rule and its own state. What a rule
    needs from the rest of the system it declares in the class attributes below; the assembly
    and the compatibility rules read them (nobody probes a strategy's other attributes).
    """

    Spec: ClassVar[type]
    #: Aggregates updates as they arrive, each weighed by its staleness (FedBuff): the
    #: asynchronous loop runs it, and it cannot take a one-round noisy or masked sum.
    asynchronous: ClassVar[bool] = False
    #: Needs each client's own update (robust rules, FLTrust, FedDF's ensemble): differential
    #: privacy and secure aggregation, which reveal only a noisy or masked sum, exclude it.
    needs_individual_updates: ClassVar[bool] = False
    #: Needs the server's own root-set update (FLTrust): given by :meth:`bind`.
    needs_root_update: ClassVar[bool] = False
    #: The round's updates reach it only as a masked sum (secure aggregation, set per instance).
    masks_updates: bool = False

    def __init__(self, spec, federation) -> None:
        self.spec = spec
        self.federation = federation  # FederationConfig: local budget and learning rate

    def bind(self, context: ServerContext) -> None:
        """Receive the server's context before the first round (see the ``needs_*`` flags)."""

    def select(self, round: int, clients: list[str], k: int, rng: np.random.Generator) -> list[str]:
        """Which clients train this round: ``k`` of them, uniformly without replacement."""
        k = min(k, len(clients))
        return [clients[i] for i in sorted(rng.choice(len(clients), size=k, replace=False))]

    def configure_fit(self, round: int, client_id: str) -> FitInstructions:
        """What one selected client is asked to do."""
        f = self.federation
        return FitInstructions(
            round=round,
            local_steps=f.local_steps,
            local_epochs=f.local_epochs,
            lr=f.lr,
            batch_size=f.batch_size,
        )

    def aggregate(self, round: int, global_state: State, updates: list[Update]) -> State:
        """The next global state from this round's (validated) updates."""
        raise NotImplementedError

    def dropped(self, round: int, client_ids: list[str]) -> None:
        """Selected clients that dropped out this round (before aggregate); most rules ignore it."""

    def round_metrics(self) -> dict[str, float]:
        """Figures about the last aggregation to add to the round's row (e.g. an SVD error)."""
        return {}

    def summary(self) -> dict[str, object]:
        """Figures for ``summary.json`` at the end of the run (e.g. the privacy spent)."""
        return {}

    # Server-side state (momentum, moments); saved with every checkpoint.
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        if tensors:
            raise ValueError(f"{type(self).__name__} keeps no state, got {sorted(tensors)[:3]}")


class WrappedStrategy(Strategy):
    """A strategy around another one (privacy, ensemble distillation): the inner strategy keeps
    selection, instructions and its own state; the wrapper changes only ``aggregate`` and adds
    its figures (``self._metrics``) to the inner strategy's."""

    def __init__(self, inner: Strategy) -> None:
        super().__init__(inner.spec, inner.federation)
        self.inner = inner
        self._metrics: dict[str, float] = {}
        # What the inner rule declares holds for the wrapped one (a wrapper may add to it).
        self.asynchronous = inner.asynchronous
        self.needs_individual_updates = (
            type(self).needs_individual_updates or inner.needs_individual_updates
        )
        self.needs_root_update = inner.needs_root_update
        self.masks_updates = inner.masks_updates

    def bind(self, context):
        self.inner.bind(context)

    def summary(self):
        return self.inner.summary()

    def select(self, round, clients, k, rng):
        return self.inner.select(round, clients, k, rng)

    def configure_fit(self, round, client_id):
        return self.inner.configure_fit(round, client_id)

    def dropped(self, round, client_ids):
        self.inner.dropped(round, client_ids)

    def round_metrics(self) -> dict[str, float]:
        return {**self.inner.round_metrics(), **self._metrics}

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, tensors):
        self.inner.load_state_dict(tensors)


def example_weighted_mean(updates: list[Update]) -> State:
    """Σ nₖ·wₖ / Σ nₖ over the updates' states, in float32 (then each tensor's own dtype)."""
    total = float(sum(u.num_examples for u in updates))
    out: State = OrderedDict()
    for name, ref in updates[0].state.items():
        acc = torch.zeros(ref.shape, dtype=torch.float32)
        for u in updates:
            acc.add_(u.state[name].to(torch.float32), alpha=u.num_examples / total)
        out[name] = acc.to(ref.dtype)
    return out


STRATEGIES: Registry[type[Strategy]] = Registry("strategy", "strategy.name")
