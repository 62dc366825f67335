"""The ring's size from the uplink's quantised width: secure aggregation keeps a codec's savings.

A masked input has one k-bit ring element per coordinate, whatever the codec chain sent before,
so with k = 32 an ``int8`` uplink loses its 4× saving under secure aggregation. Sums of n
integers of b bits (sign included) need b + ⌈log2 n⌉ bits; with one bit of headroom (the
training-loss and weight coordinates, discrete DP noise), ``int8`` with ≤ 128 clients fits a
16-bit ring: half the bytes of the 32-bit one.

The clients must then quantise on one shared grid, not each on its own scale (``int8`` picks
one per tensor, per client: those integers do not add up). The grid is fixed point, step
2^−f, with f the largest that maps the agreed per-coordinate range R (``secagg.value_range``,
default ``privacy.clip_norm``: a clipped update has no coordinate beyond it) into the codec's
integers: R · 2^f ≤ 2^(b−1) − 1. Every client and the server derive (k, f) from the experiment
config and the model's size alone (:func:`secagg_ring`), so they agree without a message. A
value beyond the range still fits while the sum stays under 2^(k−1) (for n = 10 clients, 25×
the range with int8: room for the DP noise); past that, the client refuses (and drops out)
rather than wrap. The ring sum of grid values is exact: masking adds no error.

The grid must also suit the model and the noise: distributed DP reserves room in the clip norm
for rounding d values (≤ 2^−f/2 · √d), so the quantised ring is only chosen while that is at
most half of ``privacy.clip_norm``, and wide enough for each client's value: a clipped
coordinate plus 6 standard deviations of its noise share (σC/√n, so σ must be configured, not
calibrated from ``target_epsilon``); else the ring is 32 bits. The range R trades the two:
with R = clip_norm the grid is fine enough up to d = 4096 (int8); a larger model needs a smaller R (``secagg.value_range``: a clipped
update's coordinates are far below its norm), but not so small that the noise overflows.
"""

from __future__ import annotations

import math

from fedfm.codecs import Pipeline
from fedfm.privacy.dp import quantization_norm_slack
from fedfm.privacy.mechanisms import mechanism

RING_BITS = (16, 32, 64)  # the rings a masked input may use (numpy's unsigned dtypes)


def ring_bits(value_bits: int, clients: int, headroom_bits: int = 1) -> int:
    """The smallest ring in :data:`RING_BITS` that sums ``clients`` signed ``value_bits``-bit
    integers with ``headroom_bits`` to spare: b + ⌈log2 n⌉ + headroom bits, rounded up."""
    need = value_bits + math.ceil(math.log2(max(clients, 1))) + headroom_bits
    for bits in RING_BITS:
        if need <= bits:
            return bits
    raise ValueError(f"{need} bits needed; allowed rings: {RING_BITS}")


def grid_fraction_bits(value_range: float, value_bits: int) -> int:
    """The largest f with ``value_range`` · 2^f ≤ 2^(b−1) − 1: the shared grid's step 2^−f."""
    if not value_range > 0:
        raise ValueError(f"value_range = {value_range} is not allowed; allowed: > 0")
    return math.floor(math.log2((2 ** (value_bits - 1) - 1) / value_range))


def secagg_ring(config, num_params: int) -> tuple[int, int]:
    """(modulus_bits, fraction_bits) of an experiment's secure rounds over a model of
    ``num_params`` shared values, the same on every party.

    ``secagg.modulus_bits`` > 0 is taken as configured (with ``secagg.fraction_bits``). 0 follows
    the uplink chain: a quantising codec of b bits (``int8``: 8) with uniform client weights
    (``privacy.dp = "distributed"``) and a grid fine enough for the model (see the module
    docstring) gives :func:`ring_bits` and the shared grid of :func:`grid_fraction_bits`;
    otherwise 32 bits and ``secagg.fraction_bits``.
    """
    secagg = config.secagg
    if secagg.modulus_bits:
        return secagg.modulus_bits, secagg.fraction_bits
    value_bits = Pipeline(config.codec.up, "codec.up").value_bits
    if value_bits is None or not mechanism(config).uniform_weights:
        return 32, secagg.fraction_bits
    privacy, clients = config.privacy, config.federation.clients_per_round
    value_range = secagg.value_range or privacy.clip_norm
    fraction_bits = grid_fraction_bits(value_range, value_bits)
    modulus_bits = ring_bits(value_bits, clients)
    slack = quantization_norm_slack(num_params, 2.0**-fraction_bits)
    # each client's value must fit: a clipped coordinate (≤ C) plus 6 sd of its noise share
    # (σC/√n); σ calibrated later (target_epsilon) is unknown here: keep 32 bits
    noise = 6 * privacy.noise_multiplier * privacy.clip_norm / math.sqrt(clients)
    room = ((1 << (modulus_bits - 1)) - 1) // clients * 2.0**-fraction_bits
    if (
        slack > privacy.clip_norm / 2  # too coarse for this many values
        or not privacy.noise_multiplier
        or room < privacy.clip_norm + noise  # too narrow for the noise
    ):
        return 32, secagg.fraction_bits
    return modulus_bits, fraction_bits
