"""Shamir secret sharing (Shamir 1979) over the prime field GF(2^256 + 297).

A secret s is the constant term of a random polynomial f of degree t − 1; the share of party x
is (x, f(x)). Any t shares determine f, hence s = f(0), by Lagrange interpolation; t − 1 shares
say nothing about s, because every value of s fits them equally well.

The field is the smallest prime above 2^256, so one field element holds any 32-byte secret (an
X25519 private key, a 32-byte seed) without chunking. A share is that element as 33 big-endian
bytes. Coefficients come from the OS CSPRNG (:mod:`secrets`): they are as secret as the secret.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Sequence

from fedfm.errors import ProtocolError

PRIME = 2**256 + 297  # the smallest prime above 2^256
SECRET_BYTES = 32  # secrets are 32-byte strings, read as big-endian integers < 2^256 < PRIME
SHARE_BYTES = 33  # a field element < 2^257, big-endian


def split(secret: int, threshold: int, xs: Sequence[int]) -> list[int]:
    """Shares f(x) for each x in ``xs`` of a fresh random degree-(threshold − 1) polynomial, f(0) = secret."""
    if not 0 <= secret < PRIME:
        raise ValueError(f"the secret must be in [0, PRIME), got a {secret.bit_length()}-bit value")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be in 1 … {len(xs)} (the number of shares)")
    if len(set(xs)) != len(xs) or not all(0 < x < PRIME for x in xs):
        raise ValueError("share points must be distinct and in 1 … PRIME − 1")
    coefficients = [secret] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    shares = []
    for x in xs:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares.append(y)
    return shares


@functools.lru_cache(maxsize=4096)
def lagrange_coefficients(xs: tuple[int, ...], x: int = 0) -> tuple[int, ...]:
    """c_j with f(x) = Σ c_j · f(x_j) for any f of degree < len(xs); cached, as the server reuses
    the same points for every user's secret."""
    if len(set(xs)) != len(xs):
        raise ProtocolError("Shamir shares with repeated points cannot be interpolated")
    coefficients = []
    for j, xj in enumerate(xs):
        numerator, denominator = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                numerator = numerator * (x - xm) % PRIME
                denominator = denominator * (xj - xm) % PRIME
        coefficients.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return tuple(coefficients)


def interpolate(points: Sequence[tuple[int, int]], x: int = 0) -> int:
    """The value at ``x`` of the unique polynomial of degree < len(points) through ``points``."""
    coefficients = lagrange_coefficients(tuple(p[0] for p in points), x)
    return sum(c * y for c, (_, y) in zip(coefficients, points, strict=True)) % PRIME


def reconstruct(points: Sequence[tuple[int, int]], threshold: int) -> int:
    """The secret from ≥ ``threshold`` shares; extra shares must lie on the same polynomial.

    Raises ProtocolError when there are too few shares, or when the extra ones disagree (a share
    was corrupted or forged), rather than returning a wrong secret.
    """
    if len(points) < threshold:
        raise ProtocolError(
            f"Shamir reconstruction needs {threshold} shares, only {len(points)} were given"
        )
    basis = points[:threshold]
    for x, y in points[threshold:]:
        if interpolate(basis, x) != y % PRIME:
            raise ProtocolError(f"Shamir share of party {x} is inconsistent with the others")
    return interpolate(basis, 0)


def split_bytes(secret: bytes, threshold: int, xs: Sequence[int]) -> list[bytes]:
    """:func:`split` for a 32-byte secret; each share is :data:`SHARE_BYTES` bytes."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"the secret must be {SECRET_BYTES} bytes, got {len(secret)}")
    value = int.from_bytes(secret, "big")
    return [y.to_bytes(SHARE_BYTES, "big") for y in split(value, threshold, xs)]


def reconstruct_bytes(points: Sequence[tuple[int, bytes]], threshold: int) -> bytes:
    """:func:`reconstruct` for shares made by :func:`split_bytes`; returns the 32-byte secret."""
    values = []
    for x, share in points:
        if len(share) != SHARE_BYTES:
            raise ProtocolError(f"a Shamir share must be {SHARE_BYTES} bytes, got {len(share)}")
        values.append((x, int.from_bytes(share, "big")))
    secret = reconstruct(values, threshold)
    if secret >> (8 * SECRET_BYTES):
        raise ProtocolError("Shamir shares reconstruct to a value that is not a 32-byte secret")
    return secret.to_bytes(SECRET_BYTES, "big")
