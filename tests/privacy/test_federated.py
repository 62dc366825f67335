"""Privacy in the round loop: ε from the accountant, secure sums equal plain sums, refusals."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

import fedfm
from fedfm.client.app import ClientTask
from fedfm.client.secure import secure_round_metrics, secure_vector, secure_weight
from fedfm.config import FederationConfig, load_config
from fedfm.errors import ConfigError, ProtocolError
from fedfm.privacy.accounting import epsilon_for
from fedfm.privacy.federated import ProtectedAggregation
from fedfm.runtimes.secure import in_process_secure_round
from fedfm.state import FitInstructions, Update
from fedfm.strategies.fedavg import FedAvg, FedAvgSpec


def _updates(n=4, d=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    glob = OrderedDict(a=torch.randn(d, generator=g), b=torch.randn(3, 4, generator=g))
    ups = [
        Update(
            f"c{i}",
            1,
            OrderedDict((k, v + 0.1 * torch.randn(v.shape, generator=g)) for k, v in glob.items()),
            10 * (i + 1),
        )
        for i in range(n)
    ]
    return glob, ups


def _secure_round(protected, glob, ups, sharers, rnd=1):
    """One secure round through the in-process driver every runtime uses: the clients' vectors
    are masked by in-process parties; the strategy gets only the sum."""
    vectors = {
        u.client_id: secure_vector(u.state, glob, secure_weight(False, u.num_examples), 0.0)
        for u in ups
    }
    dimension = len(next(iter(vectors.values())))
    protocol = protected.secagg_server(rnd, len(sharers), dimension, "0" * 16)
    asked = FitInstructions(round=rnd, local_steps=1, lr=0.1, batch_size=4)
    tasks = [ClientTask(u.client_id, b"", asked) for u in ups]
    outcome = in_process_secure_round(
        rnd, tasks, sharers, protocol, lambda t: (vectors[t.client_id], None)
    )
    metrics = secure_round_metrics(outcome.bytes_up, outcome.bytes_down, outcome.seconds)
    metrics["secagg_survivors"] = float(len(outcome.survivors))
    return protected.aggregate_secure(rnd, glob, glob, outcome.sum, metrics)


def test_secure_aggregation_equals_the_plain_weighted_mean():
    glob, ups = _updates()
    config = load_config(
        None, ["secagg.enabled=true", "federation.clients_per_round=4", "partition.clients=4"]
    )
    protected = ProtectedAggregation(FedAvg(FedAvgSpec(), FederationConfig()), config, 4)
    secure = _secure_round(protected, glob, ups, [u.client_id for u in ups])
    plain = FedAvg(FedAvgSpec(), FederationConfig()).aggregate(1, glob, ups)
    for k in glob:
        assert torch.allclose(secure[k], plain[k], atol=4 * 2**-16)
    m = protected.round_metrics()
    assert (
        m["secagg_survivors"] == 4 and m["secagg_bytes_up"] > 4 * 4 * 62
    )  # masked vectors are sent


def test_secure_aggregation_with_dropouts_below_and_above_the_threshold():
    glob, ups = _updates(n=5)
    config = load_config(
        None,
        [
            "secagg.enabled=true",
            "secagg.threshold=3",
            "federation.clients_per_round=5",
            "partition.clients=5",
        ],
    )
    protected = ProtectedAggregation(FedAvg(FedAvgSpec(), FederationConfig()), config, 5)
    everyone = [u.client_id for u in ups]
    out = _secure_round(protected, glob, ups[:3], everyone)  # c3, c4 vanish after sharing
    plain = FedAvg(FedAvgSpec(), FederationConfig()).aggregate(1, glob, ups[:3])
    assert all(torch.allclose(out[k], plain[k], atol=1e-3) for k in glob)
    with pytest.raises(ProtocolError, match="threshold is 3"):
        _secure_round(protected, glob, ups[:2], everyone, rnd=2)


def test_the_strategy_never_sums_plain_updates_under_secure_aggregation():
    glob, ups = _updates()
    config = load_config(
        None, ["secagg.enabled=true", "federation.clients_per_round=4", "partition.clients=4"]
    )
    protected = ProtectedAggregation(FedAvg(FedAvgSpec(), FederationConfig()), config, 4)
    assert protected.masks_updates
    with pytest.raises(ProtocolError, match="never sees individual updates"):
        protected.aggregate(1, glob, ups)


def test_central_dp_run_reports_the_accountants_epsilon(tiny_config, tmp_path):
    config = tiny_config(
        "privacy.dp=central",
        "privacy.noise_multiplier=1.0",
        "privacy.clip_norm=5.0",
        "privacy.audit=true",
        "privacy.audit_rows=100",
    )
    result = fedfm.run(config, out=tmp_path)
    expected = [epsilon_for(1.0, 2 / 4, r, 1e-5, "rdp") for r in (1, 2)]
    assert [row["epsilon"] for row in result.metrics] == pytest.approx(expected, rel=1e-9)
    assert result.summary["epsilon"] == pytest.approx(expected[-1], rel=1e-9)
    assert result.summary["delta"] == 1e-5 and "approximation" in result.summary["accounting_note"]
    assert 0.0 <= result.summary["mia_auc"] <= 1.0


def test_target_epsilon_is_met(tiny_config, tmp_path):
    result = fedfm.run(
        tiny_config("privacy.dp=central", "privacy.target_epsilon=4.0", "federation.rounds=1"),
        out=tmp_path,
    )
    assert 3.9 <= result.summary["epsilon"] <= 4.0


def test_distributed_dp_under_secure_aggregation_with_a_dropout(tiny_config, tmp_path):
    config = tiny_config(
        "privacy.dp=distributed",
        "privacy.noise_multiplier=0.5",
        "privacy.clip_norm=5.0",
        "secagg.enabled=true",
        "federation.clients_per_round=4",
        "federation.dropout=0.25",
        "federation.rounds=1",
    )
    result = fedfm.run(config, out=tmp_path)
    row = result.metrics[0]
    assert len(row["dropped"]) == 1 and row["secagg_survivors"] == 3
    assert row["bytes_up"] == row["secagg_bytes_up"]
    assert row["dp_noise_multiplier_effective"] == pytest.approx(0.5 * np.sqrt(3 / 4))
    assert np.isfinite(result.final_accuracy)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["privacy.dp=central", "privacy.noise_multiplier=1", "secagg.enabled=true"],
            "use privacy.dp = 'distributed'",
        ),
        (["secagg.enabled=true", "strategy.name=median"], "needs each client's update"),
        (["secagg.enabled=true", "strategy.name=fedbuff"], "'fedbuff' is asynchronous"),
        (
            ["privacy.dp=central", "privacy.noise_multiplier=1", "strategy.name=fedbuff"],
            "'fedbuff' is asynchronous",
        ),
        (
            ["privacy.dp=local", "privacy.noise_multiplier=1", "method.type=prompt"],
            "does not support method.type",
        ),
        (["privacy.dp=central"], "privacy.noise_multiplier = 0.0 is not allowed"),
    ],
)
def test_incompatible_settings_are_refused(tiny_config, tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        fedfm.run(tiny_config(*overrides), out=tmp_path)
    assert not any(tmp_path.iterdir())


def test_distributed_dp_with_an_int8_uplink_masks_in_a_16_bit_ring(tiny_config, tmp_path):
    """secagg.modulus_bits = 0: int8 on the uplink and distributed DP give a 16-bit ring on a
    grid all clients share; the run trains as before, at about half the masked bytes."""
    common = (
        "privacy.dp=distributed",
        "privacy.noise_multiplier=0.5",
        "privacy.clip_norm=5.0",
        "secagg.enabled=true",
        "secagg.value_range=0.4",  # grid 2^-8: fine enough for the model, room for the noise
        "federation.clients_per_round=4",
        "federation.rounds=1",
        "codec.up=['int8']",
    )
    wide = fedfm.run(tiny_config(*common, "secagg.modulus_bits=32"), out=tmp_path / "32")
    narrow = fedfm.run(tiny_config(*common), out=tmp_path / "auto")
    masked = [r.metrics[0]["secagg_bytes_up"] for r in (wide, narrow)]
    assert 0.45 < masked[1] / masked[0] < 0.6
    assert np.isfinite(narrow.metrics[0]["loss"]) and narrow.metrics[0]["secagg_survivors"] == 4
