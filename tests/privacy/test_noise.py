"""Where a client's DP noise comes from: a CSPRNG the server cannot replay (security finding 5)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from scipy import stats

from fedfm.client.trainer import derive_seed
from fedfm.config import load_config
from fedfm.privacy.dp import clip, distributed_noise_share
from fedfm.privacy.federated import client_transform
from fedfm.privacy.noise import SecureGaussian

KEY = bytes(range(32))


def test_secure_samples_are_standard_normal():
    z = SecureGaussian(KEY).standard_normal((1_000_001,)).double().numpy()  # odd: one pair cut
    assert z.shape == (1_000_001,) and np.isfinite(z).all()
    assert abs(z.mean()) < 5 / 1000  # 5 standard errors
    assert abs(z.std() - 1) < 5 * np.sqrt(2) / 2 / 1000
    assert stats.kstest(z, "norm").pvalue > 1e-3
    # tails: P(|z| > 3) = 0.0027 (binomial standard error 5.2e-5)
    assert abs((np.abs(z) > 3).mean() - 0.0027) < 5 * 5.2e-5


def test_a_keyed_draw_reproduces_and_every_draw_is_fresh():
    a, b = SecureGaussian(KEY), SecureGaussian(KEY)
    first = a.standard_normal((3, 5, 7))
    assert first.shape == (3, 5, 7) and first.dtype == torch.float32
    assert torch.equal(first, b.standard_normal((3, 5, 7)))  # same key, same nonce
    assert not torch.equal(first, a.standard_normal((3, 5, 7)))  # the next nonce
    # unkeyed: a key from the OS, different in every process (here: every instance)
    assert not torch.equal(
        SecureGaussian().standard_normal((64,)), SecureGaussian().standard_normal((64,))
    )
    with pytest.raises(ValueError, match="32 bytes"):
        SecureGaussian(b"short")


DP = [
    "privacy.dp=distributed",
    "privacy.noise_multiplier=0.5",
    "privacy.clip_norm=1.0",
    "secagg.enabled=true",
    "partition.clients=4",
    "federation.clients_per_round=4",
]


def _states():
    g = torch.Generator().manual_seed(0)
    received = OrderedDict(a=torch.randn(300, generator=g), b=torch.randn(4, 5, generator=g))
    trained = OrderedDict(
        (k, v + 0.05 * torch.randn(v.shape, generator=g)) for k, v in received.items()
    )
    return trained, received


@pytest.mark.parametrize("secure", [False, True])
def test_the_server_cannot_subtract_a_network_clients_noise(secure):
    """Finding 5: the server knows config.seed, the round and the client's index; it replays the
    noise a seeded client adds and recovers the client's clipped update almost exactly. Noise
    from the client's own CSPRNG leaves the server σ·C/√n of noise per coordinate."""
    config = load_config(None, DP)
    trained, received = _states()
    num_params = sum(t.numel() for t in received.values())
    transform = client_transform(config, {"c2": 2}, 4, num_params, secure_noise=secure)
    sent = transform("c2", 3, trained, received)

    # the server's replay: the same clip, the same seed, the same noise on the same grid
    resolution = 2.0**-config.secagg.fraction_bits
    delta = OrderedDict((n, trained[n] - received[n]) for n in received)
    from fedfm.privacy.dp import quantization_norm_slack

    clipped, _ = clip(delta, 1.0 - quantization_norm_slack(num_params, resolution))
    replay = torch.Generator().manual_seed(derive_seed(config.seed, 3, 2, 0xD1))
    guess = distributed_noise_share(clipped, 1.0, 0.5, 4, replay, resolution=resolution)
    error = torch.cat([(sent[n] - received[n] - guess[n]).reshape(-1) for n in received])
    share_std = 0.5 * 1.0 / np.sqrt(4)
    if secure:
        assert float(error.std()) == pytest.approx(np.sqrt(2) * share_std, rel=0.15)
    else:
        assert float(error.abs().max()) < 1e-5  # the noise is gone: the update is in the clear
