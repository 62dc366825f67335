"""Clients of different LoRA ranks: the truncation, training on MiniLM, aggregation, a full run.

The reference for the truncation is a dense float64 SVD of B·A; the training tests run the real
Trainer on MiniLM and check, value by value, that a rank-2 client's factors stay rank 2.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
from tests.conftest import TINY
from tests.methods.test_lora import FP32, train_clients

import fedfm
from fedfm.assemble import prepare
from fedfm.client.app import ClientApp, ClientData, ClientTask
from fedfm.client.trainer import Trainer
from fedfm.codecs import CodecContext, Pipeline
from fedfm.config import FederationConfig, load_config
from fedfm.errors import ConfigError
from fedfm.methods.lora import (
    LoraSpec,
    client_rank_truncation,
    truncate_factors,
    truncate_state,
)
from fedfm.state import FitInstructions, Update
from fedfm.strategies import STRATEGIES
from fedfm.strategies.base import example_weighted_mean
from fedfm.strategies.lora_aggregation import lora_pairs

R, OUT, IN = 8, 48, 32


def random_factors(seed: int, rank: int = R) -> tuple[torch.Tensor, torch.Tensor]:
    """A (R × IN) and B (OUT × R) with only the first ``rank`` components non-zero."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.zeros(R, IN), torch.zeros(OUT, R)
    a[:rank] = torch.randn(rank, IN, generator=g)
    b[:, :rank] = torch.randn(OUT, rank, generator=g)
    return a, b


# ---- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["method.client_ranks=[8, 9]"],
            r"method.client_ranks\[1\] = 9 is not allowed; allowed: an integer from 1 to "
            r"method.r = 8",
        ),
        (["method.client_ranks=[4, 0]"], r"method.client_ranks\[1\] = 0 is not allowed"),
        (["method.r=4", "method.client_ranks=[8]"], r"from 1 to method.r = 4"),
        (
            ["method.freeze_a=true", "method.client_ranks=[8, 4]"],
            r"method.client_ranks = \[8, 4\] is not allowed; allowed: \[\] with "
            r"method.freeze_a = true",
        ),
        (["method.client_ranks=4"], r"method.client_ranks = 4 has the wrong type"),
    ],
)
def test_bad_client_ranks_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_client_ranks_load_and_are_written_back():
    config = load_config(None, ["method.client_ranks=[8, 4, 2]"])
    assert config.method.client_ranks == (8, 4, 2)
    assert "client_ranks = [8, 4, 2]" in fedfm.config.config_to_toml(config)
    assert LoraSpec(client_ranks=[2, 1]).client_ranks == (2, 1)


# ---- the truncation --------------------------------------------------------------------------


@pytest.mark.parametrize("rank", range(1, R))
def test_truncation_is_the_best_rank_approximation_zero_padded(rank):
    a, b = random_factors(rank)
    a_i, b_i = truncate_factors(a, b, rank)
    assert a_i.shape == a.shape and b_i.shape == b.shape
    assert torch.equal(a_i[rank:], torch.zeros(R - rank, IN))
    assert torch.equal(b_i[:, rank:], torch.zeros(OUT, R - rank))
    product = b.double() @ a.double()
    sigma = torch.linalg.svdvals(product)
    error = torch.linalg.matrix_norm(product - b_i.double() @ a_i.double())
    # Eckart–Young: the error is exactly the dropped singular values
    assert float(error) == pytest.approx(float(sigma[rank:].square().sum().sqrt()), rel=1e-4)
    # ... and no rank-`rank` cut of the factors themselves does better
    naive = torch.linalg.matrix_norm(product - b[:, :rank].double() @ a[:rank].double())
    assert float(error) <= float(naive) + 1e-6


def test_truncation_keeps_what_already_fits_and_lets_a_zero_b_train():
    a, b = random_factors(0, rank=2)
    a_i, b_i = truncate_factors(a, b, 4)  # B·A has rank 2 < 4: exact
    assert torch.allclose(b_i @ a_i, b @ a, atol=1e-5)
    assert a is truncate_factors(a, b, R)[0]  # the full rank is left as it is
    # Round 1: B = 0, so B·A = 0. The client keeps A's first rows (not zero: B still gets a
    # gradient) and a zero B, which is HetLoRA's cut of the initial factors.
    a0 = random_factors(1)[0]
    a_i, b_i = truncate_factors(a0, torch.zeros(OUT, R), 3)
    assert torch.equal(a_i[:3], a0[:3]) and torch.equal(a_i[3:], torch.zeros(R - 3, IN))
    assert torch.equal(b_i, torch.zeros(OUT, R))


def test_hook_cuts_by_partition_position_and_leaves_the_received_state():
    q, v = "enc.layer.0.query", "enc.layer.0.value"
    state = OrderedDict()
    for seed, module in enumerate((q, v)):
        state[f"{module}.lora_A.default.weight"], state[f"{module}.lora_B.default.weight"] = (
            random_factors(seed)
        )
    state["head.weight"] = torch.randn(4, IN)
    before = {n: t.clone() for n, t in state.items()}
    hook = client_rank_truncation(LoraSpec(client_ranks=(8, 4, 2)), ["c0", "c1", "c2", "c3"])
    ranks = {}
    for cid in ("c0", "c1", "c2", "c3", "pooled"):
        out = hook(cid, 0, 1, state)
        ranks[cid] = max(int((out[a].abs().sum(1) > 0).sum()) for a, _ in lora_pairs(out))
        assert out["head.weight"] is state["head.weight"]
    assert ranks == {"c0": 8, "c1": 4, "c2": 2, "c3": 8, "pooled": 8}
    assert hook("c0", 0, 1, state) is state  # full rank: the same tensors, no re-factorisation
    assert all(torch.equal(state[n], before[n]) for n in state)


# ---- training on MiniLM ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain():
    return prepare(load_config(None, [*TINY, FP32]))


@pytest.fixture(scope="module")
def trained_global(plain):
    """A global state after one round of two clients: B ≠ 0, so B·A has full rank r."""
    state = plain.task.get_state()
    updates = train_clients(plain, state, round=1)
    return example_weighted_mean(updates)


def assert_rank_at_most(state, rank):
    pairs = lora_pairs(state)
    assert len(pairs) == 12
    for a_name, b_name in pairs:
        assert torch.equal(state[a_name][rank:], torch.zeros_like(state[a_name][rank:])), a_name
        assert torch.equal(state[b_name][:, rank:], torch.zeros_like(state[b_name][:, rank:]))


@pytest.mark.parametrize(
    ("optimizer", "weight_decay", "mu"),
    [("sgd", 0.01, 0.0), ("adam", 0.01, 0.0), ("adamw", 0.1, 0.1)],
    ids=["sgd", "adam", "adamw-fedprox"],
)
def test_a_rank_2_client_stays_rank_2_through_training(
    plain, trained_global, optimizer, weight_decay, mu
):
    start = truncate_state(trained_global, 2)
    assert_rank_at_most(start, 2)
    trainer = Trainer(plain.task, optimizer, weight_decay, seed=0)
    data = ClientData(plain.train_tokens, plain.train.labels, plain.partition.indices[2])
    fit = FitInstructions(round=2, local_steps=3, lr=5e-3, batch_size=4, proximal_mu=mu)
    trained = trainer.fit("c2", 2, start, data, fit).state
    assert_rank_at_most(trained, 2)
    for a_name, b_name in lora_pairs(trained):  # ... while the first two components trained
        assert not torch.equal(trained[a_name][:2], start[a_name][:2])
        assert not torch.equal(trained[b_name][:, :2], start[b_name][:, :2])


def test_client_app_trains_from_the_prepared_state(plain, trained_global):
    """The hook runs between decoding and training; the decoded view stays the global state."""
    data = {
        cid: ClientData(plain.train_tokens, plain.train.labels, rows)
        for cid, rows in zip(plain.partition.client_ids, plain.partition.indices, strict=True)
    }
    app = ClientApp(Trainer(plain.task, seed=0), data, Pipeline(()), Pipeline(()), trained_global)
    app.prepare.append(client_rank_truncation(LoraSpec(client_ranks=(8, 2)), list(data)))
    received = []
    app.transforms.append(lambda cid, rnd, trained, got: received.append(got) or trained)
    payload = Pipeline(()).encode(trained_global, CodecContext(round=2), {})
    fit = FitInstructions(round=2, local_steps=2, lr=5e-3, batch_size=4)
    cid = plain.partition.client_ids[1]  # rank 2
    reply = app.handle(ClientTask(cid, payload, fit))
    update, _ = Pipeline(()).decode(reply, CodecContext(round=2), trained_global)
    assert_rank_at_most(update, 2)
    assert all(torch.equal(app.view[n], trained_global[n]) for n in trained_global)
    assert received[0] is app.view  # transforms see the global state, the codecs' reference


# ---- aggregation -----------------------------------------------------------------------------


def test_lora_svd_of_mixed_ranks_is_the_truncated_mean_product():
    """Clients of ranks 8, 4, 2 (zero-padded): lora_svd's B·A is the best rank-8 approximation
    of the example-weighted mean of their products; FedAvg is HetLoRA's zero-padding rule."""
    q = "enc.layer.0.query"
    a_name, b_name = f"{q}.lora_A.default.weight", f"{q}.lora_B.default.weight"
    template = OrderedDict([(a_name, torch.zeros(R, IN)), (b_name, torch.zeros(OUT, R))])
    updates = []
    for k, (rank, n) in enumerate([(8, 30), (4, 10), (2, 20)]):
        a, b = random_factors(10 + k, rank)
        updates.append(Update(f"c{k}", 1, OrderedDict([(a_name, a), (b_name, b)]), n))
    total = sum(u.num_examples for u in updates)
    mean = sum(
        u.num_examples / total * u.state[b_name].double() @ u.state[a_name].double()
        for u in updates
    )
    u, s, vh = torch.linalg.svd(mean)
    assert s[R] > 0.1 * s[0]  # rank 14 > 8: the truncation matters
    best = (u[:, :R] * s[:R]) @ vh[:R]

    strategy = STRATEGIES.get("lora_svd")(STRATEGIES.get("lora_svd").Spec(), FederationConfig())
    state = strategy.aggregate(1, template, updates)
    got = state[b_name].double() @ state[a_name].double()
    assert float(torch.linalg.matrix_norm(got - best) / torch.linalg.matrix_norm(best)) < 1e-5
    expected_error = float(s[R:].square().sum().sqrt() / s.square().sum().sqrt())
    assert strategy.round_metrics()["lora_svd_error"] == pytest.approx(expected_error, abs=1e-5)

    fedavg = STRATEGIES.get("fedavg")(STRATEGIES.get("fedavg").Spec(), FederationConfig())
    padded = fedavg.aggregate(1, template, updates)
    for name in template:
        hand = sum(u.num_examples / total * u.state[name] for u in updates)
        assert torch.allclose(padded[name], hand, atol=1e-6)


# ---- a whole run -----------------------------------------------------------------------------

UP = '["lora_trim"]'
SMALLER = ["federation.local_steps=2", "data.test_rows=200", "data.eval_rows=100"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs, every client at rank 8 and clients at ranks 8, 4, 2, 8 (cyclic)."""
    out = {}
    for name, extra in [("uniform", []), ("mixed", ["method.client_ranks=[8, 4, 2]"])]:
        config = load_config(None, [*TINY, *SMALLER, f"codec.up={UP}", f"name={name}", *extra])
        out[name] = fedfm.run(config, out=tmp_path_factory.mktemp(name))
    return out


def test_mixed_rank_run_completes_and_trains_differently(runs):
    uniform, mixed = runs["uniform"].metrics, runs["mixed"].metrics
    assert [r["round"] for r in mixed] == [1, 2]
    assert all(0 < r["loss"] < 10 for r in mixed) and 0 <= runs["mixed"].final_accuracy <= 1
    assert [r["clients"] for r in mixed] == [r["clients"] for r in uniform]
    assert [r["loss"] for r in mixed] != [r["loss"] for r in uniform]  # the ranks took effect


def test_lower_rank_clients_send_fewer_bytes(runs):
    """Each rank-k client saves (8 − k) of 8 components of 12 LoRA pairs: 12·(8 − k)·(384 + 384)
    float32 values; the headers differ by a few bytes (loss digits)."""
    clients = json.loads((runs["mixed"].run_dir / "partition.json").read_text())["clients"]
    rank = {c["client"]: (8, 4, 2)[i % 3] for i, c in enumerate(clients)}
    uniform, mixed = runs["uniform"].metrics, runs["mixed"].metrics
    assert sum(r["bytes_up"] for r in mixed) < sum(r["bytes_up"] for r in uniform)
    for u, m in zip(uniform, mixed, strict=True):
        saved = sum(12 * (8 - rank[c]) * 768 * 4 for c in m["clients"])
        assert u["bytes_up"] - m["bytes_up"] == pytest.approx(saved, abs=64)
