"""The bench harness: a child process measured from outside, summaries and ratios."""

from __future__ import annotations

import pytest

from fedfm.bench.bench import ratios, resolve_scenario, summarise
from fedfm.bench.runner import run_system
from fedfm.config import config_to_toml
from fedfm.errors import ConfigError, FedFMError


@pytest.mark.parametrize("system", ["fedfm", "plain"])
def test_a_system_runs_in_a_child_and_is_measured(tiny_config, tmp_path, system):
    config = tiny_config("federation.rounds=2", "federation.local_steps=2")
    m = run_system(system, system, config_to_toml(config), tmp_path)
    rounds = m.timeline["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["bytes_up"] > 0 for r in rounds)
    assert (
        m.launched
        < m.timeline["model_loaded"]
        < rounds[0]["start"]
        < rounds[0]["end"]
        <= rounds[1]["start"]
    )
    assert 200 < m.peak_tree_mb < 8000  # a real process with torch and a 22M-parameter model
    row = summarise(m)
    assert row["startup_seconds"] > row["model_to_first_round_seconds"] > 0
    assert row["final_accuracy"] == rounds[-1]["accuracy"]


def test_resume_reads_back_a_finished_run_of_the_same_config_only(tiny_config, tmp_path):
    toml = config_to_toml(tiny_config("federation.rounds=1", "federation.local_steps=1"))
    first = run_system("fedfm", "fedfm", toml, tmp_path)
    again = run_system("fedfm", "fedfm", toml, tmp_path, resume=True)
    assert again == first  # read back, not run: same launch time and memory trace
    without_default = toml.replace("ensemble_steps = 0\n", "")
    assert without_default != toml  # as a run recorded before that key existed would read
    assert run_system("fedfm", "fedfm", without_default, tmp_path, resume=True) == first
    changed = toml.replace("local_steps = 1", "local_steps = 2")
    assert changed != toml
    rerun = run_system("fedfm", "fedfm", changed, tmp_path, resume=True)
    assert rerun.launched > first.launched  # a changed config runs again


def test_a_failing_child_is_a_clear_error(tmp_path):
    with pytest.raises(FedFMError, match="failed with exit code"):
        run_system("broken", "fedfm", "[federation]\nrounds = 'x'\n", tmp_path)


def test_ratios_are_fedfm_over_peer():
    rows = [
        {
            "system": "fedfm",
            "round_seconds": 10.0,
            "peak_memory_mb": 500.0,
            "startup_seconds": 4.0,
            "final_accuracy": 0.88,
        },
        {
            "system": "flower",
            "round_seconds": 40.0,
            "peak_memory_mb": 2000.0,
            "startup_seconds": 16.0,
            "final_accuracy": 0.875,
        },
    ]
    r = ratios(rows)["flower"]
    assert r == pytest.approx(
        {"round_seconds": 0.25, "peak_memory": 0.25, "startup": 0.25, "accuracy_points": 0.5}
    )


def test_unknown_targets_are_config_errors(tmp_path):
    assert resolve_scenario(None)[0].name == "agnews-lora"
    with pytest.raises(ConfigError, match="neither a scenario"):
        resolve_scenario("imagenet")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_scenario(str(tmp_path / "x.toml"))


def test_scenario_peers_are_the_default(monkeypatch, tmp_path):
    """Without --peers, a scenario's own peers apply: the attack scenario needs no Flower."""
    from fedfm.bench import bench as bench_module
    from fedfm.cli import main

    seen = {}

    def fake_run_bench(target, peers, **kwargs):
        seen["peers"] = peers
        raise FedFMError("stop here")

    monkeypatch.setattr(bench_module, "run_bench", fake_run_bench)
    assert main(["bench", "agnews-attacks", "--out", str(tmp_path)]) == 2
    assert seen["peers"] is None
    assert bench_module.SCENARIOS["agnews-attacks"].peers == ()


def test_every_scenario_variant_is_a_valid_config():
    """A variant that switches the method or strategy drops the base's keys of that section."""
    from fedfm.bench.bench import merge_overrides
    from fedfm.bench.scenarios import SCENARIOS
    from fedfm.config import load_config

    for scenario in SCENARIOS.values():
        for overrides in [(), *scenario.variants.values()]:
            config = load_config(None, merge_overrides(list(scenario.overrides), overrides))
            assert config.federation.clients_per_round == 5
    prompt = load_config(
        None, merge_overrides(["method.type=lora", "method.r=4"], ["method.type=prompt"])
    )
    assert not hasattr(prompt.method, "r")


def test_rounds_to_target_is_the_first_round_that_reaches_it():
    from fedfm.bench.bench import rounds_to

    assert rounds_to([0.5, None, 0.81, 0.79, 0.9], 0.8) == 3
    assert rounds_to([0.5, 0.6], 0.8) is None
