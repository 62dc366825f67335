"""What ``fedfm serve`` accepts and refuses before anything is loaded."""

from __future__ import annotations

import pytest

from fedfm.compat import check_network
from fedfm.config import load_config
from fedfm.errors import ConfigError

SERVED = ["server.tokens_file=tokens.txt"]


@pytest.mark.parametrize(
    "overrides",
    [
        ["secagg.enabled=true"],
        ["secagg.enabled=true", "privacy.dp=distributed", "privacy.noise_multiplier=1"],
        ["privacy.dp=central", "privacy.noise_multiplier=1"],
    ],
)
def test_secure_aggregation_and_client_level_dp_are_served(overrides):
    check_network(load_config(None, [*SERVED, *overrides]))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["secagg.enabled=true", "strategy.name=fedbuff"], "'fedbuff' is asynchronous"),
        (["privacy.dp=local", "privacy.noise_multiplier=1"], "example-level DP-SGD is simulation"),
        (["attack.type=sign_flip", "attack.fraction=0.2"], "attacks is simulation-only"),
        (
            ["warmup.ensemble_steps=5", "warmup.data=../shared/data/agnews/test.tsv"],
            "FedDF distillation is simulation-only",
        ),
        (["strategy.name=fltrust"], "a server root set of training rows"),
        (
            ["strategy.name=fedbuff", "evaluation.where=clients", "evaluation.client_split=0.2"],
            "asynchronous run keeps every client busy",
        ),
    ],
)
def test_what_the_network_cannot_honour_is_refused_by_name(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_network(load_config(None, [*SERVED, *overrides]))


def test_a_causal_lm_and_client_side_evaluation_are_served():
    check_network(
        load_config(None, [*SERVED, "evaluation.where=both", "evaluation.client_split=0.2"])
    )
    lm = ["task.type=causal_lm", "task.instruction=Which topic?", "model.name=smollm2"]
    check_network(load_config(None, [*SERVED, *lm]))
