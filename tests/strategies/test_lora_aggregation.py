"""LoRA-aware aggregation: the new B·A against the exact (float64, dense) mean of the products."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch

from fedfm.config import FederationConfig, load_config
from fedfm.errors import ConfigError
from fedfm.state import Update
from fedfm.strategies import STRATEGIES
from fedfm.strategies.base import example_weighted_mean
from fedfm.strategies.lora_aggregation import (
    LoraSvdSpec,
    aggregate_lora,
    lora_pairs,
    svd_factors,
    truncate_lora_rank,
    zero_pad_factors,
)

OUT, IN = 48, 32
Q = "encoder.base_model.model.encoder.layer.0.attention.self.query"
V = "encoder.base_model.model.encoder.layer.0.attention.self.value"


def _a(module):
    return f"{module}.lora_A.default.weight"


def _b(module):
    return f"{module}.lora_B.default.weight"


def mean_product(a_factors, b_factors, weights):
    """Σ wₖ·Bₖ·Aₖ / Σ wₖ, dense, in float64: the reference every test measures against."""
    total = sum(weights)
    return sum(
        w / total * b.double() @ a.double()
        for a, b, w in zip(a_factors, b_factors, weights, strict=True)
    )


def rel_error(delta, a, b):
    return float(torch.linalg.norm(delta - b.double() @ a.double()) / torch.linalg.norm(delta))


def random_factors(seed, clients, rank, out=OUT, inner=IN):
    g = torch.Generator().manual_seed(seed)
    a = [torch.randn(rank, inner, generator=g) / inner**0.5 for _ in range(clients)]
    b = [torch.randn(out, rank, generator=g) * 0.1 for _ in range(clients)]
    return a, b


WEIGHTS = [1.0, 3.0, 2.0, 4.0]


def test_lora_pairs_match_peft_names():
    names = [
        _a(Q),
        _b(Q),
        _a(V),  # its B is missing: not a pair
        f"{Q}.lora_embedding_A.default",
        f"{Q}.lora_embedding_B.default",
        "head.weight",
    ]
    assert lora_pairs(names) == [
        (_a(Q), _b(Q)),
        (f"{Q}.lora_embedding_A.default", f"{Q}.lora_embedding_B.default"),
    ]


def test_svd_is_exact_when_clients_share_a():
    """Same A on every client (FFA-LoRA): the products span A's r rows, so rank r is enough."""
    a, b = random_factors(0, 4, 4)
    shared = [a[0]] * 4
    delta = mean_product(shared, b, WEIGHTS)
    f = svd_factors(shared, b, WEIGHTS, rank=4)
    assert f.a.shape == (4, IN) and f.b.shape == (OUT, 4)
    assert rel_error(delta, f.a, f.b) < 1e-5 and f.error < 1e-5


def test_svd_is_exact_when_the_products_span_at_most_r_dimensions():
    """Four clients whose updates have rank 2 each (different As and Bs): K·2 = 8 = r."""
    a, b = random_factors(1, 4, 8)
    b = [bk * torch.tensor([1.0, 1.0] + [0.0] * 6) for bk in b]  # only 2 components moved
    delta = mean_product(a, b, WEIGHTS)
    f = svd_factors(a, b, WEIGHTS, rank=8)
    assert rel_error(delta, f.a, f.b) < 1e-5 and f.error < 1e-5
    # ... and naive averaging of the factors is far from it.
    mean_a = sum(w * x for w, x in zip(WEIGHTS, a, strict=True)) / sum(WEIGHTS)
    mean_b = sum(w * x for w, x in zip(WEIGHTS, b, strict=True)) / sum(WEIGHTS)
    assert rel_error(delta, mean_a, mean_b) > 0.5


@pytest.mark.parametrize(("clients", "rank"), [(2, 4), (4, 8), (10, 2), (3, 16)])
def test_reported_error_is_the_measured_one(clients, rank):
    a, b = random_factors(clients * rank, clients, rank)
    weights = list(range(1, clients + 1))
    f = svd_factors(a, b, weights, rank)
    measured = rel_error(mean_product(a, b, weights), f.a, f.b)
    assert measured > 0.05  # independent random products: rank K·r > r, truncation is lossy
    assert f.error == pytest.approx(measured, abs=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_never_worse_than_averaging_the_factors(seed):
    """Eckart–Young: the truncated SVD is the best rank-r approximation of the mean product."""
    clients, rank = 2 + seed, 2 + seed % 3
    a, b = random_factors(100 + seed, clients, rank)
    weights = [float(k + 1) for k in range(clients)]
    delta = mean_product(a, b, weights)
    f = svd_factors(a, b, weights, rank)
    mean_a = sum(w * x for w, x in zip(weights, a, strict=True)) / sum(weights)
    mean_b = sum(w * x for w, x in zip(weights, b, strict=True)) / sum(weights)
    naive = zero_pad_factors(a, b, weights, rank)  # same ranks: zero-padding is plain FedAvg
    assert torch.allclose(naive.a, mean_a) and torch.allclose(naive.b, mean_b, atol=1e-7)
    assert rel_error(delta, f.a, f.b) <= rel_error(delta, mean_a, mean_b) + 1e-6
    assert naive.error == pytest.approx(rel_error(delta, mean_a, mean_b), abs=1e-5)


def test_both_splits_give_the_same_product_and_a_keeps_the_clients_scale():
    """The split is a choice of factors for one product: a_scale keeps A's rows orthogonal at the
    clients' mean row norm; FlexLoRA's sqrt split shrinks them to √σ (small updates, small A)."""
    a, b = random_factors(7, 4, 4)
    b = [0.01 * bk for bk in b]  # one round of small updates: σ ≪ A's scale
    delta = mean_product(a, b, WEIGHTS)
    scaled = svd_factors(a, b, WEIGHTS, rank=4)
    root = svd_factors(a, b, WEIGHTS, rank=4, split="sqrt")
    assert torch.allclose(
        scaled.b.double() @ scaled.a.double(), root.b.double() @ root.a.double(), atol=1e-7
    )
    assert scaled.error == pytest.approx(root.error, abs=1e-6)
    assert rel_error(delta, scaled.a, scaled.b) == pytest.approx(scaled.error, abs=1e-5)
    c = sum(w * float(torch.linalg.norm(x)) / 2 for w, x in zip(WEIGHTS, a, strict=True)) / sum(
        WEIGHTS
    )
    gram = scaled.a @ scaled.a.T
    assert torch.allclose(gram, c**2 * torch.eye(4), atol=1e-5)  # orthogonal rows of norm c
    assert root.a.norm(dim=1).max() < 0.3 * c  # √σ: far below the scale A trains at
    with pytest.raises(ValueError, match="split = 'half'"):
        svd_factors(a, b, WEIGHTS, rank=4, split="half")


def test_a_zero_mean_product_gives_zero_b_and_the_mean_a():
    """Round 1 of LoRA: B = 0 everywhere. No NaNs, no error, and A keeps training (not zeroed)."""
    a, _ = random_factors(2, 3, 4)
    b = [torch.zeros(OUT, 4)] * 3
    f = svd_factors(a, b, [1.0, 1.0, 2.0], rank=4)
    assert torch.isfinite(f.a).all() and torch.isfinite(f.b).all() and f.error == 0.0
    assert torch.equal(f.b, torch.zeros(OUT, 4))
    assert torch.allclose(f.a, (a[0] + a[1] + 2 * a[2]) / 4)


def test_a_rank_deficient_mean_keeps_the_product_and_revives_dead_components():
    """One client of rank 1 into rank 4: the 3 empty components get B = 0 and a non-zero A."""
    a, b = random_factors(3, 1, 1)
    f = svd_factors(a, b, [1.0], rank=4)
    assert rel_error(mean_product(a, b, [1.0]), f.a, f.b) < 1e-6 and f.error < 1e-6
    assert torch.equal(f.b[:, 1:], torch.zeros(OUT, 3))
    assert f.a[0].norm() > 0


# ---- clients of different ranks (HetLoRA / FlexLoRA) ------------------------------------------


def test_zero_padding_by_hand():
    """Ranks 1 and 2 into rank 2 with weights 1 and 3: row 2 of A is 3/4 of client 2's."""
    a1, b1 = torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0], [0.0]])
    a2, b2 = torch.tensor([[3.0, 0.0], [0.0, 4.0]]), torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    f = zero_pad_factors([a1, a2], [b1, b2], [1.0, 3.0], rank=2)
    assert torch.allclose(f.a, torch.tensor([[2.5, 0.5], [0.0, 3.0]]))
    assert torch.allclose(f.b, torch.tensor([[1.75, 0.0], [0.0, 1.5]]))
    delta = mean_product([a1, a2], [b1, b2], [1.0, 3.0])
    assert f.error == pytest.approx(rel_error(delta, f.a, f.b), abs=1e-6)
    with pytest.raises(ValueError, match="client rank 2 exceeds the global rank 1"):
        zero_pad_factors([a1, a2], [b1, b2], [1.0, 3.0], rank=1)


def test_zero_padding_scales_put_clients_on_the_global_scale():
    """A rank-2 client with alpha/2 has twice the effect per unit of B as rank 4 with alpha/4."""
    a, b = random_factors(4, 1, 2)
    f = zero_pad_factors(a, b, [1.0], rank=4, scales=[2.0])
    assert torch.allclose(f.b @ f.a, 2 * b[0] @ a[0], atol=1e-6)


def test_svd_of_mixed_ranks_is_exact_when_their_sum_fits():
    """Ranks 1, 2 and 3 (Σ = 6) into rank 8: exact, and the global shape is rank 8."""
    a, b = [], []
    for k, r in enumerate((1, 2, 3)):
        ak, bk = random_factors(10 + k, 1, r)
        a += ak
        b += bk
    weights = [2.0, 1.0, 1.0]
    delta = mean_product(a, b, weights)
    f = svd_factors(a, b, weights, rank=8)
    assert f.a.shape == (8, IN) and f.b.shape == (OUT, 8)
    assert rel_error(delta, f.a, f.b) < 1e-5 and f.error < 1e-5
    # Into rank 4 it is lossy, reported right, and still no worse than zero-padding.
    g = svd_factors(a, b, weights, rank=4)
    assert g.error == pytest.approx(rel_error(delta, g.a, g.b), abs=1e-5) and g.error > 0.05
    assert g.error <= zero_pad_factors(a, b, weights, rank=4).error


@pytest.mark.parametrize("rule", ["svd", "zero_pad"])
def test_aggregate_lora_takes_states_of_different_ranks(rule):
    template = OrderedDict(
        [(_a(Q), torch.zeros(4, IN)), (_b(Q), torch.zeros(OUT, 4)), ("head.bias", torch.zeros(3))]
    )
    states = []
    for k, r in enumerate((2, 4)):
        (a,), (b,) = random_factors(20 + k, 1, r)
        states.append(OrderedDict([(_a(Q), a), (_b(Q), b), ("head.bias", torch.full((3,), k))]))
    out, errors = aggregate_lora(states, [1.0, 3.0], template, rule=rule)
    assert list(out) == list(template)
    assert all(out[n].shape == template[n].shape for n in template)
    assert torch.allclose(out["head.bias"], torch.full((3,), 0.75))
    delta = mean_product([s[_a(Q)] for s in states], [s[_b(Q)] for s in states], [1.0, 3.0])
    assert errors[Q] == pytest.approx(rel_error(delta, out[_a(Q)], out[_b(Q)]), abs=1e-5)
    with pytest.raises(ValueError, match="rule = 'mean'"):
        aggregate_lora(states, [1.0, 3.0], template, rule="mean")


def test_truncation_of_svd_factors_is_the_best_lower_rank_view():
    a, b = random_factors(5, 3, 4)
    f = svd_factors(a, b, [1.0, 1.0, 1.0], rank=4)
    state = OrderedDict([(_a(Q), f.a), (_b(Q), f.b), ("head.bias", torch.ones(3))])
    low = truncate_lora_rank(state, 2)
    assert low[_a(Q)].shape == (2, IN) and low[_b(Q)].shape == (OUT, 2)
    assert torch.equal(low["head.bias"], state["head.bias"])
    best = svd_factors([f.a], [f.b], [1.0], rank=2)  # best rank-2 approximation of the global B·A
    assert torch.allclose(low[_b(Q)] @ low[_a(Q)], best.b @ best.a, atol=1e-6)


# ---- the strategy --------------------------------------------------------------------------------


def _update(cid, seed, n, rank=4):
    (aq,), (bq,) = random_factors(seed, 1, rank)
    (av,), (bv,) = random_factors(seed + 1000, 1, rank)
    head = torch.full((3,), float(seed))
    state = OrderedDict([(_a(Q), aq), (_b(Q), bq), (_a(V), av), (_b(V), bv), ("head.bias", head)])
    return Update(cid, 1, state, n)


def test_strategy_averages_the_rest_like_fedavg_and_reports_the_error():
    updates = [_update("c0", 0, 10), _update("c1", 1, 30)]
    template = OrderedDict((n, torch.zeros_like(t)) for n, t in updates[0].state.items())
    s = STRATEGIES.get("lora_svd")(LoraSvdSpec(), FederationConfig())
    out = s.aggregate(1, template, updates)
    assert list(out) == list(template) and all(out[n].shape == template[n].shape for n in out)
    assert torch.equal(out["head.bias"], example_weighted_mean(updates)["head.bias"])
    measured = []
    for m in (Q, V):
        a = [u.state[_a(m)] for u in updates]
        b = [u.state[_b(m)] for u in updates]
        measured.append(rel_error(mean_product(a, b, [10, 30]), out[_a(m)], out[_b(m)]))
    metrics = s.round_metrics()
    assert metrics["lora_svd_error"] == pytest.approx(max(measured), abs=1e-5)
    assert metrics["lora_svd_error_mean"] == pytest.approx(sum(measured) / 2, abs=1e-5)


def test_strategy_without_lora_pairs_is_fedavg(caplog):
    """method.freeze_a = true shares only B: nothing to re-factorise, FedAvg is exact."""
    updates = [_update("c0", 0, 1), _update("c1", 1, 3)]
    for u in updates:
        del u.state[_a(Q)], u.state[_a(V)]
    template = OrderedDict((n, torch.zeros_like(t)) for n, t in updates[0].state.items())
    s = STRATEGIES.get("lora_svd")(LoraSvdSpec(), FederationConfig())
    out = s.aggregate(1, template, updates)
    fedavg = example_weighted_mean(updates)
    assert all(torch.equal(out[n], fedavg[n]) for n in fedavg)
    assert s.round_metrics() == {} and "no LoRA A/B pair" in caplog.text


def test_config_names_the_strategy():
    config = load_config(None, ["strategy.name=lora_svd"])
    assert isinstance(config.strategy, LoraSvdSpec)
    assert config.strategy.plugin_name == "lora_svd"
    assert config.strategy.split == "a_scale"
    assert (
        load_config(None, ["strategy.name=lora_svd", "strategy.split=sqrt"]).strategy.split
        == "sqrt"
    )
    with pytest.raises(ConfigError, match="strategy.split"):
        load_config(None, ["strategy.name=lora_svd", "strategy.split=half"])
