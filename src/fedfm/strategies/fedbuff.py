"""FedBuff: asynchronous buffered aggregation (Nguyen et al. 2022, arXiv:2106.06639).

``clients_per_round`` clients train at once, each on the model version it downloaded. Whenever
``buffer_size`` updates have arrived, the server applies their staleness-weighted mean delta::

    w ← w + server_lr · (1/K) · Σᵢ s(τᵢ)·Δᵢ,      s(τ) = (1 + τ)^(−staleness_exponent)

where Δᵢ is client i's update against the version it started from and τᵢ how many server steps
happened since. One server step is one "round" in ``metrics.jsonl``. The loop lives in
:class:`fedfm.server.asynchronous.AsyncFederation`; this class holds the rule.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from fedfm.config import check
from fedfm.state import State, Update
from fedfm.strategies.base import STRATEGIES, Strategy


@dataclass(frozen=True)
class FedBuffSpec:
    buffer_size: int = 3  # K: updates per server step
    server_lr: float = 1.0  # step size on the buffer's mean delta
    staleness_exponent: float = 0.5  # s(τ) = (1 + τ)^−a; 0 = no discount
    max_staleness: int = 20  # older updates are dropped (logged)
    speed_sigma: float = 1.0  # simulation: log-normal spread of the clients' speeds

    def __post_init__(self) -> None:
        check(self.buffer_size >= 1, "strategy.buffer_size", self.buffer_size, "≥ 1")
        check(self.server_lr > 0, "strategy.server_lr", self.server_lr, "> 0")
        check(
            self.staleness_exponent >= 0,
            "strategy.staleness_exponent",
            self.staleness_exponent,
            "≥ 0",
        )
        check(self.max_staleness >= 0, "strategy.max_staleness", self.max_staleness, "≥ 0")
        check(self.speed_sigma >= 0, "strategy.speed_sigma", self.speed_sigma, "≥ 0")


@STRATEGIES.register("fedbuff")
class FedBuff(Strategy):
    Spec = FedBuffSpec
    asynchronous = True

    def __init__(self, spec, federation) -> None:
        super().__init__(spec, federation)
        self._metrics: dict[str, float] = {}

    def weight(self, staleness: int) -> float:
        return float((1 + staleness) ** -self.spec.staleness_exponent)

    def aggregate(self, round: int, global_state: State, updates: list[Update]) -> State:
        """``updates[i].state`` is the client's delta; ``metrics['staleness']`` its τ."""
        k = len(updates)
        weights = [self.weight(int(u.metrics.get("staleness", 0))) for u in updates]
        out: State = OrderedDict()
        for name, w in global_state.items():
            step = torch.zeros_like(w, dtype=torch.float32)
            for u, s in zip(updates, weights, strict=True):
                step.add_(u.state[name].float(), alpha=s / k)
            out[name] = (w.float() + self.spec.server_lr * step).to(w.dtype)
        stale = [int(u.metrics.get("staleness", 0)) for u in updates]
        self._metrics = {
            "staleness_mean": sum(stale) / k,
            "staleness_max": float(max(stale)),
            "staleness_weight_mean": sum(weights) / k,
        }
        return out

    def round_metrics(self) -> dict[str, float]:
        return dict(self._metrics)
