"""The membership audit measures what it says: its AUC is the Mann–Whitney AUC, its members are
the rows clients trained on, and it finds membership where it was planted (an overfit model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.tasks.test_causal_lm import _Interrupt

import fedfm
from fedfm.client.app import trained_rows
from fedfm.privacy.audit import auc
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
