"""Client-level differential privacy for federated averaging: clip, add noise, aggregate.

Pure functions on a *delta* (a client's shared state minus the global state it started from, a
:data:`~fedfm.state.State`), all of whose tensors count as one vector. :mod:`.accounting` turns
the noise multiplier σ into ε. The three modes of ``privacy.dp``:

``central``      a trusted server clips every delta to C, takes the unweighted mean over a fixed
                 denominator n and adds N(0, (σC/n)²) per coordinate: :func:`dp_fedavg_central`.
``distributed``  the server only ever sees the sum (secure aggregation). Each client clips,
                 quantises, adds its share N(0, σ²C²/n) and masks; the n shares sum to the
                 N(0, σ²C²) of the central mechanism: :func:`distributed_noise_share`.
``local``        example-level DP-SGD inside each client (opacus); :func:`local_dp_epsilon`.

The clip norm can follow a quantile of the update norms (:class:`AdaptiveClipper`).

Noise comes from a :data:`~fedfm.privacy.noise.NoiseSource`: a seeded ``torch.Generator`` in
a simulation, so that runs reproduce, or :class:`~fedfm.privacy.noise.SecureGaussian` (a
ChaCha20 keystream keyed from the OS) on a network client, whose noise the server cannot
recompute from the seeds it chose.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

import torch

from fedfm.config import check
from fedfm.errors import ConfigError, ProtocolError, ResumeError
from fedfm.privacy.accounting import epsilon_for
from fedfm.privacy.noise import NoiseSource, standard_normal
from fedfm.state import State

if TYPE_CHECKING:
    from fedfm.config import PrivacyConfig

TensorOrState = TypeVar("TensorOrState", torch.Tensor, State)


def _check_positive(key: str, value: float) -> None:
    check(value > 0 and math.isfinite(value), key, value, "a finite number > 0")


def _check_non_negative(key: str, value: float) -> None:
    check(value >= 0 and math.isfinite(value), key, value, "a finite number ≥ 0")


# --------------------------------------------------------------------------------------------
# Vectors


def l2_norm(delta: State | torch.Tensor) -> float:
    """‖delta‖₂ over all its tensors as one vector (accumulated in float64)."""
    tensors = delta.values() if isinstance(delta, Mapping) else [delta]
    squares = sum(
        float(torch.linalg.vector_norm(t.detach(), dtype=torch.float64)) ** 2 for t in tensors
    )
    return math.sqrt(squares)


def clip(delta: State, max_norm: float) -> tuple[State, bool]:
    """``delta`` scaled to L2 norm ≤ ``max_norm`` (direction kept), in float32; and whether it was scaled."""
    _check_positive("privacy.clip_norm", max_norm)
    norm = l2_norm(delta)
    if not math.isfinite(norm):
        # NaN compares false with everything: it would slip through the clip and void the bound.
        raise ProtocolError(
            f"a client delta has L2 norm {norm} (NaN or inf) and cannot be clipped; drop the update"
        )
    factor = max_norm / norm if norm > max_norm else 1.0
    clipped = OrderedDict(
        (name, t.detach().to(torch.float32) * factor) for name, t in delta.items()
    )
    return clipped, norm > max_norm


def add_gaussian_noise(x: TensorOrState, std: float, generator: NoiseSource) -> TensorOrState:
    """``x`` + N(0, std²) on every coordinate, in float32 (a tensor, or a State tensor by tensor)."""
    _check_non_negative("noise std", std)

    def noisy(t: torch.Tensor) -> torch.Tensor:
        noise = standard_normal(t.shape, generator)
        return t.detach().to(torch.float32) + std * noise.to(t.device)

    if isinstance(x, torch.Tensor):
        return noisy(x)
    return OrderedDict((name, noisy(t)) for name, t in x.items())


def _check_same_layout(deltas: Sequence[State]) -> None:
    ref = deltas[0]
    for i, delta in enumerate(deltas[1:], start=1):
        if list(delta) != list(ref) or any(delta[k].shape != ref[k].shape for k in ref):
            raise ProtocolError(
                f"client delta {i} has tensors {[(k, tuple(t.shape)) for k, t in delta.items()][:3]}…, "
                f"delta 0 has {[(k, tuple(t.shape)) for k, t in ref.items()][:3]}…; all must match"
            )


# --------------------------------------------------------------------------------------------
# central


def dp_fedavg_central(
    deltas: Sequence[State],
    clip_norm: float,
    noise_multiplier: float,
    generator: torch.Generator,
    *,
    denominator: float | None = None,
    template: State | None = None,
) -> State:
    """DP-FedAvg with a trusted server (McMahan et al. 2018): (Σᵢ clip(Δᵢ, C) + N(0, σ²C²)) / n.

    The same as the mean of the clipped deltas plus N(0, (σC/n)²) per coordinate, in float32.
    ``n = denominator``, by default ``len(deltas)`` (right when exactly ``clients_per_round``
    clients are drawn). With Poisson sampling pass the *expected* count, ``clients_per_round``:
    the actual count depends on whether a client is in, so it must neither divide nor be
    published; and an empty round still releases noise (pass ``template``, e.g. the global
    state, for the names and shapes). Dropouts do not hurt privacy here: the server adds
    N(0, (σC/n)²) for whatever n divides, so the ratio to the sensitivity C/n stays σ as long as
    n does not depend on the clients' data (random dropouts don't; Poisson counts do).

    The mean is unweighted on purpose. Weighting by examples, Σ nᵢΔᵢ / Σ nᵢ, breaks the bound
    the noise is sized for: one client's weight nᵢ / Σ nⱼ can be near 1, so it moves the mean by
    up to C rather than C/n, and the denominator depends on every client, so adding one client
    changes all the other terms too (and nᵢ itself is private). McMahan et al. cap the weights
    and divide by a fixed expected total instead; fedfm uses equal weights.
    """
    _check_positive("privacy.clip_norm", clip_norm)
    _check_non_negative("privacy.noise_multiplier", noise_multiplier)
    if not deltas and template is None:
        raise ConfigError(
            "deltas = [] is not allowed without a template; allowed: ≥ 1 delta, or template="
            "the global state so that an empty round still releases the noise"
        )
    n = float(len(deltas)) if denominator is None else float(denominator)
    _check_positive("denominator", n)
    if deltas:
        _check_same_layout(deltas)
    ref = deltas[0] if deltas else template
    assert ref is not None
    total: State = OrderedDict(
        (k, torch.zeros(t.shape, dtype=torch.float32)) for k, t in ref.items()
    )
    for delta in deltas:
        clipped, _ = clip(delta, clip_norm)
        for name, t in clipped.items():
            total[name].add_(t.to(total[name].device))
    noisy = add_gaussian_noise(total, noise_multiplier * clip_norm, generator)
    return OrderedDict((name, t / n) for name, t in noisy.items())


# --------------------------------------------------------------------------------------------
# distributed


def distributed_noise_share(
    clipped_delta: State,
    clip_norm: float,
    noise_multiplier: float,
    num_clients: int,
    generator: NoiseSource,
    *,
    resolution: float = 0.0,
) -> State:
    """One client's share of the noise under secure aggregation: ``clipped_delta`` + N(0, σ²C²/n).

    The shares of n clients sum to N(0, σ²C²), the noise of the central mechanism, while no one
    ever sees a single share's sum with its delta unmasked. A client does, in this order:
    **clip** to C (:func:`clip`) → **quantise** to the fixed-point grid of secure aggregation
    (:func:`quantization_norm_slack`: clip to C − slack so the quantised norm stays ≤ C) →
    **add this noise**, with ``resolution`` = the grid step so the noise lands on the grid
    (Gaussian rounded to the grid, which approximates the distributed discrete Gaussian of
    Kairouz et al. 2021 when the std is many grid steps) → **mask**. The server unmasks the sum
    and divides by the same fixed n as in :func:`dp_fedavg_central`.

    Dropouts: if only s of the n clients' shares reach the sum, it carries σ²C²·s/n, i.e. the
    noise multiplier falls to σ·√(s/n) (:func:`effective_noise_multiplier`; one drop out of 5
    leaves 0.894σ) and the accountant's ε is too low. So pass ``num_clients`` = the fewest
    clients with which a round can complete (the secure-aggregation threshold t): then every
    completed round carries at least σ²C² (√(n/t)× the noise when all n answer), and report the
    effective σ of every round.
    """
    _check_positive("privacy.clip_norm", clip_norm)
    _check_non_negative("privacy.noise_multiplier", noise_multiplier)
    check(num_clients >= 1, "num_clients", num_clients, "≥ 1 (clients whose shares are summed)")
    _check_non_negative("resolution", resolution)
    std = noise_multiplier * clip_norm / math.sqrt(num_clients)
    noise = add_gaussian_noise(
        OrderedDict(
            (k, torch.zeros(t.shape, dtype=torch.float32)) for k, t in clipped_delta.items()
        ),
        std,
        generator,
    )
    out: State = OrderedDict()
    for name, t in clipped_delta.items():
        z = noise[name]
        if resolution > 0:
            z = torch.round(z / resolution) * resolution
        out[name] = t.detach().to(torch.float32) + z.to(t.device)
    return out


def effective_noise_multiplier(noise_multiplier: float, num_clients: int, num_summed: int) -> float:
    """σ·√(num_summed / num_clients): the noise multiplier of a sum of ``num_summed`` shares sized for ``num_clients``."""
    check(num_clients >= 1, "num_clients", num_clients, "≥ 1")
    check(num_summed >= 0, "num_summed", num_summed, "≥ 0")
    return noise_multiplier * math.sqrt(num_summed / num_clients)


def quantization_norm_slack(num_params: int, resolution: float, stochastic: bool = False) -> float:
    """How much rounding to a grid of step ``resolution`` can grow an L2 norm over ``num_params`` values.

    Rounding to nearest moves each value by ≤ resolution/2, stochastic rounding by < resolution;
    over d values the norm grows by at most that × √d.
    """
    check(num_params >= 0, "num_params", num_params, "≥ 0")
    _check_non_negative("resolution", resolution)
    return (resolution if stochastic else resolution / 2) * math.sqrt(num_params)


# --------------------------------------------------------------------------------------------
# local


def local_dp_epsilon(
    noise_multiplier: float,
    batch_sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """Example-level ε of one client that ran ``steps`` DP-SGD steps (``privacy.dp = "local"``).

    In local mode each client trains with opacus (``PrivacyEngine.make_private`` or a
    ``GradSampleModule`` with a ``DPOptimizer``): per-example gradients clipped, noise σ per
    batch, Poisson batches with ``batch_sample_rate = batch_size / client examples``. ``steps``
    counts the DP-SGD steps of *all* rounds the client took part in; no amplification by client
    sampling is claimed (the server knows who took part). Same accountant as opacus'.
    """
    return epsilon_for(noise_multiplier, batch_sample_rate, steps, delta, accountant)


# --------------------------------------------------------------------------------------------
# adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with Adaptive Clipping")


def unclipped_fraction(
    norms: Sequence[float],
    clip_norm: float,
    count_noise_std: float = 0.0,
    generator: torch.Generator | None = None,
    denominator: float | None = None,
) -> float:
    """b̄ = (#{i: ‖Δᵢ‖ ≤ C} + N(0, σ_b²)) / n: the (noisy) share of updates the clip leaves alone."""
    _check_non_negative("count_noise_std", count_noise_std)
    n = float(len(norms)) if denominator is None else float(denominator)
    _check_positive("denominator", n)
    count = float(sum(1 for norm in norms if norm <= clip_norm))
    if count_noise_std > 0:
        if generator is None:
            raise ConfigError(
                "generator = None is not allowed with count_noise_std > 0; allowed: a torch.Generator"
            )
        count += count_noise_std * float(torch.randn(1, generator=generator, dtype=torch.float64))
    return count / n


def geometric_clip_update(
    clip_norm: float, unclipped_fraction: float, target_quantile: float, clip_lr: float
) -> float:
    """C · exp(−η (b̄ − γ)): the clip norm moves toward the γ-quantile of the update norms."""
    return clip_norm * math.exp(-clip_lr * (unclipped_fraction - target_quantile))


def update_noise_multiplier(noise_multiplier: float, count_noise_std: float) -> float:
    """σ_Δ = (z⁻² − (2σ_b)⁻²)^(−½): the noise for the updates so that, with the count noised by
    σ_b, the round still costs exactly noise multiplier z (Andrew et al. 2021, Theorem 1)."""
    _check_non_negative("privacy.noise_multiplier", noise_multiplier)
    if noise_multiplier == 0:
        return 0.0
    check(
        count_noise_std > noise_multiplier / 2,
        "count_noise_std",
        count_noise_std,
        f"> noise_multiplier / 2 = {noise_multiplier / 2}",
    )
    return (noise_multiplier**-2 - (2 * count_noise_std) ** -2) ** -0.5


def default_count_noise_std(expected_clients: float, noise_multiplier: float) -> float:
    """σ_b = max(m/20, z): Andrew et al.'s m/20, raised to z for small rounds so that Theorem 1
    holds and the update noise grows by at most 1/√(3/4) − 1 ≈ 15.5%."""
    return max(expected_clients / 20, noise_multiplier)


class AdaptiveClipper:
    """The clip norm of quantile clipping (Andrew et al. 2021); one :meth:`update` per round.

    With ``count_noise_std`` = 0 the count is exact (for ``privacy.dp = "none"``); under DP, noise
    the count with σ_b and the updates with :func:`update_noise_multiplier` (σ_b) instead of σ.
    """

    def __init__(
        self,
        initial_clip_norm: float,
        target_quantile: float,
        clip_lr: float,
        count_noise_std: float = 0.0,
    ) -> None:
        _check_positive("privacy.clip_norm", initial_clip_norm)
        check(0 < target_quantile < 1, "privacy.target_quantile", target_quantile, "0 < q < 1")
        _check_positive("privacy.clip_lr", clip_lr)
        _check_non_negative("count_noise_std", count_noise_std)
        self._clip_norm = float(initial_clip_norm)
        self.target_quantile = float(target_quantile)
        self.clip_lr = float(clip_lr)
        self.count_noise_std = float(count_noise_std)
        self.last_unclipped_fraction = float("nan")

    @classmethod
    def from_config(cls, privacy: PrivacyConfig, count_noise_std: float = 0.0) -> AdaptiveClipper:
        """From ``privacy.clip_norm`` (initial), ``privacy.target_quantile`` and ``privacy.clip_lr``."""
        return cls(privacy.clip_norm, privacy.target_quantile, privacy.clip_lr, count_noise_std)

    @property
    def clip_norm(self) -> float:
        """The clip norm for the coming round."""
        return self._clip_norm

    def update(
        self,
        norms: Sequence[float],
        generator: torch.Generator | None = None,
        *,
        denominator: float | None = None,
    ) -> float:
        """Move the clip norm after a round whose (unclipped) update norms were ``norms``; returns it."""
        fraction = unclipped_fraction(
            norms, self._clip_norm, self.count_noise_std, generator, denominator
        )
        return self._apply(fraction)

    def update_from_noisy_count(self, noisy_count: float, denominator: float) -> float:
        """The same from a count already noised (e.g. summed under secure aggregation with shares)."""
        _check_positive("denominator", denominator)
        return self._apply(noisy_count / denominator)

    def _apply(self, fraction: float) -> float:
        self.last_unclipped_fraction = fraction
        self._clip_norm = geometric_clip_update(
            self._clip_norm, fraction, self.target_quantile, self.clip_lr
        )
        return self._clip_norm

    def state_dict(self) -> dict[str, float]:
        """What a checkpoint must keep: ``{"clip_norm": the current clip norm}``."""
        return {"clip_norm": self._clip_norm}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        """Restore the clip norm saved by :meth:`state_dict`."""
        value = state.get("clip_norm") if isinstance(state, Mapping) else None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not (value > 0 and math.isfinite(value))
        ):
            raise ResumeError(
                f"adaptive clipper state {state!r} is not allowed; allowed: {{'clip_norm': float > 0}}"
            )
        self._clip_norm = float(value)
