"""Config: defaults, TOML loading, --set overrides, and the promised error messages."""

from __future__ import annotations

import pytest

from fedfm.config import ExperimentConfig, config_to_toml, load_config
from fedfm.errors import ConfigError
from fedfm.methods.lora import LoraSpec
from fedfm.methods.prompt import PromptSpec
from fedfm.strategies.fedopt import FedAdamSpec


def test_default_is_the_documented_experiment():
    c = load_config()
    assert c == ExperimentConfig()
    assert c.model.name == "minilm"
    assert c.data.train.endswith("agnews/train.tsv")
    assert (c.partition.scheme, c.partition.clients, c.partition.alpha) == ("dirichlet", 10, 0.5)
    assert c.federation.clients_per_round == 5
    assert isinstance(c.method, LoraSpec) and c.method.target_modules == ("query", "value")


def test_toml_file_and_overrides(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(
        'name = "x"\nseed = 3\n[method]\ntype = "prompt"\nnum_virtual_tokens = 4\n'
        '[strategy]\nname = "fedadam"\nbetas = [0.8, 0.9]\n[federation]\nrounds = 7\n'
    )
    c = load_config(path, ["federation.rounds=2", "federation.lr=1e-3", "data.labels=['a','b']"])
    assert (c.name, c.seed, c.federation.rounds, c.federation.lr) == ("x", 3, 2, 1e-3)
    assert c.method == PromptSpec(num_virtual_tokens=4)
    assert c.strategy == FedAdamSpec(betas=(0.8, 0.9))
    assert c.data.labels == ("a", "b")


@pytest.mark.parametrize(
    "strategy", ["fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"]
)
def test_strategy_name_survives_the_resolved_config(tmp_path, strategy):
    path = tmp_path / "resolved.toml"
    path.write_text(config_to_toml(load_config(None, [f"strategy.name={strategy}"])))
    assert f'name = "{strategy}"' in path.read_text()
    assert load_config(path) == load_config(None, [f"strategy.name={strategy}"])


def test_resolved_toml_round_trips(tmp_path):
    c = load_config(
        None,
        ["method.type=adapter", "strategy.name=fedprox", "strategy.mu=0.1", "codec.up=['delta']"],
    )
    path = tmp_path / "resolved.toml"
    path.write_text(config_to_toml(c))
    assert load_config(path) == c


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["federation.roundz=3"],
            "unknown key federation.roundz (did you mean federation.rounds?); "
            "allowed keys in [federation]: mode, rounds",
        ),
        (
            ["federation.rounds='three'"],
            "federation.rounds = 'three' has the wrong type; expected an integer",
        ),
        (["federation.rounds=0"], "federation.rounds = 0 is not allowed; allowed: ≥ 1"),
        (
            ["federation.mode=solo"],
            "federation.mode = 'solo' is not allowed; allowed: 'federated' | 'centralized'",
        ),
        (
            ["strategy.name=fedbest"],
            "strategy.name = 'fedbest' is not a known strategy; allowed: diloco, fedadagrad, fedadam",
        ),
        (
            ["method.type=dora"],
            "method.type = 'dora' is not a known method (did you mean 'lora'?); "
            "allowed: adapter, full, head, lora, prompt",
        ),
        (
            ["method.num_virtual_tokens=3"],
            "unknown key method.num_virtual_tokens; allowed keys in [method]: r, alpha",
        ),
        (
            ["partition.scheme=random"],
            "partition.scheme = 'random' is not allowed; allowed: 'column' | 'dirichlet'",
        ),
        (["partition.alpha=-1"], "partition.alpha = -1.0 is not allowed; allowed: > 0"),
        (
            ["federation.clients_per_round=11"],
            "federation.clients_per_round = 11 is not allowed; allowed: ≤ partition.clients (10)",
        ),
        (
            ["codec.up=['zip']"],
            "codec.up item 'zip' is not a known codec; allowed: bf16, delta, fp16",
        ),
        (["bogus.key=1"], "unknown key or section 'bogus'"),
        (["rounds"], "--set 'rounds' is not of the form section.key=value"),
    ],
)
def test_bad_config_names_key_value_and_allowed(overrides, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("federation.local_step=3", "(did you mean federation.local_steps?)"),
        ("federaton.rounds=3", "'federaton' (did you mean federation?)"),
        ("method.type=lorra", "'lorra' is not a known method (did you mean 'lora'?)"),
        ("strategy.name=fedprx", "(did you mean 'fedprox'?)"),
        ("data.text_colum=body", "(did you mean data.text_column?)"),
    ],
)
def test_a_mistyped_name_suggests_the_closest_valid_one(override, suggestion):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert suggestion in str(info.value)
    assert "\n" not in str(info.value)


def test_no_suggestion_when_nothing_is_close():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["federation.zzzzzz=1"])
    assert "did you mean" not in str(info.value)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[federation\nrounds = 1")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad)


def test_every_shipped_config_loads():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.toml"))
    assert configs
    for path in configs:
        load_config(path)
    assert (
        load_config(Path(__file__).parents[1] / "configs" / "agnews_lora.toml")
        == ExperimentConfig()
    )
