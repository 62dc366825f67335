"""A strategy defined outside fedfm: the geometric median of the client deltas (RFA).

Robust Federated Aggregation (Pillutla, Kakade & Harchaoui 2022, IEEE TSP, arXiv:1912.13445):
the aggregate is the point that minimises the example-weighted sum of Euclidean distances to the
client deltas, found with the smoothed Weiszfeld algorithm. Unlike the coordinate-wise median it
is rotation-invariant, and one client can move it by at most a bounded amount however far away
its update is.

Use it without editing fedfm::

    # my_experiment.toml
    [plugins]
    modules = ["geomedian"]      # this file, next to the config or on sys.path

    [strategy]
    name = "geomedian"
    iterations = 10

(see docs/guide.md, "Plug-ins from your own code").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedfm.config import check
from fedfm.strategies import STRATEGIES, Strategy
from fedfm.strategies.robust import apply_delta, flatten_deltas


@dataclass(frozen=True)
class GeoMedianSpec:
    iterations: int = 10  # smoothed Weiszfeld steps (RFA: 3-10 are enough in practice)
    epsilon: float = 1e-6  # smoothing: no distance is taken below it (avoids division by 0)

    def __post_init__(self) -> None:
        check(self.iterations >= 1, "strategy.iterations", self.iterations, "≥ 1")
        check(
            self.epsilon > 0 and math.isfinite(self.epsilon),
            "strategy.epsilon",
            self.epsilon,
            "> 0",
        )


def geometric_median(
    points: torch.Tensor, weights: torch.Tensor, iterations: int, epsilon: float
) -> torch.Tensor:
    """argmin_z Σ wₖ·‖z − xₖ‖ over the rows xₖ of ``points`` (n, d), smoothed Weiszfeld."""
    z = weights @ points  # start at the weighted mean
    for _ in range(iterations):
        distances = (points - z).norm(dim=1).clamp_min(epsilon)
        beta = weights / distances
        z = (beta @ points) / beta.sum()
    return z


@STRATEGIES.register("geomedian")
class GeoMedian(Strategy):
    """The example-weighted geometric median of the deltas, applied to the global state."""

    Spec = GeoMedianSpec
    needs_individual_updates = True  # a noisy or masked sum has no median

    def aggregate(self, round, global_state, updates):
        deltas = flatten_deltas([u.state for u in updates], global_state)
        weights = torch.tensor([float(u.num_examples) for u in updates])
        weights /= weights.sum()
        median = geometric_median(deltas, weights, self.spec.iterations, self.spec.epsilon)
        return apply_delta(global_state, median)
