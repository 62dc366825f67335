"""The ring follows the uplink's quantised width (``secagg.modulus_bits = 0``): int8 updates on a
grid shared by all clients sum exactly in a 16-bit ring, at half the masked bytes of 32 bits."""

from __future__ import annotations

import numpy as np
import pytest

from fedfm.config import load_config
from fedfm.errors import ProtocolError
from fedfm.privacy.secagg import (
    WireMessage,
    decode_fixed_point,
    encode_fixed_point,
    grid_fraction_bits,
    ring_bits,
    secagg_ring,
    secure_sum,
)


@pytest.mark.parametrize(
    ("value_bits", "clients", "bits"),
    [(8, 2, 16), (8, 128, 16), (8, 129, 32), (4, 1024, 16), (16, 10, 32), (32, 1000, 64)],
)
def test_ring_bits_are_the_value_bits_plus_the_sum_growth_plus_headroom(value_bits, clients, bits):
    assert ring_bits(value_bits, clients) == bits


def test_the_shared_grid_maps_the_range_into_the_codec_integers():
    assert grid_fraction_bits(1.0, 8) == 6  # 1.0 · 64 = 64 ≤ 127 < 128
    assert grid_fraction_bits(0.5, 8) == 7
    assert grid_fraction_bits(0.01, 8) == 13
    assert all(r * 2.0 ** grid_fraction_bits(r, 8) <= 127 for r in (0.003, 0.7, 1.9, 40.0))


@pytest.mark.parametrize(
    ("overrides", "ring"),
    [
        (["codec.up=['int8']", "privacy.dp='distributed'"], (16, 6)),
        (["codec.up=['int8']", "privacy.dp='distributed'", "secagg.value_range=0.25"], (16, 8)),
        (["codec.up=['int4']", "privacy.dp='distributed'", "secagg.value_range=0.01"], (16, 9)),
        (["codec.up=['int8']"], (32, 16)),  # example-count weights are not on the grid
        (["privacy.dp='distributed'"], (32, 16)),  # no quantiser: fixed point as configured
        (["codec.up=['int8']", "privacy.dp='distributed'", "secagg.modulus_bits=64"], (64, 16)),
    ],
)
def test_every_party_derives_the_ring_from_the_config(overrides, ring):
    config = load_config(None, ["secagg.enabled=true", "privacy.noise_multiplier=1.0", *overrides])
    assert secagg_ring(config, 1000) == ring


def test_a_grid_too_coarse_for_the_model_keeps_the_32_bit_ring():
    """Rounding 10^6 values to a step of 2^-6 could grow the clipped norm by 7.8 > clip_norm:
    the ring stays 32 bits; a range of clip_norm / 10 makes the grid fine enough."""
    base = ["secagg.enabled=true", "privacy.dp='distributed'", "privacy.noise_multiplier=1.0"]
    config = load_config(None, [*base, "codec.up=['int8']"])
    assert secagg_ring(config, 4096) == (16, 6) and secagg_ring(config, 10**6) == (32, 16)
    config = load_config(None, [*base, "codec.up=['int8']", "secagg.value_range=0.1"])
    assert secagg_ring(config, 10**6) == (16, 10)


def test_int8_updates_sum_exactly_in_a_16_bit_ring():
    """n clients quantise to int8 on the shared grid (step 2^-f from the range); the secure sum
    over a 16-bit ring equals the plain sum of the dequantised values, bit for bit."""
    n, dimension, value_range = 12, 300, 1.0
    f = grid_fraction_bits(value_range, 8)
    rng = np.random.default_rng(0)
    floats = {f"c{i:02d}": rng.uniform(-value_range, value_range, dimension) for i in range(n)}
    quantised = {c: np.rint(x * 2.0**f).astype(np.int64) for c, x in floats.items()}
    assert max(np.abs(q).max() for q in quantised.values()) <= 127  # int8
    dequantised = {c: q / 2.0**f for c, q in quantised.items()}
    transcript: list[WireMessage] = []
    result = secure_sum(dequantised, 0, f, 16, transcript=transcript)
    assert np.array_equal(result.sum, sum(dequantised.values()))
    masked = [m for m in transcript if m.round == "masked" and m.sender != "server"]
    assert all(dimension * 2 <= len(m.payload) < dimension * 2 + 2048 for m in masked)


def test_the_16_bit_ring_holds_128_worst_case_int8_values_and_refuses_wrapping():
    f = 6
    worst = np.full(5, 127 / 2.0**f)
    encoded = [encode_fixed_point(worst, f, 16, clients=128) for _ in range(128)]
    total = np.zeros(5, np.uint16)
    for e in encoded:
        total += e  # wraps mod 2^16 as the masks do
    assert np.array_equal(decode_fixed_point(total, f, 16), np.full(5, 128 * 127 / 2.0**f))
    with pytest.raises(ProtocolError, match="exceeds the representable"):
        encode_fixed_point(np.full(5, 256 / 2.0**f), f, 16, clients=128)
