"""Local DP (example-level DP-SGD on each client, through opacus) on the real MiniLM with LoRA.

The reference for clipping is per-example gradients computed one example at a time, clipped and
averaged by hand; the reference for ε is opacus' own accountant, stepped once per DP-SGD step.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from opacus.accountants import create_accountant
from tests.conftest import TINY
from torch import nn

import fedfm
from fedfm.assemble import prepare
from fedfm.client.app import ClientData
from fedfm.client.trainer import Trainer
from fedfm.config import PrivacyConfig, load_config
from fedfm.errors import ConfigError
from fedfm.metrics.sinks import Sink
from fedfm.privacy.accounting import epsilon_for
from fedfm.privacy.local import LocalAccountant, LocalDP, local_noise_multiplier
from fedfm.state import FitInstructions

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the")


def _prepared(precision: str):
    p = prepare(load_config(None, [*TINY, f"federation.precision={precision}", "method.dropout=0"]))
    for module in p.task.model.modules():  # no dropout: one example's gradient is well defined
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    p.initial = p.task.get_state()  # every fit below starts here
    return p


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small batches: one thread is as fast, and much faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fp32():
    return _prepared("fp32")


@pytest.fixture(scope="module")
def bf16():
    return _prepared("bf16")


def _fit(p, local_dp, *, rows=8, batch_size=8, steps=1, lr=1.0, round=1, mu=0.0):
    """One client's fit with plain SGD from the initial state; returns (state before, after)."""
    state = p.initial
    data = ClientData(p.train_tokens, p.train.labels, p.partition.indices[0][:rows])
    trainer = Trainer(p.task, "sgd", 0.0, seed=0, local_dp=local_dp)
    instructions = FitInstructions(
        round=round, local_steps=steps, lr=lr, batch_size=batch_size, proximal_mu=mu
    )
    return state, trainer.fit("c0", 0, state, data, instructions).state


def _delta(before, after) -> torch.Tensor:
    return torch.cat([(after[n] - before[n]).reshape(-1).double() for n in before])


def _opacus_epsilon(sigma: float, q: float, steps: int, delta: float, kind: str = "rdp") -> float:
    accountant = create_accountant(mechanism=kind)
    for _ in range(steps):
        accountant.step(noise_multiplier=sigma, sample_rate=q)
    return accountant.get_epsilon(delta=delta)


def test_a_step_is_the_mean_of_the_per_example_clipped_gradients(fp32):
    p, clip_norm, rows = fp32, 0.05, 8
    before = p.initial
    data_rows = p.partition.indices[0][:rows]
    clipped = []
    for r in data_rows:  # the reference: one example at a time, clipped by hand
        p.task.set_state(before)
        p.task.model.zero_grad(set_to_none=True)
        p.task.loss(p.train_tokens, p.train.labels, np.array([r])).backward()
        g = torch.cat([t.grad.reshape(-1).double() for t in p.task.shared.values()])
        clipped.append(g * min(1.0, clip_norm / float(g.norm())))
    p.task.model.zero_grad(set_to_none=True)
    norms = [float(g.norm()) for g in clipped]
    assert min(norms) == pytest.approx(clip_norm, rel=1e-4)  # every example was clipped

    before, after = _fit(p, LocalDP(noise_multiplier=0.0, clip_norm=clip_norm), rows=rows)
    expected = -torch.stack(clipped).mean(0)  # lr = 1
    assert torch.allclose(_delta(before, after), expected, rtol=1e-3, atol=1e-7)
    assert float(_delta(before, after).norm()) <= clip_norm


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_one_example_moves_the_model_by_at_most_lr_times_clip_norm(precision, request):
    # Batches of one: the update is one clipped example. Under bf16 autocast opacus would clip
    # by a bf16 norm and overshoot by up to ~0.7%; fedfm clips in float32.
    p, clip_norm, lr = request.getfixturevalue(precision), 1e-3, 1000.0
    ratios = []
    for rnd in range(1, 9):
        before, after = _fit(p, LocalDP(0.0, clip_norm), rows=16, batch_size=1, lr=lr, round=rnd)
        ratios.append(float(_delta(before, after).norm()) / (lr * clip_norm))
    assert max(ratios) <= 1 + 1e-5 and min(ratios) > 0.99, ratios


def test_noise_changes_the_update_and_the_seed_reproduces_it(fp32):
    p = fp32
    hooks = sum(len(m._forward_hooks) + len(m._backward_hooks) for m in p.task.model.modules())
    _, plain_before = _fit(p, None, lr=0.01)
    _, quiet = _fit(p, LocalDP(0.0, 1.0), lr=0.01)
    _, noisy = _fit(p, LocalDP(1.0, 1.0), lr=0.01)
    _, again = _fit(p, LocalDP(1.0, 1.0), lr=0.01)
    _, other_round = _fit(p, LocalDP(1.0, 1.0), lr=0.01, round=2)
    _, plain_after = _fit(p, None, lr=0.01)

    assert all(torch.equal(noisy[n], again[n]) for n in noisy)  # same seed: bit-identical
    assert not any(torch.equal(noisy[n], quiet[n]) for n in noisy)
    assert not any(torch.equal(noisy[n], other_round[n]) for n in noisy)  # another seed
    # The shared model is left as it was: no hooks, no opacus attributes, same plain training.
    assert hooks == sum(
        len(m._forward_hooks) + len(m._backward_hooks) for m in p.task.model.modules()
    )
    leftovers = ("grad_sample", "summed_grad", "_forward_counter", "_current_grad_sample")
    assert not any(hasattr(t, a) for t in p.task.model.parameters() for a in leftovers)
    assert not hasattr(p.task.model, "autograd_grad_sample_hooks")
    assert all(torch.equal(plain_before[n], plain_after[n]) for n in plain_before)


def test_fedprox_pulls_towards_the_global_state_after_the_noise(fp32):
    # Two noiseless steps: the second one adds mu·(w − global), which shortens the update.
    free = _delta(*_fit(fp32, LocalDP(0.0, 0.05), steps=2, lr=5.0))
    pulled = _delta(*_fit(fp32, LocalDP(0.0, 0.05), steps=2, lr=5.0, mu=0.1))
    assert float(pulled.norm()) < float(free.norm())


@pytest.mark.parametrize("kind", ["rdp", "prv"])
def test_the_accountant_is_opacus_per_client_and_survives_a_checkpoint(kind):
    accountant = LocalAccountant(kind, noise_multiplier=1.1, batch_size=16)
    accountant.record("a", rows=200, steps=10)
    accountant.record("b", rows=40, steps=10)
    accountant.record("a", rows=200, steps=10)
    expected = {
        "a": _opacus_epsilon(1.1, 16 / 200, 20, 1e-5, kind),
        "b": _opacus_epsilon(1.1, 16 / 40, 10, 1e-5, kind),
    }
    assert accountant.epsilons(1e-5) == pytest.approx(expected, rel=1e-6)
    assert accountant.epsilon(1e-5) == max(expected.values())

    restored = LocalAccountant(kind, 1.1, 16)
    restored.load_state_dict(accountant.state_dict())
    assert restored.epsilons(1e-5) == accountant.epsilons(1e-5)


def test_target_epsilon_calibrates_sigma_for_the_worst_client():
    privacy = PrivacyConfig(dp="local", target_epsilon=3.0)
    plans = {"small": (16 / 80, 5), "large": (16 / 400, 5)}
    sigma = local_noise_multiplier(privacy, plans, rounds=4)
    # a client selected in all 4 rounds, with the largest batch sample rate, spends the target
    assert 2.99 <= epsilon_for(sigma, 16 / 80, 20, 1e-5) <= 3.0


class _Interrupt(Sink):
    """Stops the run in the middle of a round, after its first client answered."""

    def __init__(self, in_round: int) -> None:
        self.in_round = in_round

    def client_done(self, round, done, total):
        if round == self.in_round and done == 1:
            raise KeyboardInterrupt


def test_local_dp_run_reports_the_worst_clients_epsilon_across_a_resume(tiny_config, tmp_path):
    sigma, steps = 1.0, 5
    config = tiny_config(
        "privacy.dp=local",
        f"privacy.noise_multiplier={sigma}",
        "federation.rounds=3",
        "data.test_rows=100",
        "data.eval_rows=50",
        "runtime.threads=1",
    )
    with pytest.raises(KeyboardInterrupt):
        fedfm.run(config, out=tmp_path, sinks=[_Interrupt(in_round=3)])
    result = fedfm.run(resume=tmp_path / config.name)

    partition = json.loads((result.run_dir / "partition.json").read_text())
    sizes = {c["client"]: c["rows"] for c in partition["clients"]}
    taken: dict[str, int] = {}
    for row in result.metrics:  # each client's DP-SGD steps, from the rounds it took part in
        for cid in row["clients"]:
            taken[cid] = taken.get(cid, 0) + steps
        worst = max(
            _opacus_epsilon(sigma, min(16, sizes[cid]) / sizes[cid], n, 1e-5)
            for cid, n in taken.items()
        )
        assert row["epsilon"] == pytest.approx(worst, rel=1e-6)
    s = result.summary
    assert s["epsilon"] == pytest.approx(worst, rel=1e-6) and s["delta"] == 1e-5
    assert set(s["epsilon_per_client"]) == set(taken)
    assert s["noise_multiplier"] == sigma and "Poisson" in s["accounting_note"]
    assert np.isfinite(result.final_accuracy)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method.type=prompt"], "does not support method.type = 'prompt'.*allowed"),
        (["method.type=adapter"], "does not support method.type = 'adapter'"),
        (["method.type=full"], "does not support method.type = 'full'"),
        (["privacy.clip=adaptive"], "privacy.clip = 'adaptive' is not allowed"),
        (["federation.mode=standalone"], "federation.mode"),
        (["strategy.name=median"], "needs each client's update"),
    ],
)
def test_unsupported_settings_are_refused(tiny_config, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        fedfm.run(
            tiny_config("privacy.dp=local", "privacy.noise_multiplier=1", *overrides),
            out=tmp_path,
        )
    assert not any(tmp_path.iterdir())


def test_secure_aggregation_composes_with_local_dp(tiny_config):
    from fedfm.compat import check_compatible

    check_compatible(
        tiny_config("privacy.dp=local", "privacy.noise_multiplier=1", "secagg.enabled=true")
    )


def test_local_dp_under_secure_aggregation_accounts_from_the_clients_public_reports(
    tiny_config, tmp_path
):
    """The server sees only the masked sum; each summed client's rows and steps (its public
    report) still reach the example-level accountant."""
    config = tiny_config(
        "privacy.dp=local",
        "privacy.noise_multiplier=1",
        "secagg.enabled=true",
        "federation.rounds=1",
        "runtime.threads=1",
    )
    result = fedfm.run(config, out=tmp_path)
    row = result.metrics[0]
    assert row["secagg_survivors"] == 2 and row["bytes_up"] == row["secagg_bytes_up"]
    per_client = result.summary["epsilon_per_client"]
    assert sorted(per_client) == sorted(row["clients"])
    assert all(e > 0 for e in per_client.values())
    assert result.summary["epsilon"] == max(per_client.values())
