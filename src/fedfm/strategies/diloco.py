"""DiLoCo: an outer Nesterov-momentum SGD step on the averaged pseudo-gradient.

Douillard et al. 2023, "DiLoCo: Distributed Low-Communication Training of Language Models"
(arXiv:2311.08105), Algorithm 1. Each client runs H inner AdamW steps (``federation.local_steps``,
``federation.optimizer = "adamw"``) from the global weights θ; the server forms the outer
gradient Δ = θ − mean_k(θ_k) (example-weighted) and applies SGD with Nesterov momentum
(PyTorch's form, as in the paper and OpenDiLoCo)::

    v ← μ·v + Δ
    θ ← θ − η·(Δ + μ·v)        (Nesterov; without it θ ← θ − η·v)

with outer learning rate η = ``strategy.outer_lr`` (0.7 in the paper) and momentum
μ = ``strategy.momentum`` (0.9). With η = 1 and μ = 0 the step is θ − (θ − mean) = mean: FedAvg,
exactly (the step is taken in float64, where that difference of float32 values is exact). Uplink
codecs apply to the clients' deltas, i.e. the pseudo-gradient (``codec.up = ["delta", "int8"]``
is streaming DiLoCo's quantised outer gradient).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch

from fedfm.config import check
from fedfm.state import State, Update
from fedfm.strategies.base import STRATEGIES, example_weighted_mean
from fedfm.strategies.fedopt import _ServerOptimizer


@dataclass(frozen=True)
class DiLoCoSpec:
    outer_lr: float = 0.7  # the server's (outer) learning rate on the mean delta
    momentum: float = 0.9  # the outer optimizer's momentum
    nesterov: bool = True  # Nesterov momentum (DiLoCo's outer optimizer)

    def __post_init__(self) -> None:
        check(
            0 < self.outer_lr <= 10 and math.isfinite(self.outer_lr),
            "strategy.outer_lr",
            self.outer_lr,
            "0 < outer_lr ≤ 10 (0.7 in DiLoCo; 1 with momentum 0 is FedAvg)",
        )
        check(0 <= self.momentum < 1, "strategy.momentum", self.momentum, "0 ≤ momentum < 1")
        check(isinstance(self.nesterov, bool), "strategy.nesterov", self.nesterov, "true or false")


@STRATEGIES.register("diloco")
class DiLoCo(_ServerOptimizer):
    """Outer Nesterov SGD on Δ = θ − mean(θ_k); the momentum buffer is checkpointed."""

    Spec = DiLoCoSpec
    buffers = ("v",)

    def aggregate(self, round: int, global_state: State, updates: list[Update]) -> State:
        mean = example_weighted_mean(updates)
        out: State = OrderedDict()
        for name, w in global_state.items():
            w64 = w.to(torch.float64)
            outer_grad = w64 - mean[name].to(torch.float64)
            out[name] = (w64 - self.step(name, outer_grad)).to(w.dtype)
        return out

    def step(self, name: str, outer_grad: torch.Tensor) -> torch.Tensor:
        """η·(Δ + μ·v) after v ← μ·v + Δ (Nesterov), or η·v; v is kept in float32."""
        s = self.spec
        if s.momentum == 0:
            return s.outer_lr * outer_grad
        v = self._buffer("v", name, outer_grad.to(torch.float32))
        v.mul_(s.momentum).add_(outer_grad.to(torch.float32))
        direction = outer_grad + s.momentum * v.to(torch.float64) if s.nesterov else v.double()
        return s.outer_lr * direction
