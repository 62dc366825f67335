"""Update poisoning: sign flipping, scaling (model replacement), Gaussian noise."""

from __future__ import annotations

from collections import OrderedDict

import torch

from fedfm.attacks.base import ATTACKS, Attack


@ATTACKS.register("sign_flip")
class SignFlip(Attack):
    """Sends the honest delta reversed and scaled: reference − scale·(trained − reference)."""

    def poison_update(self, trained, reference, generator):
        s = self.config.scale
        return OrderedDict(
            (n, (reference[n] - s * (t - reference[n])).to(t.dtype)) for n, t in trained.items()
        )


@ATTACKS.register("scale")
class Scale(Attack):
    """Boosts the honest delta: reference + scale·(trained − reference) (Bagdasaryan et al. 2020)."""

    def poison_update(self, trained, reference, generator):
        s = self.config.scale
        return OrderedDict(
            (n, (reference[n] + s * (t - reference[n])).to(t.dtype)) for n, t in trained.items()
        )


@ATTACKS.register("noise")
class Noise(Attack):
    """Sends reference + Gaussian noise instead of training results."""

    def poison_update(self, trained, reference, generator):
        std = self.config.noise_std
        return OrderedDict(
            (n, (reference[n] + std * torch.randn(t.shape, generator=generator)).to(t.dtype))
            for n, t in trained.items()
        )


@ATTACKS.register("free_rider")
class FreeRider(Attack):
    """Trains nothing: sends the state it received back (a free rider of contribution
    schemes, which must not be paid for the others' work)."""

    def poison_update(self, trained, reference, generator):
        return OrderedDict((n, reference[n].clone().to(t.dtype)) for n, t in trained.items())
