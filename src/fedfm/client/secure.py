"""What a client feeds into secure aggregation, and what the server may learn from the sum.

The vector format is part of the core (simulated and network clients compute it with one
function); the protocol that sums such vectors without revealing them is a plug-in
(:mod:`fedfm.privacy.secagg`).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from fedfm.state import State


def flatten(delta: State) -> np.ndarray:
    """The tensors of ``delta`` as one float32 vector, in the state's order."""
    return torch.cat([t.reshape(-1).to(torch.float32) for t in delta.values()]).numpy()


def unflatten(vector: np.ndarray, template: State) -> State:
    """The inverse of :func:`flatten`, with ``template``'s names and shapes."""
    out, pos = OrderedDict(), 0
    flat = torch.from_numpy(np.ascontiguousarray(vector, dtype=np.float32))
    for name, t in template.items():
        out[name] = flat[pos : pos + t.numel()].reshape(t.shape).clone()
        pos += t.numel()
    return out


def secure_weight(uniform: bool, num_examples: int) -> float:
    """A client's weight in the mean: 1 under distributed DP, else its example count."""
    return 1.0 if uniform else float(num_examples)


def secure_vector(state: State, reference: State, weight: float, loss: float) -> np.ndarray:
    """What one client puts into the secure sum: ``[w·Δ (flattened), w·loss, w]``, Δ = state −
    reference. The server learns Σ w·Δ, Σ w·loss and Σ w only: the weighted mean update and
    training loss, never one client's update, weight or loss. A simulated client and a network
    client compute it with this one function, so both runs sum the same numbers."""
    delta = OrderedDict((n, state[n].float() - reference[n].float()) for n in reference)
    return np.append(flatten(delta) * weight, [weight * loss, weight])


def secure_round_metrics(bytes_up: int, bytes_down: int, seconds: float) -> dict[str, float]:
    """The protocol's cost, for the round's row."""
    return {
        "secagg_bytes_up": float(bytes_up),
        "secagg_bytes_down": float(bytes_down),
        "secagg_seconds": seconds,
    }
