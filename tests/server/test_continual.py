"""Continual federated learning on the server: the figures, who trains a stage, and a whole
tiny class-incremental run (naive sequential training forgets; replay forgets less)."""

from __future__ import annotations

import numpy as np
import pytest

from fedfm.client.app import ClientData
from fedfm.config import load_config
from fedfm.data.stages import Stages
from fedfm.server.continual import average_accuracy, continual_summary, forgetting, holding

STAGES = 'continual.stages=[["World", "Sports"], ["Business", "Sci/Tech"]]'
NAMES = ("Business", "Sci/Tech", "Sports", "World")

# stage_accuracy of each evaluated round: 3 stages of 2 rounds
HISTORY = [
    {"0": 0.50},
    {"0": 0.80},
    {"0": 0.60, "1": 0.70},
    {"0": 0.40, "1": 0.90},
    {"0": 0.30, "1": 0.60, "2": 0.75},
    {"0": 0.20, "1": 0.50, "2": 0.80},
]


def test_forgetting_and_average_accuracy_of_a_hand_made_sequence():
    # old stages 0 and 1: best 0.80 and 0.90, final 0.20 and 0.50 → drops 0.60 and 0.40
    assert forgetting(HISTORY) == pytest.approx(0.50, abs=1e-12)
    assert average_accuracy(HISTORY[-1]) == pytest.approx((0.20 + 0.50 + 0.80) / 3, abs=1e-12)
    # one stage seen: nothing is old, nothing forgotten
    assert forgetting(HISTORY[:2]) == 0.0
    # an improving old stage forgets nothing (the final is its best)
    assert forgetting([{"0": 0.5}, {"0": 0.6, "1": 0.4}, {"0": 0.7, "1": 0.5}]) == 0.0


def test_the_summary_reads_the_rows_with_stage_accuracies():
    rows = [{"round": i + 1, "stage_accuracy": h} for i, h in enumerate(HISTORY)]
    rows.insert(3, {"round": 99})  # a round not evaluated
    summary = continual_summary(rows)
    assert summary["forgetting"] == pytest.approx(0.50, abs=1e-12)
    assert summary["average_accuracy"] == pytest.approx(0.50, abs=1e-12)
    assert summary["final_stage_accuracy"] == HISTORY[-1]
    assert continual_summary([{"round": 1, "accuracy": 0.5}]) == {}  # not a continual run


def test_a_client_without_rows_of_the_stage_sits_the_round_out():
    config = load_config(None, [STAGES, "federation.rounds=4", "continual.rounds_per_stage=2"])
    stages = Stages.resolve(config, NAMES, np.array([0, 1, 2, 3]))
    labels = np.array([3, 2, 0, 1, 3, 3])
    data = {
        "both": ClientData(None, labels, np.array([0, 2])),  # World, Business
        "first": ClientData(None, labels, np.array([1, 4, 5])),  # Sports, World, World
        "second": ClientData(None, labels, np.array([3])),  # Sci/Tech
    }
    candidates = holding(stages, data)
    everyone = ["both", "first", "second"]
    assert candidates(1, everyone) == candidates(2, everyone) == ["both", "first"]
    assert candidates(3, everyone) == candidates(4, everyone) == ["both", "second"]
    assert candidates(3, ["second"]) == ["second"]  # only among the available ones


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_config_module):
    """The same tiny class-incremental run (2 stages × 2 rounds), naive and with replay."""
    import fedfm

    out = tmp_path_factory.mktemp("continual")
    common = [
        STAGES,
        "continual.rounds_per_stage=2",
        "federation.rounds=4",
        "federation.local_steps=10",
        "runtime.threads=1",
        "governance.provenance=false",
    ]
    return {
        mitigation: fedfm.run(
            tiny_config_module(
                *common, f"continual.mitigation={mitigation}", "continual.replay_rows=32"
            ),
            out=out,
        )
        for mitigation in ("none", "replay")
    }


def test_a_tiny_run_logs_stage_accuracies_and_summarises_them(runs):
    result = runs["none"]
    rows = result.metrics
    assert [sorted(r["stage_accuracy"]) for r in rows] == [["0"], ["0"], ["0", "1"], ["0", "1"]]
    summary = result.summary
    final = rows[-1]["stage_accuracy"]
    assert summary["final_stage_accuracy"] == final
    assert summary["average_accuracy"] == pytest.approx((final["0"] + final["1"]) / 2)
    best = max(r["stage_accuracy"]["0"] for r in rows)
    assert summary["forgetting"] == pytest.approx(best - final["0"])


def test_naive_sequential_training_forgets_the_first_stage(runs):
    rows = runs["none"].metrics
    end_of_stage_0, final = rows[1]["stage_accuracy"]["0"], rows[-1]["stage_accuracy"]["0"]
    assert end_of_stage_0 > 0.7  # it learnt World vs Sports
    assert end_of_stage_0 - final > 0.4  # and lost most of it training Business and Sci/Tech


def test_replay_forgets_less_than_naive_training_on_the_same_seed(runs):
    none, replay = runs["none"], runs["replay"]
    # the same stage 0 (no replay yet), the same clients in every round
    assert none.metrics[1]["stage_accuracy"] == replay.metrics[1]["stage_accuracy"]
    assert [r["clients"] for r in none.metrics] == [r["clients"] for r in replay.metrics]
    assert replay.summary["forgetting"] < none.summary["forgetting"] - 0.2
    assert replay.summary["average_accuracy"] > none.summary["average_accuracy"]
