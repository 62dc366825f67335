"""Head-only tuning: the encoder stays frozen; only the task head trains and travels."""

from __future__ import annotations

from dataclasses import dataclass

from fedfm.methods.base import METHODS, Method, freeze


@dataclass(frozen=True)
class HeadSpec:
    pass


@METHODS.register("head")
class Head(Method):
    """A linear probe trained federatedly."""

    Spec = HeadSpec

    def wrap(self, encoder):
        return freeze(encoder)
