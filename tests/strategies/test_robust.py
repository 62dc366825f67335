"""Robust aggregation rules against hand-computed values and a hand-made attack."""

from __future__ import annotations

import logging
import math
from collections import OrderedDict

import pytest
import torch

from fedfm.config import FederationConfig, config_to_toml, load_config
from fedfm.errors import ConfigError
from fedfm.state import State, Update
from fedfm.strategies import STRATEGIES
from fedfm.strategies.fedavg import FedAvgSpec
from fedfm.strategies.flame import FlameSpec
from fedfm.strategies.robust import (
    FLTrustSpec,
    KrumSpec,
    MedianSpec,
    MultiKrumSpec,
    NormBoundSpec,
    TrimmedMeanSpec,
    apply_delta,
    flatten_deltas,
    krum_scores,
    unflatten,
)

FED = FederationConfig()
ROBUST = ["median", "trimmed_mean", "krum", "multikrum", "norm_bound", "fltrust", "flame"]


def make(name, spec=None, root=None):
    """A strategy by name; for fltrust, ``root`` is the server's delta (a State)."""
    strategy = STRATEGIES.get(name)(spec or STRATEGIES.get(name).Spec(), FED)
    if root is not None:
        strategy.root_update = lambda rnd, w: OrderedDict((k, w[k] + root[k]) for k in w)
    return strategy


def updates_from(global_state: State, deltas, examples=None) -> list[Update]:
    """One client per delta (a State or a list for the single tensor ``w``), state = global + delta."""
    out = []
    for i, delta in enumerate(deltas):
        if not isinstance(delta, dict):
            delta = OrderedDict(w=torch.tensor(delta, dtype=torch.float32))
        state = OrderedDict((k, global_state[k] + delta[k]) for k in global_state)
        out.append(Update(f"c{i}", 1, state, examples[i] if examples else 1))
    return out


def step(strategy, global_state: State, updates: list[Update]) -> torch.Tensor:
    """The flat delta the strategy applies to the global state."""
    new = strategy.aggregate(1, global_state, updates)
    return flatten_deltas([new], global_state)[0]


W0 = OrderedDict(w=torch.tensor([0.5, -1.0]))  # a global state that is not zero


# ---------------------------------------------------------------------------------------------
# Plumbing


def test_flatten_and_unflatten_keep_names_order_shapes_and_dtypes():
    template = OrderedDict(b=torch.zeros(2, 3, dtype=torch.bfloat16), a=torch.zeros(4))
    state = OrderedDict(a=torch.arange(4.0), b=torch.ones(2, 3, dtype=torch.bfloat16))
    flat = flatten_deltas([state, template], template)
    assert flat.shape == (2, 10) and flat.dtype == torch.float32
    assert flat[0].tolist() == [1.0] * 6 + [0.0, 1.0, 2.0, 3.0] and not flat[1].any()
    back = unflatten(flat[0], template)
    assert list(back) == ["b", "a"] and back["b"].dtype == torch.bfloat16
    assert torch.equal(back["a"], state["a"]) and back["b"].shape == (2, 3)
    assert back["a"].untyped_storage().data_ptr() != back["b"].untyped_storage().data_ptr()
    assert torch.equal(apply_delta(template, flat[0])["a"], state["a"])
    with pytest.raises(ValueError, match="a: update 0 has shape"):
        flatten_deltas([OrderedDict(b=state["b"], a=torch.zeros(5))], template)


# ---------------------------------------------------------------------------------------------
# Each rule on hand-computed examples (single tensor w, deltas given per client)


@pytest.mark.parametrize(
    ("name", "spec", "deltas", "expected"),
    [
        # Median of [1, 2, 100] and of [−5, 0, 7]; the two middle values' mean when n is even.
        ("median", MedianSpec(), [[1, -5], [2, 0], [100, 7]], [2, 0]),
        ("median", MedianSpec(), [[1, 0], [2, 0], [3, 0], [100, 0]], [2.5, 0]),
        # beta = 1/3 on 3 values drops one at each end: the middle value.
        ("trimmed_mean", TrimmedMeanSpec(beta=1 / 3), [[1, -5], [2, 0], [100, 7]], [2, 0]),
        ("trimmed_mean", TrimmedMeanSpec(beta=0.25), [[1, 0], [2, 0], [3, 0], [100, 0]], [2.5, 0]),
        ("trimmed_mean", TrimmedMeanSpec(beta=0.0), [[1, 0], [2, 0], [3, 0], [100, 0]], [26.5, 0]),
        # Krum with f = 0 on 1-D deltas 0, 0.1, 0.3, 10: scores 0.10, 0.05, 0.13, 192.1 → 0.1.
        ("krum", KrumSpec(f=0), [[0, 0], [0.1, 0], [0.3, 0], [10, 0]], [0.1, 0]),
        ("multikrum", MultiKrumSpec(f=0, m=2), [[0, 0], [0.1, 0], [0.3, 0], [10, 0]], [0.05, 0]),
        ("multikrum", MultiKrumSpec(f=0, m=3), [[0, 0], [0.1, 0], [0.3, 0], [10, 0]], [0.4 / 3, 0]),
        ("multikrum", MultiKrumSpec(f=1), [[0, 0], [0.1, 0], [0.3, 0], [10, 0]], [0.4 / 3, 0]),
        # max_norm = 1: [3, 4] is clipped to [0.6, 0.8]; [0.3, 0.4] is kept.
        ("norm_bound", NormBoundSpec(max_norm=1.0), [[3, 4], [0.3, 0.4]], [0.45, 0.6]),
    ],
)
def test_rule_on_hand_computed_example(name, spec, deltas, expected):
    out = step(make(name, spec), W0, updates_from(W0, deltas))
    assert torch.allclose(out, torch.tensor(expected, dtype=torch.float32), atol=1e-6)


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "krum", "multikrum"])
def test_coordinate_and_krum_rules_ignore_example_counts(name):
    deltas = [[1, 0], [2, 1], [3, 5], [4, 2], [100, 3]]
    a = step(make(name), W0, updates_from(W0, deltas, examples=[1, 1, 1, 1, 1]))
    b = step(make(name), W0, updates_from(W0, deltas, examples=[9, 1, 50, 2, 7]))
    assert torch.equal(a, b)


def test_krum_scores_match_the_hand_computed_sums():
    deltas = torch.tensor([[0.0], [0.1], [0.3], [10.0]])
    scores = krum_scores(deltas, f=0)  # the n − f − 2 = 2 smallest squared distances
    assert torch.allclose(scores, torch.tensor([0.10, 0.05, 0.13, 192.1]), rtol=1e-5)


def test_krum_picks_the_honest_cluster_and_reports_it():
    deltas = [[0, 0], [0.1, 0], [0, 0.1], [5, 5], [-5, 5]]
    s = make("krum", KrumSpec(f=1))
    out = step(s, W0, updates_from(W0, deltas))
    assert out.norm() <= 0.1 + 1e-6  # one of the three clustered clients
    assert set(s.last_excluded) >= {"c3", "c4"} and len(s.last_excluded) == 4
    m = s.round_metrics()
    assert m["robust_selected"] == 1 and m["robust_rejected"] == 4 and m["krum_f"] == 1


def test_krum_falls_back_to_the_largest_supported_f_with_a_warning(caplog):
    # n = 4 ≤ 2f + 2 = 4 for f = 1: scored with f = 0, as in the hand-computed example.
    s = make("krum", KrumSpec(f=1))
    with caplog.at_level(logging.WARNING, logger="fedfm.strategies.robust"):
        out = step(s, W0, updates_from(W0, [[0, 0], [0.1, 0], [0.3, 0], [10, 0]]))
    assert "scoring with f = 0" in caplog.text
    assert torch.allclose(out, torch.tensor([0.1, 0.0])) and s.round_metrics()["krum_f"] == 0
    # With two updates nobody can be scored against the others: both are averaged.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fedfm.strategies.robust"):
        out = step(make("krum", KrumSpec(f=0)), W0, updates_from(W0, [[1, 0], [3, 0]]))
    assert torch.allclose(out, torch.tensor([2.0, 0])) and "averaging them all" in caplog.text


def test_norm_bound_clips_a_large_delta_to_max_norm_over_all_tensors():
    global_state = OrderedDict(a=torch.zeros(1), b=torch.full((1,), 2.0))
    delta = OrderedDict(a=torch.tensor([30.0]), b=torch.tensor([40.0]))  # norm 50 over a and b
    s = make("norm_bound", NormBoundSpec(max_norm=0.5))
    out = step(s, global_state, updates_from(global_state, [delta]))
    assert torch.allclose(out, torch.tensor([0.3, 0.4]), rtol=1e-6)
    assert out.norm().item() == pytest.approx(0.5, rel=1e-6)
    m = s.round_metrics()
    assert m["robust_clipped"] == 1 and m["robust_client_norm_max"] == pytest.approx(50)
    # A delta inside the bound is untouched.
    small = step(
        make("norm_bound", NormBoundSpec(max_norm=1.0)), W0, updates_from(W0, [[0.6, 0.8]])
    )
    assert torch.allclose(small, torch.tensor([0.6, 0.8])) and small.norm() == pytest.approx(1.0)


def test_fltrust_zeroes_a_sign_flip_and_rescales_to_the_server_norm():
    root = OrderedDict(w=torch.tensor([1.0, 0.0]))  # server delta, norm 1
    s = make("fltrust", root=root)
    out = step(s, W0, updates_from(W0, [[2, 0], [-3, 0], [1, 1]]))
    # Scores 1, 0, 1/√2; rescaled deltas [1, 0], –, [1/√2, 1/√2].
    r = 1 / math.sqrt(2)
    expected = torch.tensor([1 + r * r, r * r]) / (1 + r)
    assert torch.allclose(out, expected, atol=1e-6)
    assert s.last_excluded == ["c1"]
    m = s.round_metrics()
    assert m["fltrust_trust_min"] == 0 and m["fltrust_trust_mean"] == pytest.approx((1 + r) / 3)
    assert m["robust_rejected"] == 1 and m["fltrust_all_zero"] == 0
    # Every rescaled delta has the server's norm: one trusted client, any size, moves by ‖Δ₀‖.
    alone = step(make("fltrust", root=root), W0, updates_from(W0, [[50, 50]]))
    assert alone.norm().item() == pytest.approx(1.0, rel=1e-6)


def test_fltrust_keeps_the_global_state_when_no_client_is_trusted(caplog):
    s = make("fltrust", root=OrderedDict(w=torch.tensor([1.0, 0.0])))
    with caplog.at_level(logging.WARNING, logger="fedfm.strategies.robust"):
        new = s.aggregate(1, W0, updates_from(W0, [[-1, 0], [0, 0], [0, 2]]))
    assert torch.equal(new["w"], W0["w"]) and "trusts no client" in caplog.text
    assert s.round_metrics()["fltrust_all_zero"] == 1 and s.last_excluded == ["c0", "c1", "c2"]


def test_fltrust_without_a_root_update_says_what_to_set():
    with pytest.raises(ConfigError, match="root_update"):
        make("fltrust").aggregate(1, W0, updates_from(W0, [[1, 0]]))


# ---------------------------------------------------------------------------------------------
# A shared attack: 8 honest clients near g, a sign flip (−10·g) and a scaled update (100·g)


def _attack_scenario():
    """Global state, the 10 updates, the honest direction g (flat, ‖g‖ = 1), the server's delta."""
    gen = torch.Generator().manual_seed(0)
    shapes = OrderedDict(x=(6, 5), y=(20,))  # d = 50
    global_state = OrderedDict((k, torch.randn(s, generator=gen)) for k, s in shapes.items())
    g_flat = torch.randn(50, generator=gen)
    g_flat /= g_flat.norm()
    g = unflatten(g_flat, global_state)

    def near_g():  # g plus noise of norm ≈ 0.1
        return OrderedDict(
            (k, v + 0.1 / math.sqrt(50) * torch.randn(v.shape, generator=gen)) for k, v in g.items()
        )

    honest = [near_g() for _ in range(8)]
    attackers = [OrderedDict((k, c * v) for k, v in g.items()) for c in (-10.0, 100.0)]
    updates = updates_from(global_state, honest + attackers, examples=[10] * 10)
    return global_state, updates, g_flat, near_g()


ATTACK_SPECS = {
    "median": MedianSpec(),
    "trimmed_mean": TrimmedMeanSpec(beta=0.1),
    "krum": KrumSpec(f=2),
    "multikrum": MultiKrumSpec(f=2),
    "norm_bound": NormBoundSpec(max_norm=1.2),  # honest deltas (norm ≈ 1) pass unclipped
    "fltrust": FLTrustSpec(),
    "flame": FlameSpec(),
}


def _distance_and_cosine(out, g):
    return (out - g).norm().item() / g.norm().item(), torch.cosine_similarity(out, g, 0).item()


def test_fedavg_is_dragged_far_from_the_honest_direction():
    global_state, updates, g, _ = _attack_scenario()
    out = step(make("fedavg", FedAvgSpec()), global_state, updates)
    distance, _ = _distance_and_cosine(out, g)
    assert distance > 5  # mean = 9.8·g: the scaled attacker dominates


@pytest.mark.parametrize("name", ROBUST)
def test_robust_rule_stays_near_the_honest_direction(name):
    global_state, updates, g, root = _attack_scenario()
    s = make(name, ATTACK_SPECS[name], root=root if name == "fltrust" else None)
    out = step(s, global_state, updates)
    distance, cosine = _distance_and_cosine(out, g)
    assert cosine > 0.9 and distance < 0.3, (distance, cosine)
    assert out.norm() <= 1.25 * g.norm()
    if name in ("krum", "multikrum"):
        assert {"c8", "c9"} <= set(s.last_excluded)  # both attackers are left out
    if name == "fltrust":  # the sign flip earns no trust; the scaled one is cut to ‖Δ₀‖
        assert s.last_excluded == ["c8"]


# ---------------------------------------------------------------------------------------------
# Dtypes, order, config


@pytest.mark.parametrize("name", ROBUST)
def test_rule_keeps_dtype_and_template_order(name):
    template = OrderedDict(b=torch.zeros(3, dtype=torch.bfloat16), a=torch.zeros(2))
    updates = [
        Update(
            f"c{i}",
            1,
            OrderedDict(a=torch.full((2,), v), b=torch.full((3,), v, dtype=torch.bfloat16)),
            1,
        )
        for i, v in enumerate([0.25, 0.5, 0.75, 1.0, 0.5])
    ]
    root = OrderedDict(b=torch.ones(3, dtype=torch.bfloat16), a=torch.ones(2))
    s = make(name, root=root if name == "fltrust" else None)
    out = s.aggregate(1, template, updates)
    assert (
        list(out) == ["b", "a"]
        and out["b"].dtype == torch.bfloat16
        and out["a"].dtype == torch.float32
    )
    assert out["b"].shape == (3,) and all(isinstance(v, float) for v in s.round_metrics().values())


@pytest.mark.parametrize(
    ("overrides", "spec"),
    [
        (["strategy.name=median"], MedianSpec()),
        (["strategy.name=trimmed_mean", "strategy.beta=0.2"], TrimmedMeanSpec(beta=0.2)),
        (["strategy.name=krum", "strategy.f=3"], KrumSpec(f=3)),
        (["strategy.name=multikrum", "strategy.f=2", "strategy.m=4"], MultiKrumSpec(f=2, m=4)),
        (["strategy.name=norm_bound", "strategy.max_norm=2"], NormBoundSpec(max_norm=2.0)),
        (["strategy.name=fltrust", "strategy.root_rows=50"], FLTrustSpec(root_rows=50)),
    ],
)
def test_config_selects_the_rule_and_round_trips(overrides, spec, tmp_path):
    config = load_config(None, overrides)
    assert config.strategy == spec and type(config.strategy) is type(spec)
    assert config.strategy.plugin_name == overrides[0].split("=")[1]
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(config))
    assert load_config(path) == config


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["strategy.name=trimmed_mean", "strategy.beta=0.5"], "strategy.beta"),
        (["strategy.name=trimmed_mean", "strategy.beta=-0.1"], "strategy.beta"),
        (["strategy.name=krum", "strategy.f=-1"], "strategy.f"),
        (["strategy.name=krum", "strategy.m=3"], "strategy.m"),  # m belongs to multikrum
        (["strategy.name=multikrum", "strategy.m=-1"], "strategy.m"),
        (["strategy.name=norm_bound", "strategy.max_norm=0"], "strategy.max_norm"),
        (["strategy.name=fltrust", "strategy.root_rows=0"], "strategy.root_rows"),
    ],
)
def test_bad_parameter_names_its_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, overrides)


def test_every_rule_has_its_own_spec_class():
    specs = [STRATEGIES.get(name).Spec for name in ROBUST]
    assert len(set(specs)) == len(ROBUST)
    assert [spec.plugin_name for spec in specs] == ROBUST
