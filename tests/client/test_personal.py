"""Personalisation (``[personalize]``): what stays on a client never travels, is kept per client
on disk, survives resume, and personalised figures are computed from each client's own model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import fedfm
from fedfm import assemble
from fedfm.client.personal import PersonalStore, personal_figures, spread
from fedfm.errors import ConfigError, FedFMError
from fedfm.experiment import in_process_federation
from fedfm.metrics.sinks import Sink

PERSONAL = [
    "evaluation.where='clients'",
    "evaluation.client_split=0.25",
    "partition.alpha=0.1",
    "data.max_length=32",
]


# ---- the store -------------------------------------------------------------------------------
@pytest.mark.parametrize("on_disk", [True, False], ids=["disk", "memory"])
def test_store_keeps_two_rounds_and_answers_by_round(tmp_path, on_disk):
    store = PersonalStore(tmp_path / "personal" if on_disk else None)
    t = lambda v: {"w": torch.full((2,), float(v))}  # noqa: E731
    assert store.load("a/b", before=5) is None
    store.save("a/b", 1, t(1))
    store.save("a/b", 3, t(3))
    assert store.load("a/b", before=4)["w"][0] == 3
    assert store.load("a/b", before=3)["w"][0] == 1  # a redone round 3 starts from round 1's
    store.save("a/b", 3, t(33))  # the redone round replaces its own state, keeps round 1's
    assert store.load("a/b", before=4)["w"][0] == 33
    assert store.load("a/b", before=3)["w"][0] == 1
    store.save("a/b", 4, t(4))  # round 1's is dropped: two rounds are kept
    assert store.load("a/b", before=4)["w"][0] == 33
    assert store.load("a/b", before=3) is None
    assert store.load("other", before=9) is None
    if on_disk:
        files = sorted(p.name for p in (tmp_path / "personal").iterdir())
        assert len(files) == 2 and all(f.startswith("a_b-") for f in files)  # no '/' in names


def test_a_damaged_store_file_is_one_clear_error(tmp_path):
    store = PersonalStore(tmp_path)
    store.save("c0", 1, {"w": torch.ones(2)})
    next(tmp_path.iterdir()).write_bytes(b"not safetensors")
    with pytest.raises(FedFMError, match="personal state .* cannot be read"):
        store.load("c0", before=2)


def test_worst10_is_the_mean_of_the_worst_tenth_of_clients():
    values = [0.1, 0.3] + [0.9] * 18  # 20 clients: the worst tenth is 2 clients
    s = spread(values)
    assert s["worst10"] == pytest.approx(0.2)
    assert s["mean"] == pytest.approx((0.4 + 0.9 * 18) / 20)
    assert spread([0.5, 0.7])["worst10"] == 0.5  # at least one client
    figures = personal_figures(
        {"a": {"accuracy": 0.5, "personal_accuracy": 0.9}, "b": {"accuracy": 0.7}}
    )
    assert figures["global_accuracy_mean"] == pytest.approx(0.6)
    # b has no personal model of its own (method 'none'): its own model is the global one
    assert figures["personal_accuracy_mean"] == pytest.approx(0.8)
    assert figures["personal_accuracy_worst10"] == pytest.approx(0.7)


# ---- what travels ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "overrides", "personal"),
    [
        ("local_head", [], lambda n: n.startswith("head.")),
        ("local_norm", [], lambda n: "LayerNorm" in n),
        ("private_lora", ["personalize.private_r=2"], lambda n: ".private." in n),
    ],
)
def test_the_personal_part_is_out_of_the_state_and_stays_per_client(
    tiny_config, tmp_path, method, overrides, personal
):
    config = tiny_config(*PERSONAL, f"personalize.method='{method}'", *overrides)
    p = assemble.prepare(config)
    task = p.task
    state = task.get_state()
    assert task.personal and all(personal(n) for n in task.personal)
    assert not any(personal(n) for n in state)  # never encoded, never sent
    assert all(p_.requires_grad for p_ in task.personal.values())
    initial = {n: t.detach().clone() for n, t in task.personal.items()}

    fed = in_process_federation(p, [], tmp_path)
    fed.rounds = 1
    fed.run(state)
    app = fed.runtime.app
    trained = fed.rows[0]["clients"]
    stored = {cid: app.store.load(cid, before=2) for cid in trained}
    assert all(s is not None and s.keys() == initial.keys() for s in stored.values())
    a, b = (stored[c] for c in trained[:2])
    assert any(not torch.equal(a[n], initial[n]) for n in initial)  # it trained
    assert any(not torch.equal(a[n], b[n]) for n in initial)  # each client its own
    # After a client's turn the shared model has the initial part back (the server's view).
    assert all(torch.equal(task.personal[n], initial[n]) for n in initial)
    # The uplink carried exactly the state's names: a checkpoint holds no personal tensor.
    ckpt = load_file(str(tmp_path / "checkpoints/round_00001/state.safetensors"))
    assert ckpt.keys() == state.keys()
    assert len(list((tmp_path / "personal").iterdir())) == len(trained)


def test_ditto_personal_models_follow_lambda(tiny_config, tmp_path):
    """λ pulls each personal model towards the global model it started from: with λ = 0 it
    trains freely (the same steps as the client's global update), a large λ keeps it close."""
    gaps = {}
    for lam in (0.0, 100.0):
        config = tiny_config(
            *PERSONAL, "personalize.method='ditto'", f"personalize.ditto_lambda={lam}"
        )
        p = assemble.prepare(config)
        start = p.task.get_state()
        (tmp_path / str(lam)).mkdir()
        fed = in_process_federation(p, [], tmp_path / str(lam))
        fed.rounds = 1
        fed.run(p.task.get_state())
        cid = fed.rows[0]["clients"][0]
        own = fed.runtime.app.store.load(cid, before=2)
        assert own.keys() == start.keys()
        gaps[lam] = sum(float((own[n] - start[n]).norm()) for n in start)
    assert 0 < gaps[100.0] < 0.5 * gaps[0.0]


# ---- a whole run -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ditto_run(tiny_config_module, tmp_path_factory):
    config = tiny_config_module(
        *PERSONAL, "personalize.method='ditto'", "federation.rounds=3", "federation.local_steps=8"
    )
    out = tmp_path_factory.mktemp("runs")
    return config, out, fedfm.run(config, out=out)


def test_personalised_run_reports_personal_and_global_figures(ditto_run):
    _, _, result = ditto_run
    summary = json.loads((result.run_dir / "summary.json").read_text())
    for prefix in ("personal_accuracy_", "global_accuracy_"):
        for key in ("mean", "worst10", "std"):
            assert 0 <= summary[prefix + key] <= 1
        assert summary[prefix + "worst10"] <= summary[prefix + "mean"]
        assert all(prefix + "mean" in row for row in result.metrics)
    # Label skew Dirichlet(0.1): each client's own model fits its own rows better.
    assert summary["personal_accuracy_mean"] > summary["global_accuracy_mean"] + 0.05
    # Every client was scored at the end, each on its own held-out rows.
    assert len(summary["final_client_eval"]) == 4


def test_personal_state_survives_resume(ditto_run, tmp_path):
    class Stop(Sink):  # in round 3, once a client trained (and saved its round-3 state)
        def client_done(self, round, done, total):
            if round == 3 and done == 1:
                raise KeyboardInterrupt

    config, _, full = ditto_run
    with pytest.raises(KeyboardInterrupt):
        fedfm.run(config, out=tmp_path, sinks=[Stop()])
    store = PersonalStore(tmp_path / config.name / "personal")

    def trained_in_round_3(cid: str) -> bool:
        after, before = store.load(cid, 4), store.load(cid, 3)
        return after is not None and (
            before is None or any(not torch.equal(after[n], before[n]) for n in after)
        )

    # The interrupted round left a client's round-3 state: the resumed round must not start
    # from it (it redoes round 3 from the state before).
    assert any(trained_in_round_3(f"c{i}") for i in range(4))
    resumed = fedfm.run(resume=tmp_path / config.name)
    a = json.loads((full.run_dir / "summary.json").read_text())
    b = json.loads((resumed.run_dir / "summary.json").read_text())
    assert b["personal_accuracy_mean"] == a["personal_accuracy_mean"]
    assert b["final_client_eval"] == a["final_client_eval"]


def test_local_head_run_scores_each_clients_own_model(tiny_config, tmp_path):
    config = tiny_config(*PERSONAL, "personalize.method='local_head'")
    result = fedfm.run(config, out=tmp_path)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert "personal_accuracy_mean" in summary
    assert "global_accuracy_mean" not in summary  # no global head: nothing global to score
    last = result.metrics[-1]
    assert (
        last.get("client_accuracy") is None and last["accuracy"] == last["client_personal_accuracy"]
    )
    assert summary["final_accuracy"] == pytest.approx(last["client_personal_accuracy"])


# ---- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["personalize.method='local_head'", "method.type='full'"], "personalize.method"),
        (["personalize.method='local_head'", "method.type='head'"], "personalize.method"),
        (["personalize.method='local_head'"], "evaluation.where"),
        (["personalize.method='private_lora'", "method.type='prompt'"], "method.type = 'lora'"),
        (["personalize.method='fedrep'"], "personalize.method = 'fedrep'"),
        (["personalize.method='ditto'", "personalize.ditto_lambda=-1"], "ditto_lambda"),
        (["personalize.method='ditto'", "federation.mode='centralized'"], "federated"),
        (["personalize.method='ditto'", "privacy.dp='local'"], "privacy.dp"),
    ],
)
def test_rules_that_do_not_fit_are_one_line(tiny_config, overrides, match):
    with pytest.raises(ConfigError, match=match) as e:
        tiny_config(*overrides)
    assert "\n" not in str(e.value)
