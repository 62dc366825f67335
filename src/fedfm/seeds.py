"""Seeds derived from the run's seed: one rule for every part that draws randomness."""

from __future__ import annotations

import numpy as np


def derive_seed(*parts: int) -> int:
    """A 63-bit seed derived from (run seed, round, client index, ...): same inputs, same seed."""
    return int(
        np.random.SeedSequence([int(p) for p in parts])
        .generate_state(2, np.uint32)
        .view(np.uint64)[0]
        >> 1
    )
