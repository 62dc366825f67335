"""FedAvg (McMahan et al. 2017, arXiv:1602.05629) and FedProx (Li et al. 2020, arXiv:1812.06127)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from fedfm.config import check
from fedfm.state import FitInstructions, State, Update
from fedfm.strategies.base import STRATEGIES, Strategy, example_weighted_mean


@dataclass(frozen=True)
class FedAvgSpec:
    pass


@STRATEGIES.register("fedavg")
class FedAvg(Strategy):
    """The next global state is the example-weighted mean of the clients' states."""

    Spec = FedAvgSpec

    def aggregate(self, round: int, global_state: State, updates: list[Update]) -> State:
        return example_weighted_mean(updates)


@dataclass(frozen=True)
class FedProxSpec:
    mu: float = 0.01  # proximal term (mu/2)·‖w − w_global‖² added to each client's loss

    def __post_init__(self) -> None:
        check(self.mu >= 0 and math.isfinite(self.mu), "strategy.mu", self.mu, "≥ 0")


@STRATEGIES.register("fedprox")
class FedProx(FedAvg):
    """FedAvg whose clients add (mu/2)·‖w − w_global‖² to their loss, limiting client drift."""

    Spec = FedProxSpec

    def configure_fit(self, round: int, client_id: str) -> FitInstructions:
        return replace(super().configure_fit(round, client_id), proximal_mu=self.spec.mu)
