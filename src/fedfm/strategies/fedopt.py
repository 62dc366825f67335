"""Server-side optimisers on the FedAvg pseudo-gradient.

FedAvgM (Hsu et al. 2019, arXiv:1909.06335) and FedAdagrad / FedAdam / FedYogi (Reddi et al.
2021, "Adaptive Federated Optimization", arXiv:2003.00295, Algorithm 2). With the pseudo-gradient
Δ = mean_k(w_k) − w (example-weighted):

    FedAvgM:    v ← momentum·v + Δ;                      w ← w + server_lr·v
    FedAdagrad: v ← v + Δ²
    FedAdam:    m ← β₁m + (1−β₁)Δ;  v ← β₂v + (1−β₂)Δ²
    FedYogi:    m ← β₁m + (1−β₁)Δ;  v ← v − (1−β₂)Δ²·sign(v − Δ²)
    (adaptive)  w ← w + server_lr · m / (√v + τ)      (FedAdagrad uses m ← β₁m + (1−β₁)Δ too)

As in the paper, no bias correction, and v starts at τ².
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import torch

from fedfm.config import check
from fedfm.state import State, Update
from fedfm.strategies.base import STRATEGIES, Strategy, example_weighted_mean


@dataclass(frozen=True)
class FedAvgMSpec:
    server_lr: float = 1.0  # the server's learning rate on the mean delta
    momentum: float = 0.9  # the server's momentum

    def __post_init__(self) -> None:
        check(
            self.server_lr > 0 and math.isfinite(self.server_lr),
            "strategy.server_lr",
            self.server_lr,
            "> 0",
        )
        check(0 <= self.momentum < 1, "strategy.momentum", self.momentum, "0 ≤ momentum < 1")


@dataclass(frozen=True)
class FedAdaptiveSpec:
    server_lr: float = 0.01  # the server's learning rate on the mean delta
    betas: tuple[float, float] = (0.9, 0.99)  # the adaptive optimizer's β1, β2
    tau: float = 1e-3  # adaptivity: τ added to the root of the second moment

    def __post_init__(self) -> None:
        check(
            self.server_lr > 0 and math.isfinite(self.server_lr),
            "strategy.server_lr",
            self.server_lr,
            "> 0",
        )
        check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "strategy.betas",
            list(self.betas),
            "two numbers in [0, 1), e.g. [0.9, 0.99]",
        )
        check(self.tau > 0, "strategy.tau", self.tau, "> 0")


# One Spec class per strategy: the registry maps a Spec back to its strategy's name.
@dataclass(frozen=True)
class FedAdagradSpec(FedAdaptiveSpec):
    pass


@dataclass(frozen=True)
class FedAdamSpec(FedAdaptiveSpec):
    pass


@dataclass(frozen=True)
class FedYogiSpec(FedAdaptiveSpec):
    pass


class _ServerOptimizer(Strategy):
    """Shared by the FedOpt family: keeps per-tensor buffers, applies :meth:`step` to Δ."""

    buffers: tuple[str, ...] = ()

    def __init__(self, spec, federation) -> None:
        super().__init__(spec, federation)
        self.state: dict[str, State] = {b: OrderedDict() for b in self.buffers}

    def aggregate(self, round: int, global_state: State, updates: list[Update]) -> State:
        mean = example_weighted_mean(updates)
        out: State = OrderedDict()
        for name, w in global_state.items():
            delta = mean[name].to(torch.float32) - w.to(torch.float32)
            out[name] = (w.to(torch.float32) + self.step(name, delta)).to(w.dtype)
        return out

    def step(self, name: str, delta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _buffer(self, kind: str, name: str, like: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        buf = self.state[kind].get(name)
        if buf is None:
            buf = self.state[kind][name] = torch.full_like(like, fill)
        return buf

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            f"{kind}/{name}": t for kind, bufs in self.state.items() for name, t in bufs.items()
        }

    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        self.state = {b: OrderedDict() for b in self.buffers}
        for key, t in tensors.items():
            kind, _, name = key.partition("/")
            if kind not in self.state:
                raise ValueError(f"unexpected strategy state {key!r} for {type(self).__name__}")
            self.state[kind][name] = t.clone()


@STRATEGIES.register("fedavgm")
class FedAvgM(_ServerOptimizer):
    """FedAvg with server momentum."""

    Spec = FedAvgMSpec
    buffers = ("v",)

    def step(self, name, delta):
        v = self._buffer("v", name, delta)
        v.mul_(self.spec.momentum).add_(delta)
        return self.spec.server_lr * v


class _Adaptive(_ServerOptimizer):
    Spec = FedAdaptiveSpec
    buffers = ("m", "v")

    def step(self, name, delta):
        beta1, beta2 = self.spec.betas
        tau = self.spec.tau
        m = self._buffer("m", name, delta)
        v = self._buffer("v", name, delta, fill=tau * tau)
        m.mul_(beta1).add_(delta, alpha=1 - beta1)
        self.update_v(v, delta * delta, beta2)
        return self.spec.server_lr * m / (v.sqrt() + tau)

    def update_v(self, v: torch.Tensor, delta_sq: torch.Tensor, beta2: float) -> None:
        raise NotImplementedError


@STRATEGIES.register("fedadagrad")
class FedAdagrad(_Adaptive):
    """Server Adagrad: v accumulates Δ²."""

    Spec = FedAdagradSpec

    def update_v(self, v, delta_sq, beta2):
        v.add_(delta_sq)


@STRATEGIES.register("fedadam")
class FedAdam(_Adaptive):
    """Server Adam: v is an exponential average of Δ²."""

    Spec = FedAdamSpec

    def update_v(self, v, delta_sq, beta2):
        v.mul_(beta2).add_(delta_sq, alpha=1 - beta2)


@STRATEGIES.register("fedyogi")
class FedYogi(_Adaptive):
    """Server Yogi: v moves towards Δ² additively, by sign."""

    Spec = FedYogiSpec

    def update_v(self, v, delta_sq, beta2):
        v.sub_((1 - beta2) * delta_sq * torch.sign(v - delta_sq))
