"""Byzantine-robust aggregation: rules that keep a few malicious updates from steering the model.

Every rule works on the clients' *deltas* Δₖ = wₖ − w (client state minus the global state),
flattened over all shared tensors into one (n, d) float32 matrix, and returns one aggregate
delta; the next global state is w + Δ, in the global state's names, order and dtypes.

| name           | aggregate delta                                          | weights    | paper                 |
|----------------|----------------------------------------------------------|------------|-----------------------|
| `median`       | coordinate-wise median                                   | unweighted | Yin et al. 2018       |
| `trimmed_mean` | coordinate-wise mean after dropping ⌊beta·n⌋ at each end | unweighted | Yin et al. 2018       |
| `krum`         | the one delta with the lowest Krum score                 | unweighted | Blanchard et al. 2017 |
| `multikrum`    | mean of the m deltas with the lowest Krum scores         | unweighted | Blanchard et al. 2017 |
| `norm_bound`   | mean of the deltas clipped to L2 norm ≤ max_norm         | examples   | Sun et al. 2019       |
| `fltrust`      | trust-weighted mean of deltas rescaled to the server's   | trust      | Cao et al. 2021       |

Coordinate-wise rules commute with subtracting w, so the median of the deltas is the median of the
states minus w. Each rule reports what it did through :meth:`round_metrics` (``robust_selected``,
``robust_rejected``, ``robust_delta_norm``, the clients' delta norms, and its own figures) and
keeps the ids of the clients it left out in ``last_excluded``.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from fedfm.config import check
from fedfm.errors import ConfigError
from fedfm.state import State, Update, clone_state, state_num_params
from fedfm.strategies.base import STRATEGIES, ServerContext, Strategy

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Plumbing shared by every rule


def flatten_deltas(states: Sequence[State], global_state: State) -> torch.Tensor:
    """(n, d) float32: row k is ``states[k] − global_state`` over the global tensors, in their order."""
    out = torch.empty((len(states), state_num_params(global_state)), dtype=torch.float32)
    offset = 0
    for name, ref in global_state.items():
        size = ref.numel()
        base = ref.detach().reshape(-1).to(torch.float32)
        for k, state in enumerate(states):
            t = state.get(name)
            if t is None or t.shape != ref.shape:
                got = "nothing" if t is None else f"shape {tuple(t.shape)}"
                raise ValueError(
                    f"{name}: update {k} has {got}, the global state {tuple(ref.shape)}"
                )
            torch.sub(
                t.detach().reshape(-1).to(torch.float32), base, out=out[k, offset : offset + size]
            )
        offset += size
    return out


def unflatten(vector: torch.Tensor, template: State) -> State:
    """A State with ``template``'s names, order, shapes and dtypes cut from a flat (d,) vector."""
    if vector.numel() != state_num_params(template):
        raise ValueError(f"{vector.numel()} values for a state of {state_num_params(template)}")
    out: State = OrderedDict()
    offset = 0
    for name, ref in template.items():
        piece = vector[offset : offset + ref.numel()].reshape(ref.shape)
        out[name] = piece.to(ref.dtype, copy=True)  # own storage: checkpoints refuse shared tensors
        offset += ref.numel()
    return out


def apply_delta(global_state: State, delta: torch.Tensor) -> State:
    """w + Δ, added in float32, then cast to each tensor's own dtype."""
    flat = torch.cat([t.detach().reshape(-1).to(torch.float32) for t in global_state.values()])
    return unflatten(flat + delta, global_state)


# --------------------------------------------------------------------------------------------
# The rules as pure functions on the (n, d) delta matrix


def coordinate_median(deltas: torch.Tensor) -> torch.Tensor:
    """Per coordinate, the median of the n rows (the mean of the middle two when n is even)."""
    n = deltas.shape[0]
    ordered = deltas.sort(dim=0).values
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


def trim_count(n: int, beta: float) -> int:
    """How many values trimmed_mean drops at each end: ⌊beta·n⌋, always leaving at least one."""
    return min(math.floor(beta * n + 1e-9), (n - 1) // 2)


def coordinate_trimmed_mean(deltas: torch.Tensor, beta: float) -> torch.Tensor:
    """Per coordinate, the mean of the rows left after dropping the ⌊beta·n⌋ largest and smallest."""
    n = deltas.shape[0]
    k = trim_count(n, beta)
    return deltas.sort(dim=0).values[k : n - k].mean(dim=0)


def krum_scores(deltas: torch.Tensor, f: int) -> torch.Tensor:
    """(n,) Krum scores: each row's sum of squared L2 distances to its n − f − 2 nearest others.

    All zeros when n − f − 2 < 1 (nobody to compare with).
    """
    n = deltas.shape[0]
    neighbours = n - f - 2
    if neighbours < 1:
        return torch.zeros(n)
    # The direct formula, not ‖a‖² + ‖b‖² − 2a·b, which cancels badly for nearby updates.
    squared = torch.cdist(deltas, deltas, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
    squared.fill_diagonal_(math.inf)
    return squared.topk(neighbours, dim=1, largest=False).values.sum(dim=1)


def krum_supported_f(n: int, f: int) -> int:
    """``f`` if Krum's condition n > 2f + 2 holds, else the largest f' ≥ 0 that meets it (or 0)."""
    return f if n > 2 * f + 2 else max(0, (n - 3) // 2)


# --------------------------------------------------------------------------------------------
# Strategies


class RobustRule(Strategy):
    """Shared by the robust rules: flatten the deltas, apply :meth:`combine`, report what it did."""

    needs_individual_updates = True

    def __init__(self, spec, federation) -> None:
        super().__init__(spec, federation)
        self.metrics: dict[str, float] = {}
        self.last_excluded: list[str] = []  # client ids the last aggregation left out

    def aggregate(self, round: int, global_state: State, updates: list[Update]) -> State:
        deltas = flatten_deltas([u.state for u in updates], global_state)
        weights = torch.tensor([float(u.num_examples) for u in updates])
        weights /= weights.sum()
        norms = deltas.norm(dim=1)  # before combine, which may change deltas in place
        self.metrics = {}
        delta, excluded = self.combine(round, global_state, deltas, weights)
        self.last_excluded = [updates[i].client_id for i in excluded]
        if self.last_excluded:
            log.info("round %d: %s left out %s", round, type(self).__name__, self.last_excluded)
        self.metrics |= {
            "robust_selected": float(len(updates) - len(excluded)),
            "robust_rejected": float(len(excluded)),
            "robust_delta_norm": float(delta.norm()),
            "robust_client_norm_median": float(norms.quantile(0.5)),
            "robust_client_norm_max": float(norms.max()),
        }
        return apply_delta(global_state, delta)

    def combine(
        self, round: int, global_state: State, deltas: torch.Tensor, weights: torch.Tensor
    ) -> tuple[torch.Tensor, list[int]]:
        """The aggregate (d,) delta from the (n, d) deltas and the (n,) normalised example weights,
        and the rows (clients) the rule left out entirely."""
        raise NotImplementedError

    def round_metrics(self) -> dict[str, float]:
        return dict(self.metrics)


@dataclass(frozen=True)
class MedianSpec:
    pass


@STRATEGIES.register("median")
class Median(RobustRule):
    """Coordinate-wise median of the deltas, unweighted (Yin et al. 2018, arXiv:1803.01498)."""

    Spec = MedianSpec

    def combine(self, round, global_state, deltas, weights):
        return coordinate_median(deltas), []


@dataclass(frozen=True)
class TrimmedMeanSpec:
    beta: float = 0.1  # share of the values dropped at each end, per coordinate

    def __post_init__(self) -> None:
        check(0 <= self.beta < 0.5, "strategy.beta", self.beta, "0 ≤ beta < 0.5")


@STRATEGIES.register("trimmed_mean")
class TrimmedMean(RobustRule):
    """Coordinate-wise trimmed mean, unweighted (Yin et al. 2018, arXiv:1803.01498).

    Per coordinate, the ⌊beta·n⌋ largest and smallest values are dropped and the rest averaged;
    beta = 0 is the unweighted mean. Reports ``trimmed_per_side``.
    """

    Spec = TrimmedMeanSpec

    def combine(self, round, global_state, deltas, weights):
        self.metrics["trimmed_per_side"] = float(trim_count(deltas.shape[0], self.spec.beta))
        return coordinate_trimmed_mean(deltas, self.spec.beta), []


@dataclass(frozen=True)
class KrumSpec:
    f: int = 1  # the number of Byzantine clients per round the rule must withstand

    def __post_init__(self) -> None:
        check(self.f >= 0, "strategy.f", self.f, "≥ 0 (assumed Byzantine clients per round)")


@STRATEGIES.register("krum")
class Krum(RobustRule):
    """Krum (Blanchard et al. 2017, "Machine Learning with Adversaries", NeurIPS), unweighted.

    Each delta is scored by the sum of its squared distances to its n − f − 2 nearest others; the
    next global state is the state of the client with the lowest score. Krum needs n > 2f + 2.
    When a round has fewer updates, the scores use the largest f' that fits (⌊(n − 3)/2⌋, at
    least 0) and a warning is logged; with n ≤ 2 there is nobody to score against and every
    update is averaged. Reports ``krum_f``, the f the scores used.
    """

    Spec = KrumSpec

    def how_many(self, n: int) -> int:
        """How many of the best-scored deltas are averaged."""
        return 1

    def combine(self, round, global_state, deltas, weights):
        n, f = deltas.shape[0], self.spec.f
        f_used = krum_supported_f(n, f)
        self.metrics["krum_f"] = float(f_used)
        if n <= 2 * f + 2:
            # With n ≤ 2 there are no neighbours to score against: every update is averaged.
            action = f"scoring with f = {f_used}" if n > 2 else "averaging them all"
            log.warning(
                "round %d: %s needs more than 2f + 2 = %d updates for strategy.f = %d, got %d; %s",
                round,
                type(self).__name__,
                2 * f + 2,
                f,
                n,
                action,
            )
        if n <= 2:
            return deltas.mean(dim=0), []
        order = krum_scores(deltas, f_used).argsort(stable=True).tolist()  # ties: earlier update
        m = min(max(self.how_many(n), 1), n)
        return deltas[order[:m]].mean(dim=0), sorted(order[m:])


@dataclass(frozen=True)
class MultiKrumSpec(KrumSpec):
    m: int = 0  # how many of the best-scored deltas to average; 0 = n − f

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.m >= 0, "strategy.m", self.m, "≥ 0 (0 = n − f, the round's honest count)")


@STRATEGIES.register("multikrum")
class MultiKrum(Krum):
    """Multi-Krum (Blanchard et al. 2017): the unweighted mean of the m best-scored deltas.

    Scored as :class:`Krum` (same fallback when n ≤ 2f + 2); m = 0 means n − f (at least 1), the
    count of honest clients the assumption allows, with the configured f even in the fallback, so
    a short round still leaves out the f worst-scored; m is capped at n.
    """

    Spec = MultiKrumSpec

    def how_many(self, n: int) -> int:
        return self.spec.m or n - self.spec.f


@dataclass(frozen=True)
class NormBoundSpec:
    max_norm: float = 1.0  # L2 bound on each client's delta, over all shared tensors together

    def __post_init__(self) -> None:
        check(
            self.max_norm > 0 and math.isfinite(self.max_norm),
            "strategy.max_norm",
            self.max_norm,
            "> 0",
        )


@STRATEGIES.register("norm_bound")
class NormBound(RobustRule):
    """Norm bounding (Sun et al. 2019, "Can You Really Backdoor FL?", arXiv:1911.07963).

    Each delta is scaled down to L2 norm ≤ max_norm (over all shared tensors), then the clipped
    deltas are averaged with example weights, as in FedAvg. (The paper's optional "weak DP"
    noise is left to ``[privacy]``.) Reports ``robust_clipped``, the number of clipped clients.
    """

    Spec = NormBoundSpec

    def combine(self, round, global_state, deltas, weights):
        norms = deltas.norm(dim=1)
        scale = (self.spec.max_norm / norms).clamp(max=1.0)  # a zero delta: inf → 1
        self.metrics["robust_clipped"] = float((scale < 1).sum())
        return weights @ deltas.mul_(scale[:, None]), []


@dataclass(frozen=True)
class FLTrustSpec:
    root_rows: int = 100  # training rows the server keeps as its clean root set

    def __post_init__(self) -> None:
        check(self.root_rows >= 1, "strategy.root_rows", self.root_rows, "≥ 1")


@STRATEGIES.register("fltrust")
class FLTrust(RobustRule):
    """FLTrust (Cao et al. 2021, NDSS, arXiv:2012.13995): trust bootstrapped from a root set.

    The server trains on its own small clean root set (``root_rows`` rows) from the global state;
    its delta Δ₀ sets the direction and scale. Each client gets the trust score
    TSₖ = ReLU(cos(Δₖ, Δ₀)), its delta is rescaled to ‖Δ₀‖, and Δ = Σ TSₖ·(‖Δ₀‖/‖Δₖ‖)·Δₖ / Σ TSₖ
    (weighted by trust, not by examples). If every score is 0 the global state is kept and
    ``fltrust_all_zero`` = 1. Clients with score 0 count as rejected. Also reports
    ``fltrust_trust_min``, ``fltrust_trust_mean`` and ``fltrust_server_norm``.

    It declares ``needs_root_update``: the assembly binds a :class:`ServerContext` whose
    ``root_update`` takes (round, global state) and returns the state the server reaches after
    training on its root set (same names and shapes).
    """

    Spec = FLTrustSpec
    needs_root_update = True

    def __init__(self, spec, federation) -> None:
        super().__init__(spec, federation)
        self.root_update: Callable[[int, State], State] | None = None  # (round, global) → trained

    def bind(self, context: ServerContext) -> None:
        self.root_update = context.root_update

    def combine(self, round, global_state, deltas, weights):
        if self.root_update is None:
            raise ConfigError(
                "strategy.name = 'fltrust' needs the server's root-set update: bind a "
                "ServerContext with root_update ((round, global state) → server-trained state) "
                "before the first round"
            )
        trained = self.root_update(round, clone_state(global_state))  # may train in place
        server = flatten_deltas([trained], global_state)[0]
        server_norm = server.norm()
        norms = deltas.norm(dim=1)
        denominators = norms * server_norm
        # A zero delta (client's or server's) has no direction: it earns no trust.
        cosines = torch.where(denominators > 0, (deltas @ server) / denominators, 0.0)
        trust = cosines.clamp(0.0, 1.0)  # ReLU; the cap only absorbs float rounding
        self.metrics |= {
            "fltrust_trust_min": float(trust.min()),
            "fltrust_trust_mean": float(trust.mean()),
            "fltrust_server_norm": float(server_norm),
            "fltrust_all_zero": float(trust.sum() == 0),
        }
        excluded = torch.nonzero(trust == 0).flatten().tolist()
        if trust.sum() == 0:
            log.warning("round %d: fltrust trusts no client; the global state is kept", round)
            return torch.zeros_like(server), excluded
        coefficients = torch.where(trust > 0, trust * server_norm / norms, 0.0)
        return (coefficients @ deltas) / trust.sum(), excluded
