"""Contribution values: exact on hand-made utilities, sampled estimates against the exact values,
planted useless clients found on a real run, payouts and flags."""

from __future__ import annotations

import json
import shutil
from collections import OrderedDict

import numpy as np
import pytest
import torch

import fedfm
from fedfm.cli import main
from fedfm.governance.contrib import (
    Replay,
    Utility,
    exact_round_shapley,
    gtg_shapley,
    leave_one_out,
    tmc_shapley,
)
from fedfm.governance.kept import KeptRound, iter_rounds
from fedfm.governance.payout import free_riders, payouts


def _round(rnd: int, deltas: dict[str, float], examples=None, start: float = 0.0):
    """A one-tensor round from ``start``: client c moves the scalar state by deltas[c]."""
    before = OrderedDict(w=torch.tensor([start]))
    states = {c: OrderedDict(w=torch.tensor([start + d])) for c, d in deltas.items()}
    examples = examples or dict.fromkeys(deltas, 1)
    kept = KeptRound(rnd, before, list(deltas), states, examples, {}, before)
    kept.after = kept.aggregate(kept.clients)
    return kept


def _sum_of_votes(state) -> float:
    """The utility: the scalar itself (the start moved by the mean of the members' deltas)."""
    return float(state["w"][0])


def test_leave_one_out_is_each_clients_marginal_on_the_whole_round():
    kept = _round(1, {"a": 3.0, "b": 1.0, "c": -1.0})
    values = leave_one_out([kept], Utility(_sum_of_votes)).values
    # U(N) = mean(3,1,-1) = 1; U(N∖a) = 0; U(N∖b) = 1; U(N∖c) = 2
    assert values == pytest.approx({"a": 1.0, "b": 0.0, "c": -1.0})


def test_exact_shapley_is_efficient_and_symmetric():
    kept = _round(1, {"a": 2.0, "b": 2.0, "c": 5.0, "d": 0.0})
    values = exact_round_shapley([kept], Utility(_sum_of_votes)).values
    whole = _sum_of_votes(kept.aggregate(kept.clients))
    assert sum(values.values()) == pytest.approx(whole - 0.0)  # efficiency: U(N) − U(∅)
    assert values["a"] == pytest.approx(values["b"])  # symmetry: equal updates, equal value
    assert values["c"] > values["a"] > values["d"]


def test_gtg_shapley_converges_to_the_exact_round_values():
    rng = np.random.default_rng(0)
    rounds = [_round(t, {c: float(rng.normal(1, 1)) for c in "abcdef"}) for t in (1, 2, 3)]
    exact = exact_round_shapley(rounds, Utility(_sum_of_votes)).values
    estimate = gtg_shapley(rounds, Utility(_sum_of_votes), 2000, np.random.default_rng(1))
    for c, v in exact.items():
        assert abs(estimate.values[c] - v) <= max(0.05, 3 * estimate.confidence[c])
    assert estimate.evaluations <= 2000


def test_tmc_shapley_of_the_replay_finds_the_useless_client():
    first = _round(1, {"a": 1.0, "b": 1.0, "free": 0.0})
    second = _round(2, {"a": 0.5, "b": 2.0, "free": 0.0}, start=float(first.after["w"][0]))
    rounds = [first, second]
    replay = Replay(rounds)
    # Every client replayed is the run itself; without one, each round's mean changes.
    assert float(replay(["a", "b", "free"])["w"][0]) == pytest.approx(float(second.after["w"][0]))
    assert float(replay(["a", "b"])["w"][0]) == pytest.approx(1.0 + 1.25)
    assert float(replay([])["w"][0]) == 0.0
    valuation = tmc_shapley(rounds, Utility(_sum_of_votes), 200, np.random.default_rng(0))
    assert valuation.values["free"] < min(valuation.values["a"], valuation.values["b"])


def test_payouts_floor_proportion_and_flags():
    shares = payouts({"a": 0.3, "b": 0.1, "c": -0.2}, ["c"], total=100, floor=0.1)
    assert shares == pytest.approx({"a": 70.0, "b": 30.0, "c": 0.0})
    assert sum(payouts({"a": 0.0, "b": 0.0}, [], 1.0).values()) == pytest.approx(1.0)
    kept = _round(1, {"a": 1.0, "b": 0.5, "zero": 0.0})
    flags = free_riders({"a": 0.4, "b": 0.2, "zero": 0.0}, [kept])
    assert flags == {"zero": ["zero_update", "non_positive_value"]}


# ---- on a real run: a free rider and a label-noise client rank last ----


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory, tiny_config_module):
    """Four clients, two of them useless: one sends its received state back (free rider),
    one trains on labels flipped (label noise)."""
    from fedfm import assemble
    from fedfm.attacks import ATTACKS
    from fedfm.client.app import ClientData
    from fedfm.data.tokens import tokenize
    from fedfm.experiment import in_process_federation
    from fedfm.rundir import drive, open_run

    config = tiny_config_module(
        "federation.rounds=3",
        "federation.local_steps=10",
        "federation.clients_per_round=4",
        "partition.scheme=iid",
        "governance.keep_updates=true",
    )
    p = assemble.prepare(config)
    free, noisy = p.partition.client_ids[1], p.partition.client_ids[2]
    p.attack = ATTACKS.get("free_rider")(config.attack, p.train.label_names)
    p.malicious = [free]
    shuffle = ATTACKS.get("label_shuffle")(config.attack, p.train.label_names)
    rows = p.partition.indices[2]
    texts, labels = shuffle.poison_data(
        [p.train.texts[i] for i in rows], p.train.labels[rows], np.random.default_rng(0)
    )
    tokens = tokenize(texts, p.task.tokenizer, p.task.tokenizer_key, config.data.max_length)
    p.poisoned[noisy] = ClientData(tokens, labels, np.arange(len(texts)))
    run_dir, rows_so_far = open_run(p, tmp_path_factory.mktemp("runs"), None, 1)
    fed = in_process_federation(p, [], run_dir)
    drive(p, fed, run_dir, [], None, 1, rows_so_far)
    return run_dir, free, noisy


@pytest.mark.parametrize("method", ["loo", "gtg_shapley", "tmc_shapley"])
def test_contrib_ranks_the_planted_clients_last(planted_run, method, tmp_path, capsys):
    run_dir, free, noisy = planted_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    assert main(["contrib", str(copy), "--method", method, "--floor", "0.1", "--rows", "120"]) == 0
    result = json.loads((copy / "contributions.json").read_text())
    assert result["method"] == method and result["evaluations"] > 0
    ranked = sorted(result["values"], key=result["values"].get)
    assert set(ranked[:2]) == {free, noisy}, result["values"]
    assert "zero_update" in result["flags"][free]
    assert result["payouts"][free] == 0
    assert sum(result["payouts"].values()) == pytest.approx(1.0)
    assert method in capsys.readouterr().out
    assert (copy / "plots" / "contributions.png").is_file()  # the chart is drawn
    assert 'alt="contributions"' in (copy / "report.html").read_text()


def test_the_free_rider_sent_back_what_it_received(planted_run):
    run_dir, free, _ = planted_run
    for kept in iter_rounds(run_dir):
        assert all(torch.equal(kept.states[free][n], t) for n, t in kept.before.items())


def test_contrib_bad_input_is_one_line(finished_run, capsys):
    assert main(["contrib", str(finished_run)]) == 2
    err = capsys.readouterr().err
    assert "keep_updates = true" in err and err.count("\n") == 1
    assert main(["contrib", str(finished_run), "--floor", "1.5"]) == 2
    assert "--floor" in capsys.readouterr().err


def test_contrib_as_a_config_section_runs_when_training_ends(tmp_path, tiny_config):
    config = tiny_config(
        "governance.keep_updates=true", "governance.contrib=loo", "federation.local_steps=3"
    )
    result = fedfm.run(config, out=tmp_path)
    saved = json.loads((result.run_dir / "contributions.json").read_text())
    assert result.summary["contribution_evaluations"] == saved["evaluations"] > 0
    assert set(saved["values"]) <= set(result.summary["tokens_per_client"])


def test_loo_on_three_clients_equals_brute_force_retraining(tmp_path, tiny_config):
    """One round, three clients: the round rebuilt without a client is the run retrained
    without it (same start, same seeds), so LOO from the kept updates equals retraining."""
    from fedfm import assemble
    from fedfm.experiment import in_process_federation
    from fedfm.governance import contributions
    from fedfm.governance.valuation import scorer
    from fedfm.rundir import drive, open_run
    from fedfm.server.checkpoint import latest_checkpoint

    overrides = (
        "partition.clients=3",
        "federation.clients_per_round=3",
        "federation.rounds=1",
        "federation.local_steps=8",
        "partition.scheme=iid",
        "governance.keep_updates=true",
    )
    p = assemble.prepare(tiny_config(*overrides))
    initial = p.task.get_state()

    def train(excluded: frozenset[str]):
        p.task.set_state(initial)  # every run starts from the same weights
        run_dir, rows = open_run(p, tmp_path, None, 1)
        fed = in_process_federation(p, [], run_dir)
        fed.excluded = excluded
        drive(p, fed, run_dir, [], None, 1, rows)
        return run_dir, latest_checkpoint(run_dir).state

    run_dir, full = train(frozenset())
    loo = contributions(run_dir, p, "loo")
    assert loo["evaluations"] == 4  # the whole round and each client left out once
    score = scorer(p, p.eval_rows)
    whole = score(full)
    for c in p.partition.client_ids:
        _, without = train(frozenset({c}))
        assert loo["values"][c] == pytest.approx(whole - score(without), abs=1e-9), c
