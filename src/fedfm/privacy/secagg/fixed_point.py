"""Fixed point in the ring Z_(2^k): floats ↔ ring elements, and the range that cannot overflow.

See the package docstring (:mod:`fedfm.privacy.secagg`) for the encoding and its error bound.
"""

from __future__ import annotations

import numpy as np

from fedfm.errors import ProtocolError


def ring_dtype(modulus_bits: int) -> np.dtype:
    """The unsigned little-endian dtype of Z_(2^k): ``<u2``, ``<u4`` or ``<u8`` for k = 16,
    32 or 64."""
    if modulus_bits not in (16, 32, 64):
        raise ValueError(f"modulus_bits = {modulus_bits} is not allowed; allowed: 16, 32 or 64")
    return np.dtype(f"<u{modulus_bits // 8}")


def max_abs_value(fraction_bits: int, modulus_bits: int, clients: int) -> float:
    """The largest |value| each of ``clients`` updates may hold: (2^(k−1) − 1) / 2^f / n."""
    return ((1 << (modulus_bits - 1)) - 1) // clients / 2.0**fraction_bits


def encode_fixed_point(
    values: np.ndarray, fraction_bits: int, modulus_bits: int, clients: int = 1
) -> np.ndarray:
    """Floats (d,) → ring elements round(x · 2^f) mod 2^k (d,); raises if n sums could overflow."""
    scaled = np.rint(np.asarray(values, dtype=np.float64).ravel() * 2.0**fraction_bits)
    if not np.isfinite(scaled).all():
        raise ProtocolError("secure aggregation: the update has NaN or infinite values")
    limit = ((1 << (modulus_bits - 1)) - 1) // clients  # on integers: Σ of n values stays < 2^(k−1)
    peak = float(np.abs(scaled).max(initial=0.0))
    if peak > limit:  # Python compares float and int exactly
        raise ProtocolError(
            f"secure aggregation: an update value of magnitude {peak / 2.0**fraction_bits:.6g} "
            f"exceeds the representable ±{limit / 2.0**fraction_bits:.6g} (secagg.modulus_bits = "
            f"{modulus_bits}, secagg.fraction_bits = {fraction_bits}, {clients} clients); clip "
            "the updates (privacy.clip_norm), lower fraction_bits or set a wider modulus_bits"
        )
    return scaled.astype(np.int64).astype(ring_dtype(modulus_bits))  # int64 → uint wraps mod 2^k


def decode_fixed_point(ring: np.ndarray, fraction_bits: int, modulus_bits: int) -> np.ndarray:
    """Ring elements (d,) → float64 (d,), reading [2^(k−1), 2^k) as negatives."""
    signed = np.asarray(ring, dtype=ring_dtype(modulus_bits)).view(f"<i{modulus_bits // 8}")
    return signed.astype(np.float64) / 2.0**fraction_bits
