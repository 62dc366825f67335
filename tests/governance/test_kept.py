"""Kept updates: every round's client updates on disk, and subset aggregates rebuilt from them."""

from __future__ import annotations

import pytest
import torch

import fedfm
from fedfm.errors import ConfigError, DataError
from fedfm.governance.kept import iter_rounds, kept_rounds, require_kept


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory, tiny_config_module):
    config = tiny_config_module("federation.rounds=3", "governance.keep_updates=true")
    return fedfm.run(config, out=tmp_path_factory.mktemp("runs")).run_dir


def test_every_round_is_kept_with_its_clients(kept_run):
    assert kept_rounds(kept_run) == [1, 2, 3]
    rows = [r for r in fedfm.rundir.read_rows(kept_run / "metrics.jsonl", 99)]
    for kept, row in zip(iter_rounds(kept_run), rows, strict=True):
        assert kept.clients == row["clients"]
        assert all(kept.examples[c] > 0 for c in kept.clients)


def test_the_whole_round_rebuilds_fedavgs_aggregate_and_the_next_round_starts_from_it(kept_run):
    rounds = list(iter_rounds(kept_run))
    for kept in rounds:
        rebuilt = kept.aggregate(kept.clients)
        for name, t in kept.after.items():
            torch.testing.assert_close(rebuilt[name], t, rtol=1e-5, atol=1e-6)
    for earlier, later in zip(rounds, rounds[1:], strict=False):
        for name, t in earlier.after.items():
            assert torch.equal(later.before[name], t)


def test_a_subset_aggregate_moves_only_by_its_members_updates(kept_run):
    kept = next(iter_rounds(kept_run))
    first = kept.clients[0]
    alone = kept.aggregate([first])
    for name in kept.before:
        torch.testing.assert_close(alone[name], kept.states[first][name])
    nobody = kept.aggregate([])
    assert all(torch.equal(nobody[n], kept.before[n]) for n in kept.before)


def test_a_run_without_kept_updates_says_which_option_keeps_them(finished_run):
    with pytest.raises(DataError, match="keep_updates = true"):
        require_kept(finished_run)


def test_kept_updates_refuse_secure_aggregation(tiny_config):
    from fedfm.compat import check_compatible

    config = tiny_config("governance.keep_updates=true", "secagg.enabled=true")
    with pytest.raises(ConfigError, match="governance.keep_updates"):
        check_compatible(config)
