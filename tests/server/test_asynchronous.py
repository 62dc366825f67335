"""Asynchronous FedBuff rounds: the staleness-weighted rule, and a simulated run end to end."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

from fedfm.config import FederationConfig
from fedfm.errors import ConfigError
from fedfm.experiment import run
from fedfm.state import Update
from fedfm.strategies.fedbuff import FedBuff, FedBuffSpec


def test_fedbuff_applies_the_staleness_weighted_mean_delta():
    rule = FedBuff(
        FedBuffSpec(buffer_size=2, server_lr=0.5, staleness_exponent=0.5), FederationConfig()
    )
    w = OrderedDict(x=torch.tensor([1.0, 2.0]))
    fresh = Update("a", 1, OrderedDict(x=torch.tensor([2.0, 0.0])), 10, {"staleness": 0.0})
    stale = Update("b", 1, OrderedDict(x=torch.tensor([0.0, 4.0])), 99, {"staleness": 3.0})
    out = rule.aggregate(1, w, [fresh, stale])
    s = (1 + 3) ** -0.5  # = 0.5
    expected = w["x"] + 0.5 * (torch.tensor([2.0, 0.0]) + s * torch.tensor([0.0, 4.0])) / 2
    assert torch.allclose(out["x"], expected)
    m = rule.round_metrics()
    assert m["staleness_mean"] == 1.5 and m["staleness_max"] == 3.0


def test_no_staleness_discount_with_exponent_zero():
    rule = FedBuff(FedBuffSpec(buffer_size=1, staleness_exponent=0.0), FederationConfig())
    assert rule.weight(0) == rule.weight(50) == 1.0


@pytest.fixture(scope="module")
def async_run(tiny_config_module, tmp_path_factory):
    config = tiny_config_module(
        "strategy.name=fedbuff",
        "strategy.buffer_size=2",
        "strategy.speed_sigma=1.0",
        "federation.rounds=4",
        "federation.clients_per_round=3",
        "name=fedbuff",
    )
    return run(config, out=tmp_path_factory.mktemp("fedbuff"))


def test_an_async_run_takes_server_steps_from_buffered_updates(async_run):
    rows = async_run.metrics
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    assert all(len(r["clients"]) == 2 for r in rows)  # buffer_size updates per step
    times = [r["sim_time"] for r in rows]
    assert times == sorted(times) and times[0] > 0
    assert any(r["staleness_max"] >= 1 for r in rows)  # updates do arrive stale
    assert all(r["bytes_up"] > 0 and r["bytes_down"] > 0 for r in rows)
    assert rows[-1]["accuracy"] > 0.3  # 4 classes: it learned


def test_faster_clients_contribute_more_often(async_run):
    speed_rng = np.random.default_rng([0, 0x5BEED])
    ids = ["c0", "c1", "c2", "c3"]
    speeds = dict(zip(ids, np.exp(speed_rng.standard_normal(4)), strict=True))
    counts = {c: sum(c in r["clients"] for r in async_run.metrics) for c in ids}
    fastest, slowest = min(speeds, key=speeds.get), max(speeds, key=speeds.get)
    assert counts[fastest] >= counts[slowest]
    assert counts[fastest] >= 2


def test_a_stateful_downlink_is_refused(tiny_config, tmp_path):
    config = tiny_config("strategy.name=fedbuff", "codec.down=['delta']")
    with pytest.raises(ConfigError, match="stateless downlink"):
        run(config, out=tmp_path)
