"""FLAME: the majority cluster by cosine, clipping to the median norm, seeded noise."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch

from fedfm.config import FederationConfig, load_config
from fedfm.errors import ConfigError
from fedfm.state import Update
from fedfm.strategies import STRATEGIES
from fedfm.strategies.base import ServerContext
from fedfm.strategies.flame import FlameSpec, cosine_distances, majority_cluster
from fedfm.strategies.robust import flatten_deltas

D = 400


def flame(noise_lambda=0.0, seed=0):
    strategy = STRATEGIES.get("flame")(FlameSpec(noise_lambda=noise_lambda), FederationConfig())
    strategy.bind(ServerContext(seed=seed))
    return strategy


def planted_round(honest=7, poisoned=3, boost=1.0, seed=0):
    """Honest deltas: a shared direction g plus their own noise (non-IID clients agree only in
    part); poisoned ones: the same g plus a common backdoor direction b, ⊥ g, of equal weight."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(D, generator=gen)
    b = torch.randn(D, generator=gen)
    b -= (b @ g) / (g @ g) * g
    b *= g.norm() / b.norm()

    def noisy(v):
        return v + 0.6 * torch.randn(D, generator=gen) * g.norm() / math.sqrt(D)

    rows = [noisy(g) for _ in range(honest)] + [boost * noisy(g + 2 * b) for _ in range(poisoned)]
    return torch.stack(rows), g, b


def as_updates(deltas, global_state):
    return [
        Update(f"c{i}", 1, OrderedDict(w=global_state["w"] + d), 10) for i, d in enumerate(deltas)
    ]


def test_cosine_distances_by_hand():
    rows = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [0.0, 0.0]])
    expected = np.array([[0, 1, 2, 1], [1, 0, 1, 1], [2, 1, 0, 1], [1, 1, 1, 0]], dtype=float)
    assert np.allclose(cosine_distances(rows), expected)


def test_the_majority_cluster_leaves_out_the_planted_backdoor_clients():
    deltas, _, _ = planted_round()
    admitted = majority_cluster(cosine_distances(deltas))
    # HDBSCAN may call an honest outlier noise too; it never admits a poisoned update.
    assert set(admitted) <= set(range(7)) and len(admitted) > 10 // 2


def test_without_a_majority_cluster_the_global_state_is_kept(monkeypatch, caplog):
    monkeypatch.setattr("fedfm.strategies.flame.majority_cluster", lambda distances: [])
    deltas, _, _ = planted_round()
    w0 = OrderedDict(w=torch.ones(D))
    s = flame(0.01)
    assert torch.equal(s.aggregate(1, w0, as_updates(deltas, w0))["w"], w0["w"])
    assert "no majority cluster" in caplog.text and s.round_metrics()["robust_rejected"] == 10


def test_flame_excludes_the_poisoned_clips_to_the_median_norm_and_averages():
    deltas, g, b = planted_round(boost=5.0)
    w0 = OrderedDict(w=torch.zeros(D))
    s = flame()
    out = flatten_deltas([s.aggregate(1, w0, as_updates(deltas, w0))], w0)[0]
    median = float(deltas.norm(dim=1).quantile(0.5))
    admitted = majority_cluster(cosine_distances(deltas))
    honest = deltas[admitted]
    scale = (median / honest.norm(dim=1)).clamp(max=1.0)
    assert torch.allclose(out, (honest * scale[:, None]).mean(0), atol=1e-5)
    assert {"c7", "c8", "c9"} <= set(s.last_excluded)
    m = s.round_metrics()
    assert m["flame_admitted"] == len(admitted) and m["robust_rejected"] == 10 - len(admitted)
    assert m["flame_clip_bound"] == pytest.approx(median, rel=1e-6)
    # Against FedAvg, the backdoor direction nearly vanishes from the aggregate.
    fedavg = deltas.mean(0)
    unit = b / b.norm()
    assert abs(out @ unit) / out.norm() < 0.1 < abs(fedavg @ unit) / fedavg.norm()


def test_an_admitted_boosted_update_is_clipped_to_the_median_norm():
    rows = torch.stack(
        [torch.tensor([1.0, 0.1]), torch.tensor([1.0, -0.1]), torch.tensor([50.0, 0])]
    )
    w0 = OrderedDict(w=torch.zeros(2))
    s = flame()
    out = flatten_deltas([s.aggregate(1, w0, as_updates(rows, w0))], w0)[0]
    bound = float(rows.norm(dim=1).median())
    assert s.round_metrics()["flame_clipped"] == 1  # only the 50× one
    expected = (rows[0] + rows[1] + rows[2] / rows[2].norm() * bound) / 3
    assert torch.allclose(out, expected, atol=1e-6)


def test_noise_has_the_stated_std_and_is_seeded_per_round():
    w0 = OrderedDict(w=torch.zeros(20_000))
    same = [torch.ones(20_000) * 0.01] * 3  # identical deltas: the mean is exact, the rest noise
    updates = as_updates(same, w0)
    first = flatten_deltas([flame(0.01, seed=3).aggregate(1, w0, updates)], w0)[0] - 0.01
    again = flatten_deltas([flame(0.01, seed=3).aggregate(1, w0, updates)], w0)[0] - 0.01
    later = flatten_deltas([flame(0.01, seed=3).aggregate(2, w0, updates)], w0)[0] - 0.01
    bound = 0.01 * math.sqrt(20_000)
    assert first.std().item() == pytest.approx(0.01 * bound, rel=0.03)
    assert torch.equal(first, again) and not torch.equal(first, later)


def test_flame_by_config_and_bad_lambda():
    config = load_config(None, ["strategy.name=flame", "strategy.noise_lambda=0.01"])
    assert config.strategy == FlameSpec(noise_lambda=0.01)
    with pytest.raises(ConfigError, match=r"strategy\.noise_lambda"):
        load_config(None, ["strategy.name=flame", "strategy.noise_lambda=-1"])
