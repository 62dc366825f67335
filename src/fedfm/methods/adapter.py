"""Adapters: IA3 learned rescaling vectors (Liu et al. 2022, arXiv:2205.05638), through HF peft."""

from __future__ import annotations

from dataclasses import dataclass

from fedfm.config import check
from fedfm.errors import ConfigError
from fedfm.methods.base import METHODS, Method


@dataclass(frozen=True)
class AdapterSpec:
    kind: str = "ia3"  # the adapter: IA3 (learned rescaling vectors, Liu et al. 2022)
    target_modules: tuple[str, ...] = ()  # empty: peft's default for the model type
    feedforward_modules: tuple[
        str, ...
    ] = ()  # which of target_modules are feed-forward (empty: peft's default)

    def __post_init__(self) -> None:
        check(self.kind == "ia3", "method.kind", self.kind, "'ia3'")
        check(
            set(self.feedforward_modules) <= set(self.target_modules) or not self.target_modules,
            "method.feedforward_modules",
            self.feedforward_modules,
            "a subset of method.target_modules",
        )


@METHODS.register("adapter")
class Adapter(Method):
    """Trains one scaling vector per target layer (keys, values and feed-forward outputs)."""

    Spec = AdapterSpec
    is_peft = True

    def wrap(self, encoder):
        from peft import IA3Config, TaskType, get_peft_model

        kwargs = {}
        if self.spec.target_modules:
            kwargs["target_modules"] = list(self.spec.target_modules)
            kwargs["feedforward_modules"] = list(self.spec.feedforward_modules)
        try:
            return get_peft_model(
                encoder, IA3Config(task_type=TaskType.FEATURE_EXTRACTION, **kwargs)
            )
        except ValueError as e:
            raise ConfigError(
                f"method.target_modules = {list(self.spec.target_modules)!r}: {e}"
            ) from None
