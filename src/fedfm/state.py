"""State and Update: the units that travel between server and clients.

A :data:`State` holds only the shared (trainable) tensors, by parameter name, in a fixed order;
the frozen base model never travels. An :class:`Update` is what a client returns after local
training. A :class:`FitInstructions` is what the server asks of one client in one round.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

State = OrderedDict[str, torch.Tensor]
"""Shared tensors by parameter name, in the model's parameter order."""


def clone_state(state: State) -> State:
    """A detached copy of ``state`` (tensors are cloned, order kept)."""
    return OrderedDict((name, t.detach().clone()) for name, t in state.items())


def state_num_params(state: State) -> int:
    """Number of scalars in ``state``."""
    return sum(t.numel() for t in state.values())


def weighted_average(states: list[State], weights: list[float]) -> State:
    """Σ wᵢ·stateᵢ / Σ wᵢ, tensor by tensor, in float32 (cast back to each tensor's dtype)."""
    if not states:
        raise ValueError("cannot average zero states")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights must sum to a positive number, got {weights}")
    out: State = OrderedDict()
    for name, ref in states[0].items():
        acc = torch.zeros_like(ref, dtype=torch.float32)
        for state, w in zip(states, weights, strict=True):
            acc.add_(state[name].to(torch.float32), alpha=w / total)
        out[name] = acc.to(ref.dtype)
    return out


@dataclass(frozen=True)
class FitInstructions:
    """What the server asks one client to do in one round (set by the Strategy)."""

    round: int
    local_steps: int
    lr: float
    batch_size: int
    local_epochs: float = 0.0  # > 0: train this many epochs over the client's rows instead
    proximal_mu: float = 0.0  # FedProx: weight of (mu/2)·||w − w_global||²
    # Federated evaluation: score the received state on the client's held-out rows, no training.
    evaluate: bool = False
    # How many of this client's uplink payloads the server has decoded (-1: not told), so a
    # stateful uplink codec (residual) re-bases after a lost or refused upload.
    uplink_decoded: int = -1


@dataclass
class Update:
    """What a client returns: its new shared state, how many examples it trained on, its metrics."""

    client_id: str
    round: int
    state: State
    num_examples: int
    metrics: dict[str, float] = field(default_factory=dict)
