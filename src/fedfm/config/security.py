"""The sections of the threat model: differential privacy, secure aggregation, attacks, and the
limits every received update must stay within."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedfm.config.checks import check, check_choice, registry


@dataclass(frozen=True)
class PrivacyConfig:
    """Differential privacy and its accounting: client-level DP-FedAvg (``central``,
    ``distributed``) or example-level DP-SGD on each client (``local``, see
    :mod:`fedfm.privacy.local`; ``clip_norm`` is then the per-example gradient bound)."""

    dp: str = "none"  # none | central | distributed | local (example-level DP-SGD on each client)
    accountant: str = "rdp"  # rdp | prv (opacus)
    noise_multiplier: float = 0.0  # σ; 0 with target_epsilon > 0: calibrated to reach it
    target_epsilon: float = 0.0  # > 0: σ is calibrated so that the run ends at this ε
    delta: float = 1e-5  # the δ of (ε, δ)-DP
    clip: str = "fixed"  # fixed | adaptive (quantile clipping, Andrew et al. 2021)
    clip_norm: float = 1.0  # the fixed norm, or the initial one for adaptive clipping
    target_quantile: float = 0.5  # adaptive: share of updates left unclipped
    clip_lr: float = 0.2  # adaptive: geometric learning rate of the clip norm
    audit: bool = False  # loss-threshold membership inference on the final model (AUC)
    audit_rows: int = 1000  # members (client training rows) and as many non-members (test rows)

    def __post_init__(self) -> None:
        check_choice("privacy.dp", self.dp, registry("dp mechanism").names())
        check_choice("privacy.accountant", self.accountant, ["rdp", "prv"])
        check(self.noise_multiplier >= 0, "privacy.noise_multiplier", self.noise_multiplier, "≥ 0")
        check(
            self.target_epsilon >= 0,
            "privacy.target_epsilon",
            self.target_epsilon,
            "≥ 0 (0 = use noise_multiplier)",
        )
        check(0 < self.delta < 1, "privacy.delta", self.delta, "0 < delta < 1")
        check_choice("privacy.clip", self.clip, ["fixed", "adaptive"])
        check(self.clip_norm > 0, "privacy.clip_norm", self.clip_norm, "> 0")
        check(
            0 < self.target_quantile < 1,
            "privacy.target_quantile",
            self.target_quantile,
            "0 < q < 1",
        )
        check(self.clip_lr > 0, "privacy.clip_lr", self.clip_lr, "> 0")
        check(self.audit_rows >= 10, "privacy.audit_rows", self.audit_rows, "≥ 10")
        if self.dp != "none":
            check(
                self.noise_multiplier > 0 or self.target_epsilon > 0,
                "privacy.noise_multiplier",
                self.noise_multiplier,
                "> 0, or set privacy.target_epsilon, when privacy.dp is not 'none'",
            )
        check(
            self.dp != "local" or self.clip == "fixed",
            "privacy.clip",
            self.clip,
            "'fixed' with privacy.dp = 'local' (each example's gradient is clipped to clip_norm; "
            "adaptive clipping needs privacy.dp = 'central')",
        )


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation: the server learns only the sum of the clients' updates."""

    enabled: bool = False  # mask updates so the server sees only their sum
    threshold: int = 0  # t: shares needed to recover a mask; 0 = a majority of the round's clients
    fraction_bits: int = 16  # fixed-point resolution 2^-bits (a quantised ring: from value_range)
    # the ring Z_(2^bits); 0 = from the uplink's quantiser (int8 with distributed DP: 16 bits
    # up to 128 clients, on a grid shared by all clients), else 32
    modulus_bits: int = 0
    # with modulus_bits = 0: the largest |coordinate| the shared grid covers; 0 = privacy.clip_norm
    value_range: float = 0.0

    def __post_init__(self) -> None:
        check(self.threshold >= 0, "secagg.threshold", self.threshold, "≥ 0 (0 = majority)")
        check(4 <= self.fraction_bits <= 30, "secagg.fraction_bits", self.fraction_bits, "4 … 30")
        check(
            self.modulus_bits in (0, 16, 32, 64),
            "secagg.modulus_bits",
            self.modulus_bits,
            "0 (from the uplink quantiser), 16, 32 or 64",
        )
        check(self.value_range >= 0, "secagg.value_range", self.value_range, "≥ 0 (0 = clip_norm)")


@dataclass(frozen=True)
class AttackConfig:
    """Malicious clients, for robustness experiments."""

    type: str = "none"  # none | sign_flip | scale | noise | free_rider | label_flip | …
    fraction: float = (
        0.0  # share of all clients that are malicious (a fixed set drawn with the seed)
    )
    scale: float = 1.0  # sign_flip sends −scale × its honest update; scale sends +scale ×
    noise_std: float = 1.0  # noise: the standard deviation of the Gaussian update
    trigger: str = "cf mn bb"  # backdoor: the phrase inserted into the text
    target_label: str = ""  # backdoor / label_flip target; "" = the first label
    poison_fraction: float = 0.5  # backdoor: share of a malicious client's rows poisoned

    def __post_init__(self) -> None:
        check_choice(
            "attack.type",
            self.type,
            [
                "none",
                "sign_flip",
                "scale",
                "noise",
                "free_rider",
                "label_flip",
                "label_shuffle",
                "backdoor",
            ],
        )
        check(0 <= self.fraction <= 1, "attack.fraction", self.fraction, "0 ≤ fraction ≤ 1")
        check(self.scale > 0, "attack.scale", self.scale, "> 0")
        check(self.noise_std > 0, "attack.noise_std", self.noise_std, "> 0")
        check(
            0 < self.poison_fraction <= 1,
            "attack.poison_fraction",
            self.poison_fraction,
            "0 < p ≤ 1",
        )


@dataclass(frozen=True)
class LimitsConfig:
    """What the server accepts from one client, checked before an update is stored or aggregated.

    A client states its own ``num_examples``, so without a cap one client can own the FedAvg
    mean; ``max_client_weight`` caps the share of the round's example weight any one update
    carries (the excess is spread over the others). ``max_abs_value`` refuses values no model
    holds (3e38 would overflow the mean); ``max_update_norm`` bounds ‖update − the state the
    client started from‖₂ (norm bounding, Sun et al. 2019), off by default.
    """

    max_examples: int = 10**9  # an update stating more examples is refused
    max_client_weight: float = 1.0  # share of a round's example weight; 1 = no cap
    max_update_norm: float = 0.0  # L2 norm of the update's change; 0 = no bound
    max_abs_value: float = 1e6  # largest |value| of any tensor of an update; 0 = no bound

    def __post_init__(self) -> None:
        check(
            1 <= self.max_examples <= 2**53, "limits.max_examples", self.max_examples, "1 … 2**53"
        )
        check(
            0 < self.max_client_weight <= 1,
            "limits.max_client_weight",
            self.max_client_weight,
            "0 < w ≤ 1 (1 = no cap)",
        )
        for key in ("max_update_norm", "max_abs_value"):
            value = getattr(self, key)
            check(value >= 0 and math.isfinite(value), f"limits.{key}", value, "≥ 0 (0 = no bound)")
