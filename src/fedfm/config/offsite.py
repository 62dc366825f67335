"""``[offsite]``: offsite-tuning's emulator (``federation.mode = "offsite"``).

Offsite-Tuning (Xiao et al. 2023, arXiv:2302.04870): the model owner keeps its full model; the
data owners train the first and last ``keep_layers`` transformer layers (the adapter) on an
*emulator*, the full model with its middle compressed by layer drop; the tuned ends are plugged
back into the full model."""

from __future__ import annotations

from dataclasses import dataclass

from fedfm.config.checks import check


@dataclass(frozen=True)
class OffsiteConfig:
    """The emulator of ``federation.mode = "offsite"``: ``keep_layers`` layers at each end of the
    model train (and travel, with the task head); of the layers between them the emulator keeps
    every ``drop_every``-th (the first middle layer, then one of every ``drop_every``), frozen.
    ``2 × keep_layers`` must be below the model's layer count, so that a middle is left."""

    keep_layers: int = 2  # layers kept at each end of the model: trainable, they travel
    drop_every: int = 2  # keep 1 of every N middle layers in the emulator (2 = every other)

    def __post_init__(self) -> None:
        check(self.keep_layers >= 1, "offsite.keep_layers", self.keep_layers, "≥ 1")
        check(self.drop_every >= 2, "offsite.drop_every", self.drop_every, "≥ 2")
