"""Where a client's DP noise comes from.

A simulation draws noise from a ``torch.Generator`` seeded from the experiment's seed, so runs
reproduce. A network client must not: the server chose that seed, and whoever knows the seed
can recompute the noise and subtract it. :class:`SecureGaussian` draws standard normals from a
ChaCha20 keystream under a 256-bit key read from the operating system's CSPRNG when the client
starts; the key never leaves the process, and every call uses a fresh nonce.

Samples are Box–Muller pairs of 53-bit uniforms (tails to about 8.5σ) in float64, returned as
float32. Under secure aggregation the noise is then rounded to the fixed-point grid, which also
removes the floating-point low bits through which Gaussian samples can leak (Mironov 2012).
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

KEY_BYTES = 32
_CHUNK_PAIRS = 1 << 20  # 16 MiB of keystream at a time


class SecureGaussian:
    """Standard normal samples from a CSPRNG (ChaCha20 keyed from ``os.urandom``).

    ``key`` is for tests that must reproduce a draw; a deployment leaves it out.
    """

    def __init__(self, key: bytes | None = None) -> None:
        if key is not None and len(key) != KEY_BYTES:
            raise ValueError(f"a SecureGaussian key has {KEY_BYTES} bytes, not {len(key)}")
        self._key = key if key is not None else os.urandom(KEY_BYTES)
        self._nonce = 0  # one 96-bit nonce per keystream, never repeated under this key

    def _keystream(self, size: int) -> bytes:
        self._nonce += 1
        # cryptography's ChaCha20 takes 16 bytes: a 32-bit block counter, then a 96-bit nonce
        nonce = bytes(4) + self._nonce.to_bytes(12, "little")
        return (
            Cipher(algorithms.ChaCha20(self._key, nonce), mode=None).encryptor().update(bytes(size))
        )

    def standard_normal(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """A float32 tensor of ``shape`` with independent N(0, 1) entries."""
        n = math.prod(shape)
        out = np.empty(n + (n & 1), dtype=np.float32)
        done = 0
        while done < n:
            pairs = min(_CHUNK_PAIRS, (n - done + 1) // 2)
            words = np.frombuffer(self._keystream(16 * pairs), dtype=np.uint64).reshape(pairs, 2)
            u1 = ((words[:, 0] >> np.uint64(11)) + 1).astype(np.float64) * 2.0**-53  # (0, 1]
            u2 = (words[:, 1] >> np.uint64(11)).astype(np.float64) * 2.0**-53  # [0, 1)
            radius = np.sqrt(-2.0 * np.log(u1))
            angle = 2.0 * math.pi * u2
            out[done : done + 2 * pairs : 2] = radius * np.cos(angle)
            out[done + 1 : done + 2 * pairs : 2] = radius * np.sin(angle)
            done += 2 * pairs
        return torch.from_numpy(out[:n]).reshape(tuple(shape))


#: What noise is drawn from: a seeded generator (reproducible) or a CSPRNG.
NoiseSource = torch.Generator | SecureGaussian


def standard_normal(shape: tuple[int, ...] | torch.Size, source: NoiseSource) -> torch.Tensor:
    """N(0, 1) of ``shape`` in float32 from ``source`` (on the generator's device)."""
    if isinstance(source, SecureGaussian):
        return source.standard_normal(shape)
    return torch.randn(shape, generator=source, dtype=torch.float32, device=source.device)
