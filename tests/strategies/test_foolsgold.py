"""FoolsGold: clients whose update histories look alike lose their weight; histories survive a
checkpoint."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch

from fedfm.config import FederationConfig, load_config
from fedfm.errors import ConfigError
from fedfm.state import Update
from fedfm.strategies import STRATEGIES
from fedfm.strategies.foolsgold import FoolsGoldSpec, foolsgold_weights
from fedfm.strategies.robust import flatten_deltas

D = 300


def foolsgold():
    return STRATEGIES.get("foolsgold")(FoolsGoldSpec(), FederationConfig())


def test_weights_by_hand():
    # Two identical histories (sybils) and one orthogonal: cs = 1 → α = 0 for the pair; the
    # third, pardoned to 0, gets α = 1 → 0.99 → logit ln 99 + 0.5 > 1 → 1.
    h = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    assert foolsgold_weights(h).tolist() == [0.0, 0.0, 1.0]
    # Three at 60° from each other are all alike: α = 1 − 0.5 = 0.5 each → 0.99 → 1.
    h = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(3) / 2], [-0.5, math.sqrt(3) / 2]])
    assert foolsgold_weights(h).tolist() == [1.0, 1.0, 1.0]
    assert foolsgold_weights(torch.ones(1, 4)).tolist() == [1.0]


def rounds_of_updates(rounds=3, honest=8, sybils=2, seed=0):
    """Honest clients: their own direction each (non-IID) plus a small shared one; sybils: one
    backdoor direction plus a little noise, every round."""
    gen = torch.Generator().manual_seed(seed)
    own = torch.randn(honest, D, generator=gen)
    shared = torch.randn(D, generator=gen)
    backdoor = torch.randn(D, generator=gen)
    for _ in range(rounds):
        rows = [own[i] + 0.3 * shared + 0.5 * torch.randn(D, generator=gen) for i in range(honest)]
        rows += [backdoor + 0.05 * torch.randn(D, generator=gen) for _ in range(sybils)]
        yield torch.stack(rows), backdoor


def aggregate(strategy, rnd, deltas):
    w0 = OrderedDict(w=torch.zeros(D))
    updates = [Update(f"c{i}", rnd, OrderedDict(w=d.clone()), 10) for i, d in enumerate(deltas)]
    return flatten_deltas([strategy.aggregate(rnd, w0, updates)], w0)[0]


def test_sybils_lose_their_weight_and_the_backdoor_leaves_the_aggregate():
    s = foolsgold()
    for rnd, (deltas, _) in enumerate(rounds_of_updates(), start=1):
        out = aggregate(s, rnd, deltas)
    backdoor = next(rounds_of_updates(rounds=1))[1]  # the same direction every round
    assert s.last_excluded == ["c8", "c9"]
    m = s.round_metrics()
    assert m["foolsgold_weight_min"] == 0 and m["robust_rejected"] == 2
    unit = backdoor / backdoor.norm()
    fedavg = deltas.mean(0)
    assert abs(out @ unit) < 0.05 * out.norm() and abs(fedavg @ unit) > 0.3 * fedavg.norm()


def test_histories_survive_a_checkpoint():
    rounds = list(rounds_of_updates(rounds=3))
    a = foolsgold()
    for rnd, (deltas, _) in enumerate(rounds[:2], start=1):
        aggregate(a, rnd, deltas)
    saved = a.state_dict()
    assert sorted(saved) == [f"foolsgold.history/c{i}" for i in range(10)]
    b = foolsgold()
    b.load_state_dict(saved)
    assert torch.equal(aggregate(a, 3, rounds[2][0]), aggregate(b, 3, rounds[2][0]))
    with pytest.raises(ValueError, match="foolsgold.history"):
        foolsgold().load_state_dict({"momentum": torch.zeros(1)})


def test_foolsgold_by_config_and_bad_confidence():
    config = load_config(None, ["strategy.name=foolsgold", "strategy.confidence=2"])
    assert config.strategy == FoolsGoldSpec(confidence=2.0)
    with pytest.raises(ConfigError, match=r"strategy\.confidence"):
        load_config(None, ["strategy.name=foolsgold", "strategy.confidence=0"])
