"""The membership audit measures what it says: its AUC is the Mann–Whitney AUC, its members are
the rows clients trained on, and it finds membership where it was planted (an overfit model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm
from tests.tasks.test_causal_lm import _Interrupt

import fedfm
from fedfm.client.app import trained_rows
from fedfm.privacy.audit import auc, lira_offline, logit_confidence, tpr_at_fpr
from fedfm.server.checkpoint import latest_checkpoint

scores = st.lists(st.integers(-5, 5).map(float), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(scores, scores)
def test_the_auc_is_the_share_of_member_non_member_pairs_ranked_right(members, nonmembers):
    pairs = [(a > b) + 0.5 * (a == b) for a in members for b in nonmembers]  # ties: one half
    assert auc(np.array(members), np.array(nonmembers)) == pytest.approx(np.mean(pairs))


def test_the_auc_at_its_landmarks():
    low, high = np.arange(10.0), np.arange(10.0) + 100
    assert auc(high, low) == 1.0 and auc(low, high) == 0.0
    assert auc(low, low) == 0.5
    with pytest.raises(ValueError, match="members and non-members"):
        auc(np.array([]), low)


def test_members_are_the_rows_clients_trained_on_and_survive_a_resume(tiny_config, tmp_path):
    """TINY: 4 clients of 200 rows, 2 per round, 2 rounds of 5 steps of 16: at most 320 of the
    800 partition rows are ever drawn. The old audit counted all 800 as members."""
    config = tiny_config("privacy.audit=true", "privacy.audit_rows=1000")
    result = fedfm.run(config, out=tmp_path / "full")
    s = result.summary
    assert 0 < s["mia_trained_rows"] <= 2 * 2 * 5 * 16 < 800
    assert s["mia_rows"] == min(1000, s["mia_trained_rows"], s["test_rows"])
    # the record sits in the checkpoint, one group per client that trained in some round
    groups = latest_checkpoint(result.run_dir).memory
    assert len(trained_rows(groups)) == s["mia_trained_rows"]
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = {c for r in rows for c in r["clients"]}
    assert {k.removeprefix("client.audit.") for k in groups if "audit" in k} == trained
    # interrupted in round 2 and resumed: round 1's record comes back from the checkpoint
    with pytest.raises(KeyboardInterrupt):
        fedfm.run(config, out=tmp_path / "cut", sinks=[_Interrupt(in_round=2)])
    resumed = fedfm.run(resume=tmp_path / "cut" / config.name).summary
    assert resumed["mia_trained_rows"] == s["mia_trained_rows"]
    assert resumed["mia_auc"] == s["mia_auc"]


def test_the_audit_finds_membership_in_an_overfit_model_and_not_under_strong_dp(
    tiny_config, tmp_path
):
    overfit = [
        "data.train_rows=96",
        "partition.clients=2",
        "federation.clients_per_round=2",
        "federation.rounds=2",
        "federation.local_steps=24",
        "data.eval_rows=50",
        "federation.lr=5e-3",
        "privacy.audit=true",
        "privacy.audit_rows=96",
    ]
    memorised = fedfm.run(tiny_config(*overfit), out=tmp_path / "plain").summary
    assert memorised["mia_trained_rows"] == 96  # every row drawn many times
    assert memorised["mia_auc"] > 0.75
    private = fedfm.run(
        tiny_config(
            *overfit, "privacy.dp=central", "privacy.noise_multiplier=3", "privacy.clip_norm=0.1"
        ),
        out=tmp_path / "dp",
    ).summary
    # 96 members against 96 non-members: the AUC's standard error is about 0.04
    assert abs(private["mia_auc"] - 0.5) < 0.15 < memorised["mia_auc"] - private["mia_auc"]


def test_tpr_at_fpr_counts_members_above_the_strictest_threshold_the_fpr_allows():
    nonmembers = np.arange(100.0)  # 0 … 99
    members = np.array([99.5, 98.5, 97.5, 50.0, -1.0])
    # no false positive allowed: the threshold is 99, one member is above it
    assert tpr_at_fpr(members, nonmembers, 0.001) == pytest.approx(1 / 5)
    assert tpr_at_fpr(members, nonmembers, 0.0) == pytest.approx(1 / 5)
    # 1% of 100 = one false positive: the threshold drops to 98
    assert tpr_at_fpr(members, nonmembers, 0.01) == pytest.approx(2 / 5)
    assert tpr_at_fpr(members, nonmembers, 0.02) == pytest.approx(3 / 5)
    assert tpr_at_fpr(members, nonmembers, 0.5) == pytest.approx(4 / 5)  # above 49
    # ties at the threshold are negatives: identical scores never make a TPR
    assert tpr_at_fpr(np.zeros(10), np.zeros(10), 0.01) == 0.0
    with pytest.raises(ValueError, match="fpr"):
        tpr_at_fpr(members, nonmembers, 1.0)


def test_logit_confidence_is_the_log_odds_of_the_true_label():
    p = np.array([0.5, 0.9, 0.01, 1 - 1e-9])
    assert logit_confidence(-np.log(p)) == pytest.approx(np.log(p / (1 - p)), rel=1e-6)
    assert np.isfinite(logit_confidence(np.array([0.0]))).all()  # p = 1 is clipped


def test_lira_scores_are_the_one_sided_gaussian_test_against_the_out_shadows():
    shadows = np.array([[0.0, 10.0], [2.0, 12.0], [1.0, 14.0]])  # rows: μ = 1 and 12
    target = np.array([3.0, 12.0])
    per_row = lira_offline(target, shadows, global_variance=False)  # σ = 1 and 2
    assert per_row == pytest.approx(norm.logcdf([2.0, 0.0]))
    pooled = lira_offline(target, shadows)  # σ² = mean(1, 4) = 2.5 for both rows
    assert pooled == pytest.approx(norm.logcdf(np.array([2.0, 0.0]) / np.sqrt(2.5)))
    with pytest.raises(ValueError, match="at least 2 shadows"):
        lira_offline(target, shadows[:1])


def test_lira_finds_members_that_per_example_difficulty_hides_from_the_loss_attack():
    """Rows differ widely in how confidently any model fits them (μ_i ~ N(0, 3²)); training on
    a row lifts its confidence by 1. Thresholding the raw confidence (the loss attack) mostly
    ranks rows by difficulty; LiRA subtracts each row's own OUT mean and finds the lift."""
    rng = np.random.default_rng(0)
    n, k = 2000, 8
    difficulty = rng.normal(0, 3, n)
    member = np.arange(n) < n // 2
    shadows = difficulty + rng.normal(0, 0.3, (k, n))  # OUT models: no lift
    target = difficulty + rng.normal(0, 0.3, n) + np.where(member, 1.0, 0.0)
    scores = lira_offline(target, shadows)
    lira_auc, loss_auc = auc(scores[member], scores[~member]), auc(target[member], target[~member])
    assert lira_auc > 0.95 and loss_auc < 0.65
    assert tpr_at_fpr(scores[member], scores[~member], 0.01) > 0.5
    assert tpr_at_fpr(target[member], target[~member], 0.01) < 0.1
    # no lift, nothing to find: LiRA is at chance
    null = difficulty + rng.normal(0, 0.3, n)
    null_scores = lira_offline(null, shadows)
    assert abs(auc(null_scores[member], null_scores[~member]) - 0.5) < 0.05
