"""Strategy maths against hand-computed values."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch

from fedfm.config import FederationConfig
from fedfm.state import Update
from fedfm.strategies import STRATEGIES
from fedfm.strategies.fedavg import FedAvgSpec, FedProxSpec
from fedfm.strategies.fedopt import FedAdaptiveSpec, FedAvgMSpec

FED = FederationConfig()
ZERO = OrderedDict(w=torch.zeros(2))


def _updates(*pairs):
    return [
        Update(f"c{i}", 1, OrderedDict(w=torch.tensor(v, dtype=torch.float32)), n)
        for i, (v, n) in enumerate(pairs)
    ]


# Client states [1, 2] with 1 example and [3, 6] with 3: the weighted mean is [2.5, 5].
UPDATES = _updates(([1.0, 2.0], 1), ([3.0, 6.0], 3))


def make(name, spec):
    return STRATEGIES.get(name)(spec, FED)


def test_fedavg_is_example_weighted():
    out = make("fedavg", FedAvgSpec()).aggregate(1, ZERO, UPDATES)
    assert torch.allclose(out["w"], torch.tensor([2.5, 5.0]))


def test_fedavg_keeps_dtype_and_order():
    updates = [
        Update("a", 1, OrderedDict(b=torch.ones(1, dtype=torch.bfloat16), a=torch.zeros(1)), 2),
        Update("b", 1, OrderedDict(b=torch.zeros(1, dtype=torch.bfloat16), a=torch.ones(1)), 2),
    ]
    out = make("fedavg", FedAvgSpec()).aggregate(
        1, OrderedDict(b=torch.zeros(1), a=torch.zeros(1)), updates
    )
    assert list(out) == ["b", "a"] and out["b"].dtype == torch.bfloat16 and out["a"].item() == 0.5


def test_fedprox_sends_mu_and_averages_like_fedavg():
    s = make("fedprox", FedProxSpec(mu=0.3))
    assert s.configure_fit(4, "c1").proximal_mu == 0.3
    assert make("fedavg", FedAvgSpec()).configure_fit(4, "c1").proximal_mu == 0.0
    assert torch.allclose(s.aggregate(1, ZERO, UPDATES)["w"], torch.tensor([2.5, 5.0]))


def test_fedavgm_momentum_over_two_rounds():
    s = make("fedavgm", FedAvgMSpec(server_lr=1.0, momentum=0.9))
    w1 = s.aggregate(1, ZERO, UPDATES)  # v = Δ = [2.5, 5]
    assert torch.allclose(w1["w"], torch.tensor([2.5, 5.0]))
    w2 = s.aggregate(2, w1, UPDATES)  # Δ = 0, v = 0.9·[2.5, 5]
    assert torch.allclose(w2["w"], torch.tensor([2.5 + 2.25, 5.0 + 4.5]))


def _adaptive_round1(delta, v0_factor, v_add):
    tau, lr = 1e-3, 0.1
    m = 0.1 * delta
    v = v0_factor * tau * tau + v_add * delta * delta
    return lr * m / (math.sqrt(v) + tau)


@pytest.mark.parametrize(
    ("name", "v0_factor", "v_add"),
    [("fedadam", 0.99, 0.01), ("fedyogi", 1.0, 0.01), ("fedadagrad", 1.0, 1.0)],
)
def test_adaptive_first_round(name, v0_factor, v_add):
    s = make(name, FedAdaptiveSpec(server_lr=0.1, betas=(0.9, 0.99), tau=1e-3))
    out = s.aggregate(1, ZERO, UPDATES)["w"]
    expected = [_adaptive_round1(d, v0_factor, v_add) for d in (2.5, 5.0)]
    assert np.allclose(out.numpy(), expected, rtol=1e-6)
    # Hand-computed: FedAdam's first step on Δ = 2.5 is 0.1·0.25 / (√0.06250099 + 0.001).
    if name == "fedadam":
        assert out[0].item() == pytest.approx(0.0996008079, rel=1e-6)


def test_adam_and_yogi_differ_when_updates_shrink():
    """Second round with Δ = 0: Adam decays v by β₂, Yogi leaves it (sign rule)."""
    steps = {}
    for name in ("fedadam", "fedyogi"):
        s = make(name, FedAdaptiveSpec(server_lr=0.1, betas=(0.9, 0.99), tau=1e-3))
        w1 = s.aggregate(1, ZERO, UPDATES)
        still = [
            Update(u.client_id, 2, OrderedDict(w=w1["w"].clone()), u.num_examples) for u in UPDATES
        ]
        steps[name] = (s.aggregate(2, w1, still)["w"] - w1["w"])[0].item()
    tau, m1 = 1e-3, 0.25
    v_adam = 0.99 * (0.99 * tau * tau + 0.01 * 6.25)
    v_yogi = tau * tau + 0.01 * 6.25
    assert steps["fedadam"] == pytest.approx(0.1 * 0.9 * m1 / (math.sqrt(v_adam) + tau), rel=1e-5)
    assert steps["fedyogi"] == pytest.approx(0.1 * 0.9 * m1 / (math.sqrt(v_yogi) + tau), rel=1e-5)


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_server_state_round_trips_through_a_checkpoint(name):
    spec = STRATEGIES.get(name).Spec()
    a = make(name, spec)
    w1 = a.aggregate(1, ZERO, UPDATES)
    b = make(name, spec)
    b.load_state_dict({k: v.clone() for k, v in a.state_dict().items()})
    assert torch.equal(a.aggregate(2, w1, UPDATES)["w"], b.aggregate(2, w1, UPDATES)["w"])


def test_selection_is_seeded_and_without_replacement():
    s = make("fedavg", FedAvgSpec())
    clients = [f"c{i}" for i in range(10)]
    a = s.select(3, clients, 5, np.random.default_rng([0, 3]))
    b = s.select(3, clients, 5, np.random.default_rng([0, 3]))
    assert a == b and len(set(a)) == 5
