"""FedDF: the server distils the round's client ensemble into the aggregate on a transfer set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fedfm
from fedfm.assemble import build_strategy, prepare
from fedfm.errors import ConfigError
from fedfm.state import Update

FEDDF = [
    "runtime.threads=1",
    "warmup.data=${FEDFM_DATA}/agnews/train.tsv",
    "warmup.offset=8000",  # rows no client holds (clients have the first 800)
    "warmup.rows=200",
    "warmup.ensemble_steps=5",
]


def test_the_ensemble_is_the_mean_of_the_clients_probabilities(tiny_config):
    p = prepare(tiny_config(*FEDDF))
    feddf = build_strategy(p, len(p.partition.client_ids))
    base = p.task.get_state()
    updates = []
    for i in range(2):
        g = torch.Generator().manual_seed(i)
        state = {n: t + 0.05 * torch.randn(t.shape, generator=g) for n, t in base.items()}
        updates.append(Update(f"c{i}", 1, state, 10, {}))
    rows = np.arange(len(feddf.tokens))
    each = []
    for u in updates:
        p.task.set_state(u.state)
        each.append(p.task.probabilities(feddf.tokens, rows, feddf.temperature))
    assert np.allclose(feddf.ensemble(updates), (each[0] + each[1]) / 2, atol=1e-6)

    plain = feddf.inner.aggregate(1, base, updates)
    distilled = feddf.aggregate(1, base, updates)
    assert any(not torch.equal(plain[n], distilled[n]) for n in plain)  # distillation moved it
    assert np.isfinite(feddf.round_metrics()["ensemble_distillation_loss"])


def test_a_feddf_run_logs_its_distillation_loss(tiny_config, tmp_path):
    result = fedfm.run(tiny_config(*FEDDF), out=tmp_path)
    assert [r["round"] for r in result.metrics] == [1, 2]
    assert all(np.isfinite(r["ensemble_distillation_loss"]) for r in result.metrics)
    # (whether it helps is measured in `fedfm bench fm4fl-kd`; 2 tiny rounds learn little)


def test_feddf_refuses_what_hides_the_client_models(tiny_config):
    with pytest.raises(ConfigError, match="ensemble distillation reads each client"):
        tiny_config(*FEDDF, "secagg.enabled=true")
    with pytest.raises(ConfigError, match="ensemble distillation reads each client"):
        tiny_config(*FEDDF, "privacy.dp=central", "privacy.noise_multiplier=1.0")
    with pytest.raises(ConfigError, match="a table of texts for warmup.ensemble_steps"):
        tiny_config("warmup.ensemble_steps=3")
    with pytest.raises(ConfigError, match="synchronous strategy"):
        prepare(tiny_config(*FEDDF, "strategy.name=fedbuff"))
