"""The Ray runtime on a local Ray instance: same bytes and accuracy as in-process simulation."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

from fedfm.experiment import run  # noqa: E402

RAY = ["runtime.workers=2", "runtime.cpus_per_worker=1"]


@pytest.fixture(scope="module")
def runs(tiny_config_module, tmp_path_factory):
    out = {}
    for name, extra in [("sim", []), ("ray", ["runtime.type=ray", *RAY])]:
        config = tiny_config_module(
            f"name={name}",
            "codec.up=['delta','topk:0.2']",
            "codec.down=['delta','int8']",  # actors that skip rounds need the sync blob
            "federation.rounds=3",
            "runtime.threads=1",  # the actors run one thread each: same arithmetic
            *extra,
        )
        out[name] = run(config, out=tmp_path_factory.mktemp(name))
    return out


def test_ray_runs_the_clients_on_workers_with_the_same_bytes(runs):
    sim, ray_run = runs["sim"], runs["ray"]
    assert [r["clients"] for r in ray_run.metrics] == [r["clients"] for r in sim.metrics]
    assert [r["bytes_up"] for r in ray_run.metrics] == [r["bytes_up"] for r in sim.metrics]
    # the downlink adds the sync blobs of actors that skipped a round, nothing else
    assert all(
        a["bytes_down"] >= b["bytes_down"]
        for a, b in zip(ray_run.metrics, sim.metrics, strict=True)
    )
    # One thread in the driver and in each actor: the same arithmetic, so the same run.
    assert ray_run.final_accuracy == sim.final_accuracy
    assert [r["loss"] for r in ray_run.metrics] == [r["loss"] for r in sim.metrics]


SECURE = ["secagg.enabled=true", "evaluation.where=both", "evaluation.client_split=0.2"]


def test_secure_aggregation_and_client_evaluation_on_ray_equal_the_simulation(
    tiny_config, tmp_path
):
    """The actors compute the secure inputs and evaluate their held-out rows; the protocol's
    parties run in the driver: the same sum and the same figures as in-process."""
    results = {}
    for name, extra in [("sim", []), ("ray", ["runtime.type=ray", *RAY])]:
        config = tiny_config(f"name={name}", "runtime.threads=1", *SECURE, *extra)
        results[name] = run(config, out=tmp_path / name)
    sim, ray_run = results["sim"], results["ray"]
    for a, b in zip(ray_run.metrics, sim.metrics, strict=True):
        assert a["secagg_survivors"] == b["secagg_survivors"] == 2
        assert a["loss"] == b["loss"]  # the securely summed training loss
        assert a["client_accuracy"] == b["client_accuracy"]
        assert a["client_eval"] == b["client_eval"]
    assert ray_run.final_accuracy == sim.final_accuracy


def test_the_ray_instance_is_shut_down_after_the_run(runs):
    assert not ray.is_initialized()


def test_ray_refuses_a_bad_cluster_address(tiny_config, tmp_path):
    from fedfm.errors import ConfigError

    config = tiny_config("runtime.type=ray", "runtime.address=127.0.0.1:1", *RAY)
    with pytest.raises(ConfigError, match="runtime.address"):
        run(config, out=tmp_path)


@pytest.mark.slow  # a local Ray instance and two runs of a scratch language model
def test_language_model_pretraining_on_ray_equals_the_simulation(tiny_lm, tmp_path):
    """task.type = 'lm' on Ray actors: each actor packs and trains its clients' blocks; one
    thread everywhere, so the same DiLoCo run as in-process, tokens per client included."""
    from fedfm.config import load_config
    from tests.tasks.test_lm import tiny_pretrain

    base = [
        *tiny_pretrain(tiny_lm),
        "federation.rounds=2",
        "federation.local_steps=2",
        "federation.clients_per_round=2",
        "strategy.name=diloco",
    ]
    sim = run(load_config(None, [*base, "name=sim"]), out=tmp_path / "sim")
    ray_run = run(
        load_config(None, [*base, "name=ray", "runtime.type=ray", *RAY]), out=tmp_path / "ray"
    )
    assert [r["clients"] for r in ray_run.metrics] == [r["clients"] for r in sim.metrics]
    assert [r["perplexity"] for r in ray_run.metrics] == [r["perplexity"] for r in sim.metrics]
    assert ray_run.summary["final_perplexity"] == sim.summary["final_perplexity"]
    assert ray_run.summary["tokens_per_client"] == sim.summary["tokens_per_client"]


def test_offsite_on_ray_equals_the_simulation(tiny_config, tmp_path):
    """federation.mode = 'offsite': each actor trains its clients on its own emulator; the
    driver scores the plug-in model and the emulator, as in-process."""
    base = [
        "federation.mode=offsite",
        "method.type=full",
        "offsite.keep_layers=1",
        "federation.lr=1e-4",
        "runtime.threads=1",
    ]
    sim = run(tiny_config(*base, "name=sim"), out=tmp_path / "sim")
    ray_run = run(tiny_config(*base, "name=ray", "runtime.type=ray", *RAY), out=tmp_path / "ray")
    assert [r["bytes_up"] for r in ray_run.metrics] == [r["bytes_up"] for r in sim.metrics]
    assert [r["loss"] for r in ray_run.metrics] == [r["loss"] for r in sim.metrics]
    assert ray_run.final_accuracy == sim.final_accuracy
    assert ray_run.summary["final_emulator_accuracy"] == sim.summary["final_emulator_accuracy"]
