"""The client-level DP-FedAvg accountant reports opacus' ε and reproduces published values."""

from __future__ import annotations

import math

import pytest
from opacus.accountants import create_accountant
from scipy.optimize import brentq
from scipy.stats import norm

from fedfm.config import PrivacyConfig
from fedfm.errors import ConfigError, ResumeError
from fedfm.privacy.accounting import (
    ACCOUNTANTS,
    EPSILON_TOLERANCE,
    PrivacyAccountant,
    client_sample_rate,
    epsilon_for,
    noise_for_target_epsilon,
    resolve_noise_multiplier,
)

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the")


def opacus_epsilon(
    kind: str, noise_multiplier: float, sample_rate: float, steps: int, delta: float
) -> float:
    """ε from opacus' own accountant, stepped once per round like opacus' DPOptimizer hook does."""
    accountant = create_accountant(mechanism=kind)
    for _ in range(steps):
        accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return accountant.get_epsilon(delta=delta)


@pytest.mark.parametrize("kind", ACCOUNTANTS)
@pytest.mark.parametrize(("sigma", "q", "rounds"), [(1.0, 0.5, 15), (0.8, 0.1, 40)])
def test_epsilon_equals_opacus_accountant(kind: str, sigma: float, q: float, rounds: int) -> None:
    ours = PrivacyAccountant(kind, sigma, q)
    for _ in range(rounds):
        ours.step()
    assert ours.steps == rounds
    assert ours.epsilon(1e-5) == pytest.approx(
        opacus_epsilon(kind, sigma, q, rounds, 1e-5), abs=1e-9
    )


# Published values, from opacus' own test suite (site-packages/opacus/tests):
# accountants_test.py::test_rdp_accountant — σ = 1.5, q = 0.04, int(90 / 0.04) = 2250 steps,
#   δ = 1e-5 → ε = 7.32911117143 (RDP);
# accountants_test.py::test_prv_accountant — the same with int(90 // 0.04) = 2249 steps
#   → ε = 6.777395712150674 (PRV);
# prv_accountant.py — reference values of Microsoft's prv_accountant (Gopi et al. 2021) at δ = 1e-6.
@pytest.mark.parametrize(
    ("kind", "sigma", "q", "steps", "delta", "expected", "places"),
    [
        ("rdp", 1.5, 0.04, 2250, 1e-5, 7.32911117143, 9),
        ("prv", 1.5, 0.04, 2249, 1e-5, 6.777395712150674, 7),
        ("prv", 1.5, 0.05, 100, 1e-6, 1.95385313568420015961635272106, 4),
        ("prv", 0.8, 0.2, 100, 1e-6, 24.3336641779225644199868838768, 4),
        ("prv", 3.0, 0.001, 1000, 1e-6, 0.0476159308713589302097801692071, 4),
    ],
)
def test_published_epsilons(kind, sigma, q, steps, delta, expected, places) -> None:
    accountant = PrivacyAccountant(kind, sigma, q)
    accountant.load_state_dict({"steps": steps})
    assert accountant.epsilon(delta) == pytest.approx(expected, abs=0.5 * 10**-places)


def gaussian_exact_epsilon(noise_multiplier: float, steps: int, delta: float) -> float:
    """Exact ε of ``steps`` unsampled Gaussian mechanisms: one Gaussian with μ = √steps / σ, and
    δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2) (Balle & Wang 2018, Theorem 8), solved for ε."""
    mu = math.sqrt(steps) / noise_multiplier
    return brentq(
        lambda e: norm.cdf(-e / mu + mu / 2) - math.exp(e) * norm.cdf(-e / mu - mu / 2) - delta,
        0.0,
        500.0,
    )


@pytest.mark.parametrize(("sigma", "steps"), [(1.0, 15), (2.0, 1), (5.0, 10)])
def test_all_clients_every_round_matches_the_analytic_gaussian(sigma: float, steps: int) -> None:
    """q = 1 has a closed form: PRV is within its error of it, RDP is a (looser) upper bound."""
    exact = gaussian_exact_epsilon(sigma, steps, 1e-5)
    prv = epsilon_for(sigma, 1.0, steps, 1e-5, "prv")
    rdp = epsilon_for(sigma, 1.0, steps, 1e-5, "rdp")
    assert exact <= prv <= exact + 0.02  # opacus' default eps_error is 0.01
    assert prv < rdp


@pytest.mark.parametrize("kind", ACCOUNTANTS)
def test_epsilon_grows_with_rounds_and_falls_with_noise(kind: str) -> None:
    by_rounds = [epsilon_for(1.0, 0.1, t, 1e-5, kind) for t in (1, 5, 15)]
    assert 0 < by_rounds[0] < by_rounds[1] < by_rounds[2]
    by_sigma = [epsilon_for(s, 0.1, 15, 1e-5, kind) for s in (0.7, 1.0, 2.0)]
    assert by_sigma[0] > by_sigma[1] > by_sigma[2] > 0
    assert epsilon_for(1.0, 0.5, 0, 1e-5, kind) == 0.0


@pytest.mark.parametrize(
    ("kind", "q", "rounds", "target"),
    [
        ("rdp", 0.04, 2000, 8.0),  # opacus test_get_noise_multiplier_rdp_steps: σ = 1.3562
        ("rdp", 0.1, 15, 2.0),
        ("prv", 1.0, 15, 4.0),
        pytest.param("prv", 0.04, 2000, 8.0, marks=pytest.mark.slow),  # opacus: 1.2915
        pytest.param("rdp", 0.5, 15, 8.0, marks=pytest.mark.slow),
        pytest.param("rdp", 0.5, 15, 1.0, marks=pytest.mark.slow),
        pytest.param("prv", 0.5, 15, 8.0, marks=pytest.mark.slow),
        pytest.param("prv", 0.5, 15, 1.0, marks=pytest.mark.slow),
    ],
)
def test_calibration_reaches_the_target_within_tolerance(kind, q, rounds, target) -> None:
    sigma = noise_for_target_epsilon(target, 1e-5, q, rounds, kind)
    spent = epsilon_for(sigma, q, rounds, 1e-5, kind)
    assert target - EPSILON_TOLERANCE <= spent <= target
    # a little less noise would overspend: the σ is (nearly) the smallest that fits
    assert epsilon_for(sigma * 0.97, q, rounds, 1e-5, kind) > target - EPSILON_TOLERANCE


def test_calibration_reproduces_opacus_published_sigma() -> None:
    assert noise_for_target_epsilon(8.0, 1e-5, 0.04, 2000, "rdp") == pytest.approx(1.3562, abs=5e-5)


@pytest.mark.slow
def test_calibration_reproduces_opacus_published_sigma_prv() -> None:
    assert noise_for_target_epsilon(8.0, 1e-5, 0.04, 2000, "prv") == pytest.approx(1.2915, abs=5e-5)


def test_unreachable_target_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="privacy.target_epsilon"):
        noise_for_target_epsilon(1e-7, 1e-5, 1.0, 1, "rdp")


def test_state_dict_restores_the_spent_budget() -> None:
    accountant = PrivacyAccountant("rdp", 1.0, 0.5)
    for _ in range(7):
        accountant.step()
    state = accountant.state_dict()
    assert state == {"steps": 7}
    resumed = PrivacyAccountant("rdp", 1.0, 0.5)
    resumed.load_state_dict(state)
    assert resumed.epsilon(1e-5) == accountant.epsilon(1e-5)
    for _ in range(8):
        resumed.step()
    assert resumed.epsilon(1e-5) == pytest.approx(
        opacus_epsilon("rdp", 1.0, 0.5, 15, 1e-5), abs=1e-9
    )
    for bad in ({}, {"steps": -1}, {"steps": 1.5}, {"steps": True}, None):
        with pytest.raises(ResumeError, match="steps"):
            resumed.load_state_dict(bad)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "gdp", "noise_multiplier": 1.0, "sample_rate": 0.5}, "privacy.accountant"),
        ({"kind": "rdp", "noise_multiplier": 0.0, "sample_rate": 0.5}, "privacy.noise_multiplier"),
        (
            {"kind": "rdp", "noise_multiplier": math.inf, "sample_rate": 0.5},
            "privacy.noise_multiplier",
        ),
        ({"kind": "prv", "noise_multiplier": 1.0, "sample_rate": 0.0}, "sample_rate"),
        ({"kind": "prv", "noise_multiplier": 1.0, "sample_rate": 1.5}, "sample_rate"),
    ],
)
def test_bad_parameters_name_the_field_value_and_what_is_allowed(kwargs, field) -> None:
    with pytest.raises(ConfigError, match=rf"{field} = .* is not allowed; allowed: "):
        PrivacyAccountant(**kwargs)


def test_bad_delta_and_rounds() -> None:
    with pytest.raises(ConfigError, match="privacy.delta = 0"):
        PrivacyAccountant("rdp", 1.0, 0.5).epsilon(0)
    with pytest.raises(ConfigError, match="federation.rounds = 0"):
        noise_for_target_epsilon(8.0, 1e-5, 0.5, 0)
    with pytest.raises(ConfigError, match="federation.clients_per_round = 11"):
        client_sample_rate(11, 10)


def test_client_sample_rate_and_config_resolution() -> None:
    assert client_sample_rate(5, 10) == 0.5
    fixed = PrivacyConfig(dp="central", noise_multiplier=1.2)
    assert resolve_noise_multiplier(fixed, 0.5, 15) == 1.2
    target = PrivacyConfig(dp="central", target_epsilon=8.0, accountant="rdp")
    assert resolve_noise_multiplier(target, 0.04, 2000) == pytest.approx(1.3562, abs=5e-5)
