"""A network client's own privacy policy (security finding 6): it refuses experiments and rounds
that break its terms, keeps its own ε account, and never masks one round twice."""

from __future__ import annotations

import math

import pytest

from fedfm.config import load_config
from fedfm.errors import ConfigError, ProtocolError
from fedfm.privacy.accounting import epsilon_for
from fedfm.privacy.policy import ClientLedger, PolicyError, PrivacyPolicy
from fedfm.privacy.secagg import SecAggClient, SecAggServer, decode_message, encode_message

DISTRIBUTED = [
    "privacy.dp=distributed",
    "privacy.noise_multiplier=2.0",
    "privacy.delta=1e-5",
    "secagg.enabled=true",
    "partition.clients=8",
    "federation.clients_per_round=4",
]


def test_experiments_the_policy_can_never_accept_are_refused_at_join():
    plain = load_config(None, ["partition.clients=8", "federation.clients_per_round=4"])
    with pytest.raises(PolicyError, match=r"secagg.enabled = false.*--require-secagg"):
        PrivacyPolicy(require_secagg=True).check_experiment(plain)
    with pytest.raises(PolicyError, match="--min-threshold"):
        PrivacyPolicy(min_threshold=3).check_experiment(plain)
    with pytest.raises(PolicyError, match="clients_per_round = 4, fewer than --min-threshold 5"):
        PrivacyPolicy(min_threshold=5).check_experiment(load_config(None, DISTRIBUTED))
    central = load_config(
        None, ["privacy.dp=central", "privacy.noise_multiplier=1", "partition.clients=8"]
    )
    with pytest.raises(PolicyError, match="privacy.dp = 'central': the server adds the noise"):
        PrivacyPolicy(max_epsilon=8).check_experiment(central)
    with pytest.raises(PolicyError, match="privacy.dp = 'none'"):
        PrivacyPolicy(max_epsilon=8).check_experiment(plain)
    # one round at σ = 2 with q = 1 costs ε ≈ 2.3 at δ = 1e-5: a budget of 1 is refused
    one = epsilon_for(2.0, 1.0, 1, 1e-5)
    assert 1 < one < 8
    with pytest.raises(PolicyError, match=r"spends ε = .* above --max-epsilon 1"):
        PrivacyPolicy(max_epsilon=1).check_experiment(load_config(None, DISTRIBUTED))
    PrivacyPolicy(require_secagg=True, min_threshold=3, max_epsilon=8).check_experiment(
        load_config(None, DISTRIBUTED)
    )
    with pytest.raises(ConfigError, match="--min-threshold"):
        PrivacyPolicy(min_threshold=1)
    with pytest.raises(ConfigError, match="--max-epsilon"):
        PrivacyPolicy(max_epsilon=math.inf)


def test_a_plain_round_ends_a_client_that_requires_secure_aggregation():
    PrivacyPolicy().check_plain_round(1)
    with pytest.raises(PolicyError, match="round 4: the server asks for an update in the clear"):
        PrivacyPolicy(require_secagg=True).check_plain_round(4)


def test_the_ledger_counts_only_the_noise_the_sum_is_sure_to_carry_and_stops_at_the_budget():
    config = load_config(None, DISTRIBUTED)
    budget = 8.0
    ledger = ClientLedger(PrivacyPolicy(max_epsilon=budget), config)
    # a threshold of 2 of 4 shares: the sum carries at least σ·√(2/4)
    sigma_t2 = 2.0 * math.sqrt(2 / 4)
    assert ledger.round_epsilon(2) == pytest.approx(epsilon_for(sigma_t2, 1.0, 1, 1e-5))
    # without a secure sum the server sees this client's share alone: σ/√4
    assert ledger.round_epsilon(0) == pytest.approx(epsilon_for(1.0, 1.0, 1, 1e-5))
    rounds = 0
    while not ledger.refuse(rounds + 1, f"s{rounds + 1}", 4):
        ledger.spend(rounds + 1, f"s{rounds + 1}", 4)
        rounds += 1
    # exactly the rounds at σ = 2, q = 1 whose composition stays within the budget
    assert epsilon_for(2.0, 1.0, rounds, 1e-5) <= budget < epsilon_for(2.0, 1.0, rounds + 1, 1e-5)
    assert ledger.epsilon() == pytest.approx(epsilon_for(2.0, 1.0, rounds, 1e-5))
    assert "above --max-epsilon 8" in ledger.refuse(rounds + 1, "next", 4)
    assert ledger.exhausted()
    # a round with a lower threshold costs more: refused earlier
    low = ClientLedger(PrivacyPolicy(max_epsilon=budget), config)
    low_rounds = 0
    while not low.refuse(low_rounds + 1, "s", 2):
        low.spend(low_rounds + 1, f"s{low_rounds}", 2)
        low_rounds += 1
    assert low_rounds < rounds


def test_a_round_is_masked_once_unless_fresh_noise_is_accounted_and_a_low_threshold_is_refused():
    plain = load_config(None, ["secagg.enabled=true", "partition.clients=8"])
    ledger = ClientLedger(PrivacyPolicy(min_threshold=3), plain)
    assert ledger.refuse(5, "session-a", 3) == ""
    ledger.spend(5, "session-a", 3)
    assert ledger.refuse(5, "session-a", 3) == ""  # the same session: the same masks
    assert "already masked in another secure session" in ledger.refuse(5, "session-b", 3)
    assert ledger.refuse(6, "session-c", 3) == ""
    assert "threshold 2 is below --min-threshold 3" in ledger.refuse(6, "session-c", 2)
    # with its own fresh noise a client may mask the round again: one more accounted release
    noisy = ClientLedger(PrivacyPolicy(), load_config(None, DISTRIBUTED))
    noisy.spend(5, "session-a", 4)
    assert noisy.refuse(5, "session-b", 4) == ""
    noisy.spend(5, "session-b", 4)
    assert noisy.epsilon() == pytest.approx(epsilon_for(2.0, 1.0, 2, 1e-5))
    # ... but not with the experiment's seed: the same noise again, which two sums cancel
    seeded = ClientLedger(PrivacyPolicy(reproducible_noise=True), load_config(None, DISTRIBUTED))
    seeded.spend(5, "session-a", 4)
    assert "already masked" in seeded.refuse(5, "session-b", 4)


def test_a_secagg_client_shares_no_keys_under_a_threshold_below_its_minimum():
    """The server sets t = 2 of 4: a client with --min-threshold 3 refuses before it hands out
    a single share of its keys."""
    ids = ["c0", "c1", "c2", "c3"]
    server = SecAggServer(8, 2, session="s")
    clients = {c: SecAggClient(c, 8, session="s", min_threshold=3 if c == "c1" else 2) for c in ids}
    for c in ids:
        server.receive_keys(decode_message(encode_message(clients[c].advertise_keys())))
    roster = decode_message(encode_message(server.roster()))
    with pytest.raises(ProtocolError, match="threshold 2 is below this client's minimum 3"):
        clients["c1"].share_keys(roster)
    assert clients["c1"].threshold == 0
    clients["c0"].share_keys(roster)  # the others take part
    assert clients["c0"].threshold == 2
