"""Full fine-tuning: every encoder parameter trains and travels."""

from __future__ import annotations

from dataclasses import dataclass

from fedfm.methods.base import METHODS, Method


@dataclass(frozen=True)
class FullSpec:
    pass


@METHODS.register("full")
class Full(Method):
    """Every parameter is shared; the baseline that parameter-efficient methods are measured against."""

    Spec = FullSpec
    tunes_layers = True

    def wrap(self, encoder):
        for p in encoder.parameters():
            p.requires_grad_(True)
        return encoder

    def save(self, encoder, path):
        encoder.save_pretrained(str(path))
