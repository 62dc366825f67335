"""LoRA on the real MiniLM: FFA-LoRA (frozen A) and the lora_svd strategy, measured through peft.

The reference is peft's own ΔW of each module (``get_delta_weight``: scaling·B·A), so these
tests check the names, the scaling and the wiring, not only the maths of the strategy module.
"""

from __future__ import annotations

import pytest
import torch
from tests.conftest import TINY

from fedfm.assemble import prepare
from fedfm.client.app import ClientData
from fedfm.client.trainer import Trainer
from fedfm.config import FederationConfig, load_config
from fedfm.errors import ConfigError
from fedfm.methods.lora import LoraSpec, is_lora_a
from fedfm.state import FitInstructions
from fedfm.strategies import STRATEGIES
from fedfm.strategies.base import example_weighted_mean

HIDDEN, R, LAYERS = 384, 8, 6
HEAD = 4 * HIDDEN + 4


FP32 = "federation.precision=fp32"  # bf16 autocast is emulated, so slower, on most CPUs


@pytest.fixture(scope="module")
def ffa():
    return prepare(load_config(None, [*TINY, FP32, "method.freeze_a=true"]))


@pytest.fixture(scope="module")
def plain():
    return prepare(load_config(None, [*TINY, FP32]))


def lora_modules(p):
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in p.task.model.named_modules() if isinstance(m, LoraLayer)}


def delta_weights(p, state):
    """Each LoRA module's ΔW = (alpha/r)·B·A in the model once ``state`` is loaded."""
    p.task.set_state(state)
    with torch.no_grad():
        return {n: m.get_delta_weight("default").double() for n, m in lora_modules(p).items()}


def train_clients(p, state, round, clients=(0, 1)):
    trainer = Trainer(p.task, seed=0)
    updates = []
    for k in clients:
        data = ClientData(p.train_tokens, p.train.labels, p.partition.indices[k])
        fit = FitInstructions(round=round, local_steps=1, lr=5e-3, batch_size=4)
        updates.append(trainer.fit(f"c{k}", k, state, data, fit))
    return updates


def mean_deltas(p, updates):
    total = sum(u.num_examples for u in updates)
    per_client = [delta_weights(p, u.state) for u in updates]
    return {
        n: sum(u.num_examples / total * d[n] for u, d in zip(updates, per_client, strict=True))
        for n in per_client[0]
    }


def rel_errors(exact, got):
    return {
        n: float(torch.linalg.norm(exact[n] - got[n]) / torch.linalg.norm(exact[n])) for n in exact
    }


def test_freeze_a_trains_and_sends_only_b(ffa, plain):
    from peft import get_peft_model_state_dict

    model = ffa.task.model
    a_params = {n: q for n, q in model.named_parameters() if is_lora_a(n)}
    assert len(a_params) == LAYERS * 2 and not any(q.requires_grad for q in a_params.values())
    shared = list(ffa.task.shared)
    assert not any(is_lora_a(n) for n in shared)
    assert all(".lora_B." in n for n in shared if not n.startswith("head."))
    trainable, _ = ffa.task.num_params()
    plain_trainable, _ = plain.task.num_params()
    assert trainable == LAYERS * 2 * HIDDEN * R + HEAD  # B only: half of LoRA's
    assert plain_trainable - HEAD == 2 * (trainable - HEAD)
    # FFA keeps peft's A init, and the seed makes it the same in every process that builds it.
    plain_a = {n: q for n, q in plain.task.model.named_parameters() if is_lora_a(n)}
    assert all(torch.equal(a_params[n], plain_a[n]) for n in a_params)
    # The exported adapter still holds A (a user loads it without knowing the seed).
    saved = get_peft_model_state_dict(model.encoder)
    assert sum(".lora_A." in k for k in saved) == LAYERS * 2


def test_freeze_a_makes_fedavg_of_b_the_exact_mean_product(ffa):
    """FFA-LoRA: every client's ΔWₖ = s·Bₖ·A with one A, so FedAvg(B)·A = mean(ΔWₖ)."""
    frozen = {n: q.detach().clone() for n, q in ffa.task.model.named_parameters() if is_lora_a(n)}
    updates = train_clients(ffa, ffa.task.get_state(), round=1)
    assert not torch.equal(updates[0].state["head.weight"], updates[1].state["head.weight"])
    for n, q in ffa.task.model.named_parameters():
        if n in frozen:
            assert torch.equal(q, frozen[n]), n  # A did not move
    exact = mean_deltas(ffa, updates)
    errors = rel_errors(exact, delta_weights(ffa, example_weighted_mean(updates)))
    assert max(errors.values()) < 1e-5


def test_lora_svd_on_trained_clients_reports_what_it_loses(plain):
    """Plain LoRA, two rounds: FedAvg of A and B is inexact; lora_svd is closer and says how close."""
    strategy = STRATEGIES.get("lora_svd")(STRATEGIES.get("lora_svd").Spec(), FederationConfig())
    state = plain.task.get_state()
    for rnd in (1, 2):
        updates = train_clients(plain, state, round=rnd)
        exact = mean_deltas(plain, updates)
        naive = rel_errors(exact, delta_weights(plain, example_weighted_mean(updates)))
        state = strategy.aggregate(rnd, state, updates)
        svd = rel_errors(exact, delta_weights(plain, state))
        metrics = strategy.round_metrics()
        assert metrics["lora_svd_error"] == pytest.approx(max(svd.values()), abs=1e-5)
        assert metrics["lora_svd_error_mean"] == pytest.approx(
            sum(svd.values()) / len(svd), abs=1e-5
        )
        assert all(svd[n] <= naive[n] + 1e-6 for n in svd)
        if rnd == 2:  # from B ≠ 0, A moves too: separate averaging is inexact (~8 % here)
            assert max(naive.values()) > 1e-2


def test_freeze_a_is_validated():
    with pytest.raises(ConfigError, match="method.freeze_a = 'yes'"):
        LoraSpec(freeze_a="yes")
    with pytest.raises(ConfigError, match="method.freeze_a"):
        load_config(None, ["method.freeze_a=1"])
