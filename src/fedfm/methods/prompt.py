"""Soft prompt tuning (Lester et al. 2021, arXiv:2104.08691), through HF peft."""

from __future__ import annotations

from dataclasses import dataclass

from fedfm.config import check
from fedfm.methods.base import METHODS, Method


@dataclass(frozen=True)
class PromptSpec:
    num_virtual_tokens: int = 16  # learned soft-prompt vectors put before the input

    def __post_init__(self) -> None:
        check(
            1 <= self.num_virtual_tokens <= 512,
            "method.num_virtual_tokens",
            self.num_virtual_tokens,
            "1 … 512",
        )


@METHODS.register("prompt")
class Prompt(Method):
    """Trains ``num_virtual_tokens`` input embeddings prepended to every sequence."""

    Spec = PromptSpec
    is_peft = True

    def wrap(self, encoder):
        from peft import PromptTuningConfig, TaskType, get_peft_model

        config = PromptTuningConfig(
            task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=self.spec.num_virtual_tokens
        )
        return get_peft_model(encoder, config)

    def prefix_tokens(self) -> int:
        return self.spec.num_virtual_tokens
