"""FoolsGold (Fung et al. 2020, "The Limitations of Federated Learning in Sybil Settings", RAID).

Sybils and colluding attackers pushing one backdoor send updates that look alike *round after
round*, while honest clients with their own data keep differing. FoolsGold keeps each client's
history Hₖ = Σ of all the deltas it has sent, and down-weights clients whose histories are too
similar to another's (Algorithm 1 of the paper, over this round's clients):

1. csᵢⱼ = cos(Hᵢ, Hⱼ), i ≠ j; vᵢ = maxⱼ csᵢⱼ.
2. Pardoning: if vⱼ > vᵢ, csᵢⱼ ·= vᵢ / vⱼ (an honest client that merely resembles a sybil is
   not punished as much as the sybils that resemble each other).
3. αᵢ = 1 − maxⱼ csᵢⱼ, clipped to [0, 1], scaled so the largest is 1 (then 0.99), and passed
   through the logit κ·(ln(α / (1 − α)) + 0.5), clipped to [0, 1] (κ = ``confidence``).
4. The aggregate is the α-weighted mean of this round's deltas (the paper adds Σ αᵢΔᵢ with the
   server's learning rate; the mean keeps FedAvg's scale). If every α is 0 the global state is
   kept.

The paper also weighs each coordinate by its importance in the output layer; fedfm compares the
whole shared state (for LoRA, the adapters and the head), as its reference implementation does by
default. The histories are the strategy's state: saved with every checkpoint, so a resumed run
keeps them (d floats per client seen: 0.3 MB a client for LoRA r 8 on MiniLM).

Reports ``foolsgold_weight_min`` and ``foolsgold_weight_mean``; a client whose weight is 0 counts
as rejected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedfm.config import check
from fedfm.state import State, Update
from fedfm.strategies.base import STRATEGIES
from fedfm.strategies.robust import RobustRule

HISTORY = "foolsgold.history/"  # state_dict key prefix: + client id → its summed deltas


def foolsgold_weights(histories: torch.Tensor, confidence: float = 1.0) -> torch.Tensor:
    """(n,) weights in [0, 1] from the (n, d) clients' histories (Algorithm 1 of the paper)."""
    n = histories.shape[0]
    if n == 1:
        return torch.ones(1)
    x = histories.to(torch.float64)
    norms = x.norm(dim=1, keepdim=True)
    unit = torch.where(norms > 0, x / norms.clamp_min(1e-300), 0.0)
    cs = unit @ unit.T
    cs.fill_diagonal_(-math.inf)
    v = cs.max(dim=1).values
    # Pardoning: row i's similarity to j is scaled by v_i / v_j where j is the more similar one.
    pardon = torch.where(v[None, :] > v[:, None], v[:, None] / v[None, :], torch.ones_like(cs))
    cs = torch.where(torch.isfinite(cs), cs * pardon, cs)
    alpha = (1 - cs.max(dim=1).values).clamp(0.0, 1.0)
    if alpha.max() <= 0:
        return torch.zeros(n)
    alpha = alpha / alpha.max()
    alpha[alpha == 1] = 0.99
    logit = confidence * (torch.log(alpha / (1 - alpha)) + 0.5)  # log 0 → −inf → 0 below
    return logit.nan_to_num(nan=0.0, neginf=0.0, posinf=1.0).clamp(0.0, 1.0).to(torch.float32)


@dataclass(frozen=True)
class FoolsGoldSpec:
    confidence: float = 1.0  # κ: the logit's slope (the paper's confidence parameter)

    def __post_init__(self) -> None:
        check(
            self.confidence > 0 and math.isfinite(self.confidence),
            "strategy.confidence",
            self.confidence,
            "> 0",
        )


@STRATEGIES.register("foolsgold")
class FoolsGold(RobustRule):
    """FoolsGold: down-weight clients whose update histories look alike (Fung et al. 2020,
    arXiv:1808.04866)."""

    Spec = FoolsGoldSpec

    def __init__(self, spec, federation) -> None:
        super().__init__(spec, federation)
        self.histories: dict[str, torch.Tensor] = {}
        self._ids: list[str] = []

    def aggregate(self, round: int, global_state: State, updates: list[Update]) -> State:
        self._ids = [u.client_id for u in updates]  # combine() sees rows, the history needs ids
        return super().aggregate(round, global_state, updates)

    def combine(self, round, global_state, deltas, weights):
        for client_id, delta in zip(self._ids, deltas, strict=True):
            past = self.histories.get(client_id)
            self.histories[client_id] = delta.clone() if past is None else past + delta
        history = torch.stack([self.histories[c] for c in self._ids])
        alpha = foolsgold_weights(history, self.spec.confidence)
        excluded = torch.nonzero(alpha == 0).flatten().tolist()
        self.metrics |= {
            "foolsgold_weight_min": float(alpha.min()),
            "foolsgold_weight_mean": float(alpha.mean()),
        }
        if alpha.sum() == 0:
            return torch.zeros(deltas.shape[1]), excluded
        return (alpha @ deltas) / alpha.sum(), excluded

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {HISTORY + c: h for c, h in sorted(self.histories.items())}

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        unknown = [k for k in tensors if not k.startswith(HISTORY)]
        if unknown:
            raise ValueError(f"FoolsGold keeps only {HISTORY}* tensors, got {unknown[:3]}")
        self.histories = {k[len(HISTORY) :]: t.to(torch.float32) for k, t in tensors.items()}
