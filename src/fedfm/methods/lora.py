"""LoRA: low-rank adaptation (Hu et al. 2021, arXiv:2106.09685), through HF peft."""

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


@METHODS.register("lora")
class Lora(Method):
    """Trains A (r×in) and B (out×r) beside each target linear layer; W' = W + (alpha/r)·B·A."""

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
            return get_peft_model(encoder, config)
        except ValueError as e:
            raise ConfigError(
                f"method.target_modules = {list(self.spec.target_modules)!r}: {e}"
            ) from None
