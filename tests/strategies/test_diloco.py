"""DiLoCo's outer step: FedAvg at outer lr 1 without momentum; PyTorch's Nesterov SGD otherwise."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from fedfm.config import FederationConfig, load_config
from fedfm.errors import ConfigError
from fedfm.state import Update
from fedfm.strategies import STRATEGIES
from fedfm.strategies.diloco import DiLoCoSpec


def _round(seed: int, clients: int = 3):
    g = torch.Generator().manual_seed(seed)
    shapes = {"a": (17, 5), "b": (33,)}
    state = OrderedDict((n, torch.randn(s, generator=g)) for n, s in shapes.items())
    updates = [
        Update(
            f"c{k}",
            1,
            OrderedDict((n, t + 0.1 * torch.randn(t.shape, generator=g)) for n, t in state.items()),
            num_examples=10 + 7 * k,
            metrics={},
        )
        for k in range(clients)
    ]
    return state, updates


def _build(name: str, spec=None):
    cls = STRATEGIES.get(name)
    return cls(spec or cls.Spec(), FederationConfig())


def test_outer_lr_one_without_momentum_is_fedavg_bit_for_bit():
    diloco = _build("diloco", DiLoCoSpec(outer_lr=1.0, momentum=0.0))
    fedavg = _build("fedavg")
    for seed in range(5):
        state, updates = _round(seed)
        a = diloco.aggregate(1, state, updates)
        b = fedavg.aggregate(1, state, updates)
        assert all(torch.equal(a[n], b[n]) for n in state)


def test_the_outer_step_is_pytorchs_nesterov_sgd_on_the_outer_gradient():
    spec = DiLoCoSpec(outer_lr=0.7, momentum=0.9, nesterov=True)
    diloco = _build("diloco", spec)
    fedavg = _build("fedavg")
    state, _ = _round(0)
    ref = [torch.nn.Parameter(t.clone().double()) for t in state.values()]
    opt = torch.optim.SGD(ref, lr=0.7, momentum=0.9, nesterov=True)
    for r in range(4):
        _, updates = _round(10 + r)
        for u in updates:  # the clients trained from the current global state
            u.state = OrderedDict(
                (n, state[n] + (t - _round(10 + r)[0][n])) for n, t in u.state.items()
            )
        mean = fedavg.aggregate(r + 1, state, updates)
        for p, name in zip(ref, state, strict=True):
            p.grad = (state[name] - mean[name]).double()  # Δ = θ − mean(θ_k)
        opt.step()
        state = diloco.aggregate(r + 1, state, updates)
        for p, name in zip(ref, state, strict=True):
            torch.testing.assert_close(state[name], p.detach().float(), rtol=1e-6, atol=1e-6)
    # the momentum buffer is the strategy's checkpointed state
    assert diloco.state_dict().keys() == {"v/a", "v/b"}


def test_momentum_state_round_trips_through_a_checkpoint():
    spec = DiLoCoSpec(outer_lr=0.5, momentum=0.8)
    a, b = _build("diloco", spec), _build("diloco", spec)
    state, updates = _round(1)
    a.aggregate(1, state, updates)
    b.load_state_dict(a.state_dict())
    state2, updates2 = _round(2)
    x, y = a.aggregate(2, state2, updates2), b.aggregate(2, state2, updates2)
    assert all(torch.equal(x[n], y[n]) for n in x)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("strategy.outer_lr=0", "strategy.outer_lr = 0.0 is not allowed"),
        (
            "strategy.momentum=1.0",
            "strategy.momentum = 1.0 is not allowed; allowed: 0 ≤ momentum < 1",
        ),
    ],
)
def test_bad_outer_settings_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["strategy.name=diloco", override])
