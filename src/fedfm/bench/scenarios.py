"""Benchmark scenarios: an experiment config plus which systems and sweeps to run."""

from __future__ import annotations

from dataclasses import dataclass, field

# The task of the speed issue: MiniLM + LoRA r=8 on query/value + a linear head on mean-pooled
# states; AG News train (10,001 rows) Dirichlet(0.5) over 10 clients, 5 per round, 10 local
# AdamW steps, batch 32, max_length 64; the first 1,000 test rows scored after each round.
AGNEWS_LORA = [
    "name=bench-agnews-lora",
    "data.max_length=64",
    "data.eval_rows=1000",
    "data.test_rows=1000",
    "partition.scheme=dirichlet",
    "partition.alpha=0.5",
    "partition.clients=10",
    "method.type=lora",
    "method.r=8",
    "method.target_modules=['query','value']",
    "federation.clients_per_round=5",
    "federation.local_steps=10",
    "federation.batch_size=32",
    "federation.optimizer=adamw",
]


@dataclass(frozen=True)
class Scenario:
    """A named benchmark: the config overrides, rounds, and the variants of fedfm to compare."""

    name: str
    description: str
    overrides: tuple[str, ...]
    rounds: int
    quick_rounds: int
    quick_overrides: tuple[str, ...] = ()
    # fedfm variants run beside the default one: label -> extra overrides (ablations)
    variants: dict[str, tuple[str, ...]] = field(default_factory=dict)
    sweep_clients: tuple[int, ...] = (10, 100, 1000)


SCENARIOS: dict[str, Scenario] = {
    "agnews-lora": Scenario(
        name="agnews-lora",
        description="MiniLM + LoRA r=8 (q,v), AG News Dirichlet(0.5) over 10 clients, 5 per round",
        overrides=tuple(AGNEWS_LORA),
        rounds=5,
        quick_rounds=2,
        quick_overrides=("federation.local_steps=5",),
        variants={
            "fedfm-fp32": ("federation.precision=fp32",),
            "fedfm-nogroup": ("federation.length_grouping=1",),
        },
    ),
}
