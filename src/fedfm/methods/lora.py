"""LoRA: low-rank adaptation (Hu et al. 2021, arXiv:2106.09685), through HF peft.

``freeze_a = true`` is FFA-LoRA (Sun et al. 2024, "Improving LoRA in Privacy-preserving Federated
Learning", arXiv:2403.12313): A stays at peft's random init, which is the same on every client
(the task seeds torch before wrapping the shared base model), and only B and the head train and
travel. Every client's update is then Bₖ·A with one A, so FedAvg of B is exactly the mean of the
products, and the uplink carries half the LoRA bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedfm.config import check
from fedfm.methods.base import METHODS, Method


@dataclass(frozen=True)
class LoraSpec:
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("query", "value")
    freeze_a: bool = False  # FFA-LoRA: A frozen at its init; only B (and the head) train

    def __post_init__(self) -> None:
        check(1 <= self.r <= 4096, "method.r", self.r, "1 … 4096")
        check(self.alpha > 0, "method.alpha", self.alpha, "> 0")
        check(0 <= self.dropout < 1, "method.dropout", self.dropout, "0 ≤ dropout < 1")
        check(
            len(self.target_modules) > 0,
            "method.target_modules",
            self.target_modules,
            "a non-empty list of module names",
        )
        check(isinstance(self.freeze_a, bool), "method.freeze_a", self.freeze_a, "true or false")


def is_lora_a(name: str) -> bool:
    """Whether a parameter name is a LoRA A factor (``….lora_A.<adapter>.weight``)."""
    return ".lora_A." in name or ".lora_embedding_A." in name


@METHODS.register("lora")
class Lora(Method):
    """Trains A (r×in) and B (out×r) beside each target linear layer; W' = W + (alpha/r)·B·A.

    With ``freeze_a``, only B trains (FFA-LoRA).
    """

    Spec = LoraSpec
    is_peft = True

    def wrap(self, encoder):
        from peft import LoraConfig, get_peft_model

        from fedfm.errors import ConfigError

        config = LoraConfig(
            r=self.spec.r,
            lora_alpha=self.spec.alpha,
            lora_dropout=self.spec.dropout,
            target_modules=list(self.spec.target_modules),
        )
        try:
            model = get_peft_model(encoder, config)
        except ValueError as e:
            raise ConfigError(
                f"method.target_modules = {list(self.spec.target_modules)!r}: {e}"
            ) from None
        if self.spec.freeze_a:
            # Not shared: the task shares exactly the trainable parameters, so A never travels.
            for name, p in model.named_parameters():
                if is_lora_a(name):
                    p.requires_grad_(False)
        return model
