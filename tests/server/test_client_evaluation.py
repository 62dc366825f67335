"""Federated evaluation: clients score the global model on their own held-out rows."""

from __future__ import annotations

import numpy as np
import pytest

import fedfm
from fedfm.assemble import client_app, prepare
from fedfm.server.checkpoint import latest_checkpoint

EVAL = ["evaluation.client_split=0.25", "runtime.threads=1"]


@pytest.fixture(scope="module")
def both(tiny_config_module, tmp_path_factory):
    config = tiny_config_module(*EVAL, "evaluation.where=both")
    return config, fedfm.run(config, out=tmp_path_factory.mktemp("eval"))


def test_held_out_rows_are_never_trained_on(tiny_config):
    p = prepare(tiny_config(*EVAL))
    app, _ = client_app(p, p.partition.client_ids)
    for cid, rows in zip(p.partition.client_ids, p.partition.indices, strict=True):
        train, held = set(app.data[cid].rows), set(app.held_out[cid].rows)
        assert not train & held
        assert train | held == set(rows)
        assert len(held) == round(0.25 * len(rows))


def test_the_clients_figures_are_their_held_out_scores_of_the_global_model(both):
    config, result = both
    p = prepare(config)
    app, _ = client_app(p, p.partition.client_ids)
    p.task.set_state(latest_checkpoint(result.run_dir).state)  # the final global state
    final = result.summary["final_client_eval"]
    assert sorted(final) == sorted(p.partition.client_ids)  # the last round asks every client
    for cid, held in app.held_out.items():
        mine = p.task.evaluate(held.tokens, held.labels, held.rows)
        assert final[cid]["accuracy"] == pytest.approx(mine["accuracy"], abs=1e-9)
        assert final[cid]["examples"] == len(held)
    accs = [final[c]["accuracy"] for c in final]
    weights = [final[c]["examples"] for c in final]
    assert result.summary["final_client_accuracy"] == pytest.approx(
        np.average(accs, weights=weights)
    )


def test_both_keeps_the_servers_figures_and_adds_the_clients(both):
    config, result = both
    for row in result.metrics:
        assert row["accuracy"] is not None and row["client_accuracy"] is not None
        assert len(row["client_eval"]) >= config.federation.clients_per_round
        assert row["client_eval_bytes_down"] > 0 and row["client_eval_bytes_up"] > 0
    assert result.summary["client_eval_bytes_up_total"] > 0
    # evaluation traffic is not training traffic: bytes_up counts the updates only
    assert result.metrics[0]["bytes_up"] < 2 * result.metrics[0]["bytes_down"]
    # the same global model scored on rows of the same data set: the two losses agree
    for row in result.metrics:
        assert abs(row["client_loss"] - row["eval_loss"]) < 0.2


def test_clients_only_figures_are_the_rounds_figures(tiny_config, tmp_path):
    result = fedfm.run(tiny_config(*EVAL, "evaluation.where=clients"), out=tmp_path)
    for row in result.metrics:
        assert row["accuracy"] == row["client_accuracy"]
        assert row["eval_loss"] == row["client_loss"]
    assert result.final_accuracy == result.summary["final_client_accuracy"]
