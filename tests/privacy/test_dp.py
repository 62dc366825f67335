"""Clipping, noise and the DP-FedAvg aggregation maths do what their privacy bound assumes."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from fedfm.config import PrivacyConfig
from fedfm.errors import ConfigError, ProtocolError, ResumeError
from fedfm.privacy.dp import (
    AdaptiveClipper,
    add_gaussian_noise,
    clip,
    default_count_noise_std,
    distributed_noise_share,
    dp_fedavg_central,
    effective_noise_multiplier,
    geometric_clip_update,
    l2_norm,
    local_dp_epsilon,
    quantization_norm_slack,
    unclipped_fraction,
    update_noise_multiplier,
)
from fedfm.state import State


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_delta(seed: int, scale: float = 1.0, sizes=((8, 4), (4,), (3, 5))) -> State:
    g = gen(seed)
    return OrderedDict(
        (f"layer{i}.weight", scale * torch.randn(s, generator=g)) for i, s in enumerate(sizes)
    )


def flat(state: State) -> torch.Tensor:
    return torch.cat([t.reshape(-1).to(torch.float64) for t in state.values()])


# --------------------------------------------------------------------------------------------
# vectors


def test_l2_norm_treats_the_state_as_one_vector() -> None:
    delta = random_delta(0)
    assert l2_norm(delta) == pytest.approx(float(flat(delta).norm()), rel=1e-12)
    assert l2_norm(delta["layer1.weight"]) == pytest.approx(
        float(delta["layer1.weight"].norm()), rel=1e-6
    )


def test_clip_preserves_direction_and_hits_the_norm() -> None:
    delta = random_delta(1, scale=3.0)
    norm = l2_norm(delta)
    clipped, was_clipped = clip(delta, 2.0)
    assert was_clipped and norm > 2.0
    assert l2_norm(clipped) == pytest.approx(2.0, rel=1e-6)
    cosine = torch.dot(flat(clipped), flat(delta)) / (flat(clipped).norm() * flat(delta).norm())
    assert float(cosine) == pytest.approx(1.0, abs=1e-7)
    for name in delta:  # the same factor on every tensor
        torch.testing.assert_close(clipped[name], delta[name] * (2.0 / norm))
    assert list(clipped) == list(delta)


def test_clip_leaves_small_updates_alone_and_copies() -> None:
    delta = random_delta(2, scale=0.01)
    clipped, was_clipped = clip(delta, 1.0)
    assert not was_clipped
    for name in delta:
        assert torch.equal(clipped[name], delta[name])
        assert clipped[name].data_ptr() != delta[name].data_ptr()
    zero = OrderedDict(w=torch.zeros(3))
    clipped_zero, was_clipped = clip(zero, 1.0)
    assert not was_clipped and torch.equal(clipped_zero["w"], zero["w"])


def test_clip_works_in_float32_from_bf16() -> None:
    delta = OrderedDict(w=torch.full((100,), 1.0, dtype=torch.bfloat16))
    clipped, was_clipped = clip(delta, 1.0)
    assert was_clipped and clipped["w"].dtype == torch.float32
    assert l2_norm(clipped) == pytest.approx(1.0, rel=1e-6)


def test_clip_refuses_non_finite_updates_and_bad_norms() -> None:
    with pytest.raises(ProtocolError, match="nan"):
        clip(OrderedDict(w=torch.tensor([1.0, math.nan])), 1.0)
    with pytest.raises(ProtocolError, match="inf"):
        clip(OrderedDict(w=torch.tensor([1.0, math.inf])), 1.0)
    with pytest.raises(ConfigError, match=r"privacy.clip_norm = 0.0 is not allowed; allowed: "):
        clip(random_delta(0), 0.0)


def test_gaussian_noise_is_seeded_and_has_the_std() -> None:
    x = torch.zeros(200_000)
    a = add_gaussian_noise(x, 0.5, gen(7))
    assert torch.equal(a, add_gaussian_noise(x, 0.5, gen(7)))
    assert not torch.equal(a, add_gaussian_noise(x, 0.5, gen(8)))
    assert float(a.std()) == pytest.approx(0.5, rel=0.01)
    state = random_delta(3)
    noisy = add_gaussian_noise(state, 0.1, gen(1))
    assert list(noisy) == list(state) and all(noisy[k].shape == state[k].shape for k in state)
    assert all(torch.equal(add_gaussian_noise(state, 0.0, gen(1))[k], state[k]) for k in state)


# --------------------------------------------------------------------------------------------
# central


def test_central_without_noise_is_the_unweighted_mean_of_clipped_deltas() -> None:
    deltas = [random_delta(i, scale=s) for i, s in enumerate((0.01, 1.0, 5.0))]
    out = dp_fedavg_central(deltas, 1.0, 0.0, gen())
    expected = sum(flat(clip(d, 1.0)[0]) for d in deltas) / 3
    torch.testing.assert_close(flat(out), expected, rtol=1e-6, atol=1e-7)


def test_one_client_moves_the_central_mean_by_at_most_c_over_n() -> None:
    """The sensitivity the noise is sized for: replacing one client changes the result ≤ 2C/n,
    removing one (fixed denominator) ≤ C/n — whatever that client sent."""
    deltas = [random_delta(i) for i in range(4)]
    base = dp_fedavg_central(deltas, 1.0, 0.0, gen(), denominator=4)
    attacker = OrderedDict((k, 1e6 * torch.ones_like(t)) for k, t in deltas[0].items())
    replaced = dp_fedavg_central([attacker, *deltas[1:]], 1.0, 0.0, gen(), denominator=4)
    removed = dp_fedavg_central(deltas[1:], 1.0, 0.0, gen(), denominator=4)
    assert float((flat(replaced) - flat(base)).norm()) <= 2 * 1.0 / 4 + 1e-6
    assert float((flat(removed) - flat(base)).norm()) <= 1.0 / 4 + 1e-6


def test_central_noise_has_std_sigma_c_over_n() -> None:
    n, c, sigma = 4, 2.0, 1.5
    deltas = [
        OrderedDict(w=torch.full((100_000,), 0.001 * i), b=torch.zeros(50_000)) for i in range(n)
    ]
    clean = dp_fedavg_central(deltas, c, 0.0, gen())
    noisy = dp_fedavg_central(deltas, c, sigma, gen(11))
    residual = flat(noisy) - flat(clean)
    assert float(residual.std()) == pytest.approx(sigma * c / n, rel=0.01)
    assert abs(float(residual.mean())) < 5 * (sigma * c / n) / math.sqrt(residual.numel())
    again = dp_fedavg_central(deltas, c, sigma, gen(11))
    assert all(torch.equal(noisy[k], again[k]) for k in noisy)


def test_empty_poisson_round_still_releases_the_noise() -> None:
    template = OrderedDict(w=torch.zeros(50_000))
    out = dp_fedavg_central([], 1.0, 2.0, gen(), denominator=5, template=template)
    assert float(out["w"].std()) == pytest.approx(2.0 * 1.0 / 5, rel=0.02)
    with pytest.raises(ConfigError, match="deltas"):
        dp_fedavg_central([], 1.0, 2.0, gen())


def test_central_refuses_mismatched_deltas() -> None:
    with pytest.raises(ProtocolError, match="must match"):
        dp_fedavg_central(
            [random_delta(0), random_delta(1, sizes=((8, 4), (5,), (3, 5)))], 1.0, 1.0, gen()
        )


# --------------------------------------------------------------------------------------------
# distributed


def test_distributed_shares_sum_to_the_central_noise() -> None:
    n, c, sigma = 5, 1.0, 1.2
    clipped = [clip(OrderedDict(w=torch.full((100_000,), 0.01 * (i + 1))), c)[0] for i in range(n)]
    shares = [distributed_noise_share(d, c, sigma, n, gen(100 + i)) for i, d in enumerate(clipped)]
    one_noise = flat(shares[0]) - flat(clipped[0])
    assert float(one_noise.std()) == pytest.approx(sigma * c / math.sqrt(n), rel=0.01)
    summed_noise = sum(flat(s) for s in shares) - sum(flat(d) for d in clipped)
    assert float(summed_noise.std()) == pytest.approx(sigma * c, rel=0.01)
    # the server's mean (sum / n) then carries the same N(0, (σC/n)²) as the central mechanism
    assert float((summed_noise / n).std()) == pytest.approx(sigma * c / n, rel=0.01)


def test_distributed_noise_lands_on_the_fixed_point_grid() -> None:
    resolution = 2.0**-16
    clipped = OrderedDict(
        w=torch.round(torch.linspace(-0.1, 0.1, 10_000) / resolution) * resolution
    )
    share = distributed_noise_share(clipped, 1.0, 1.0, 5, gen(), resolution=resolution)
    steps = (share["w"].to(torch.float64) - clipped["w"].to(torch.float64)) / resolution
    assert torch.equal(steps, torch.round(steps))
    assert float(steps.std()) * resolution == pytest.approx(1.0 / math.sqrt(5), rel=0.03)


def test_dropouts_lower_the_effective_noise_multiplier() -> None:
    assert effective_noise_multiplier(1.0, 5, 5) == 1.0
    assert effective_noise_multiplier(1.0, 5, 4) == pytest.approx(math.sqrt(0.8))  # 0.894
    # shares sized for the threshold t = 3: any completed round keeps at least σ
    assert effective_noise_multiplier(1.0, 3, 3) == 1.0
    assert effective_noise_multiplier(1.0, 3, 5) == pytest.approx(math.sqrt(5 / 3))


def test_quantization_slack_keeps_the_quantised_norm_within_the_clip() -> None:
    d, resolution, c = 50_000, 2.0**-8, 1.0
    slack = quantization_norm_slack(d, resolution)
    clipped, _ = clip(random_delta(5, sizes=((d,),)), c - slack)
    quantised = torch.round(clipped["layer0.weight"] / resolution) * resolution
    assert l2_norm(quantised) <= c
    assert quantization_norm_slack(d, resolution, stochastic=True) == 2 * slack


# --------------------------------------------------------------------------------------------
# local


def test_local_dp_epsilon_equals_opacus_accountant() -> None:
    accountant = RDPAccountant()
    for _ in range(300):
        accountant.step(noise_multiplier=1.1, sample_rate=0.02)
    assert local_dp_epsilon(1.1, 0.02, 300, 1e-5) == pytest.approx(
        accountant.get_epsilon(1e-5), abs=1e-9
    )


@pytest.mark.filterwarnings("ignore:Secure RNG turned off", "ignore:Full backward hook")
def test_local_dp_epsilon_equals_opacus_privacy_engine() -> None:
    """What a client's opacus PrivacyEngine reports after DP-SGD, from (σ, batch rate, steps)."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(200, 6), torch.randint(0, 2, (200,)))
    model = torch.nn.Linear(6, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    engine = PrivacyEngine(accountant="rdp")
    model, optimizer, loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=DataLoader(data, batch_size=20),
        noise_multiplier=1.3,
        max_grad_norm=1.0,
    )
    steps = 0
    for _ in range(2):
        for x, y in loader:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            steps += 1
    assert local_dp_epsilon(1.3, 20 / 200, steps, 1e-5) == pytest.approx(
        engine.get_epsilon(1e-5), abs=1e-9
    )


# --------------------------------------------------------------------------------------------
# adaptive clipping


NORMS = np.random.default_rng(0).lognormal(mean=0.0, sigma=0.5, size=1000)


@pytest.mark.parametrize(("quantile", "start"), [(0.5, 0.1), (0.5, 10.0), (0.8, 10.0), (0.2, 0.05)])
def test_adaptive_clip_converges_to_the_target_quantile(quantile: float, start: float) -> None:
    clipper = AdaptiveClipper(start, quantile, clip_lr=0.2)
    for _ in range(200):
        clipper.update(NORMS)
    assert clipper.clip_norm == pytest.approx(np.quantile(NORMS, quantile), rel=0.02)


@pytest.mark.parametrize("count_noise_std", [0.0, 1.0])
def test_adaptive_clip_tracks_the_quantile_from_sampled_rounds(count_noise_std: float) -> None:
    rng = np.random.default_rng(1)
    generator = gen(3)
    clipper = AdaptiveClipper(5.0, 0.5, clip_lr=0.2, count_noise_std=count_noise_std)
    history = []
    for _ in range(300):
        clipper.update(rng.choice(NORMS, size=20, replace=False), generator)
        history.append(clipper.clip_norm)
    assert np.mean(history[-100:]) == pytest.approx(np.quantile(NORMS, 0.5), rel=0.10)


def test_adaptive_clip_update_rule() -> None:
    assert geometric_clip_update(2.0, 0.5, 0.5, 0.2) == 2.0
    assert geometric_clip_update(2.0, 1.0, 0.5, 0.2) == pytest.approx(2.0 * math.exp(-0.1))
    assert geometric_clip_update(2.0, 0.0, 0.5, 0.2) == pytest.approx(2.0 * math.exp(0.1))
    assert unclipped_fraction([0.5, 1.0, 1.5, 2.0], 1.0) == 0.5  # ‖Δ‖ ≤ C counts as unclipped
    assert unclipped_fraction([0.5, 1.0], 1.0, denominator=4) == 0.5


def test_noisy_count_is_seeded() -> None:
    a = unclipped_fraction(NORMS[:20], 1.0, 2.0, gen(5))
    assert a == unclipped_fraction(NORMS[:20], 1.0, 2.0, gen(5))
    assert a != unclipped_fraction(NORMS[:20], 1.0, 2.0, gen(6))
    with pytest.raises(ConfigError, match="generator"):
        unclipped_fraction(NORMS[:20], 1.0, 2.0)


def test_update_noise_keeps_the_accounted_noise_multiplier() -> None:
    """Andrew et al. Theorem 1: (σ_Δ⁻² + (2σ_b)⁻²)^(−½) = z, so the accountant keeps using z."""
    z, sigma_b = 1.0, default_count_noise_std(5, 1.0)
    assert sigma_b == 1.0  # max(5 / 20, z)
    sigma_delta = update_noise_multiplier(z, sigma_b)
    assert (sigma_delta**-2 + (2 * sigma_b) ** -2) ** -0.5 == pytest.approx(z)
    assert sigma_delta == pytest.approx(z / math.sqrt(0.75))
    assert default_count_noise_std(100, 1.0) == 5.0  # Andrew et al.'s m / 20
    assert update_noise_multiplier(0.0, 0.0) == 0.0
    with pytest.raises(
        ConfigError, match=r"count_noise_std = 0.5 is not allowed; allowed: > noise_multiplier / 2"
    ):
        update_noise_multiplier(1.0, 0.5)


def test_adaptive_clipper_state_round_trip() -> None:
    clipper = AdaptiveClipper.from_config(PrivacyConfig(clip="adaptive", clip_norm=3.0))
    clipper.update(NORMS[:10])
    resumed = AdaptiveClipper.from_config(PrivacyConfig(clip="adaptive", clip_norm=3.0))
    resumed.load_state_dict(clipper.state_dict())
    assert resumed.clip_norm == clipper.clip_norm != 3.0
    assert resumed.update(NORMS[10:20]) == clipper.update(NORMS[10:20])
    for bad in ({}, {"clip_norm": 0.0}, {"clip_norm": "1"}, {"clip_norm": math.nan}):
        with pytest.raises(ResumeError, match="clip_norm"):
            resumed.load_state_dict(bad)
    with pytest.raises(ConfigError, match="privacy.target_quantile = 1.0"):
        AdaptiveClipper(1.0, 1.0, 0.2)
