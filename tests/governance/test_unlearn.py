"""Unlearning: retraining restarts exactly where the client first took part; replay rebuilds
from the kept updates without it; bad input is one line and overwrites nothing."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import fedfm
from fedfm.cli import main
from fedfm.governance.unlearn import unlearn
from fedfm.rundir import read_rows

OPTIONS = ("federation.rounds=3", "governance.keep_updates=true")


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory, tiny_config_module):
    return fedfm.run(tiny_config_module(*OPTIONS), out=tmp_path_factory.mktemp("runs")).run_dir


def _rows(run_dir):
    return read_rows(run_dir / "metrics.jsonl", 99)


def _late_client(run_dir) -> tuple[str, int]:
    """A client that first took part after round 1, and that round."""
    first: dict[str, int] = {}
    for row in _rows(run_dir):
        for c in row["clients"]:
            first.setdefault(c, row["round"])
    late = [(c, r) for c, r in first.items() if r > 1]
    assert late, f"every client took part in round 1: {first}"
    return late[0]


def test_retrain_restarts_before_the_clients_first_round_and_equals_a_run_without_it(
    kept_run, tmp_path, tiny_config
):
    client, first = _late_client(kept_run)
    summary = unlearn(kept_run, client, tmp_path / "retrained", "retrain")
    out = tmp_path / "retrained"
    assert summary["unlearned"]["restarted_at_round"] == first
    rows = _rows(out)
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert all(client not in r["clients"] for r in rows)
    assert rows[: first - 1] == _rows(kept_run)[: first - 1]  # copied: it had not taken part
    # The gold standard: the whole run from round 1 with the client never selected.
    from fedfm import assemble
    from fedfm.experiment import in_process_federation
    from fedfm.rundir import drive, open_run

    p = assemble.prepare(tiny_config(*OPTIONS))
    run_dir, prior = open_run(p, tmp_path / "fresh", None, 1)
    fed = in_process_federation(p, [], run_dir)
    fed.excluded = frozenset({client})
    drive(p, fed, run_dir, [], None, 1, prior)
    restarted = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    fresh = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert restarted.keys() == fresh.keys()
    assert all((restarted[k] == fresh[k]).all() for k in fresh)
    assert [r["clients"] for r in _rows(run_dir)] == [r["clients"] for r in rows]


def test_replay_rebuilds_without_the_client_at_a_fraction_of_the_steps(kept_run, tmp_path):
    client, first = _late_client(kept_run)
    out = tmp_path / "replayed"
    assert main(["unlearn", str(kept_run), "--client", client, "--out", str(out),
                 "--method", "replay", "--calibration", "0.5"]) == 0  # fmt: skip
    record = json.loads((out / "unlearning.json").read_text())
    assert record["method"] == "replay" and record["client"] == client
    assert record["first_round"] == first
    later = [r for r in _rows(kept_run) if r["round"] >= first]
    retrain_steps = sum(len([c for c in r["clients"] if c != client]) for r in later) * 5
    assert 0 < record["calibration_steps"] <= retrain_steps / 2 + len(later) * 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["unlearned"] == record and summary["final_accuracy"] is not None
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_replay_with_full_calibration_rebuilds_the_round_without_the_client(kept_run):
    """With the run's own step count, a remaining client's calibration from the round's start
    is its original update (same seeds), so the first replayed round is exactly the round's
    aggregate over the remaining clients."""
    from fedfm import assemble
    from fedfm.governance.kept import load_round
    from fedfm.governance.unlearn import rebuild
    from fedfm.rundir import run_config

    client, first = _late_client(kept_run)
    p = assemble.prepare(run_config(kept_run))
    state, spent = rebuild(p, kept_run, [first], client, steps=5)
    kept = load_round(kept_run, first)
    remaining = [c for c in kept.clients if c != client]
    expected = kept.aggregate(remaining)
    for name, t in expected.items():
        torch.testing.assert_close(state[name], t, rtol=1e-4, atol=1e-6)
    assert spent == 5 * len(remaining)


def test_bad_input_is_one_line_and_overwrites_nothing(kept_run, finished_run, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert main(["unlearn", str(kept_run), "--client", "c0", "--out", str(taken)]) == 2
    assert "nothing is overwritten" in capsys.readouterr().err
    assert (taken / "keep.txt").read_text() == "mine"
    assert main(["unlearn", str(kept_run), "--client", "nobody", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "'nobody' is not a client" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()
    out = tmp_path / "y"
    assert main(["unlearn", str(finished_run), "--client", "c0", "--out", str(out),
                 "--method", "replay"]) == 2  # fmt: skip
    assert "keep_updates = true" in capsys.readouterr().err
