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
    peers: tuple[str, ...] = ("plain", "flower")  # compared systems unless --peers says otherwise
    quick_variants: tuple[str, ...] | None = None  # variants kept by --quick (None: none)


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
    # Communication: accuracy against cumulative uplink bytes for each codec chain.
    "agnews-codecs": Scenario(
        name="agnews-codecs",
        description="LoRA updates through each uplink codec chain (accuracy vs uplink MB)",
        overrides=tuple(AGNEWS_LORA),
        rounds=8,
        quick_rounds=2,
        quick_overrides=("federation.local_steps=5",),
        variants={
            "fp16": ("codec.up=['fp16']",),
            "int8": ("codec.up=['delta','int8']",),
            "int4": ("codec.up=['delta','int4:block=64']",),
            "topk+EF": ("codec.up=['delta','topk:0.1']",),
            "topk+int8": ("codec.up=['delta','topk:0.1','int8']",),
            "residual+int8": ("codec.up=['residual','int8']",),
            "ffa-lora": ("method.freeze_a=true",),
            "lora_svd": ("strategy.name=lora_svd",),
        },
        sweep_clients=(),
        peers=(),
        quick_variants=("int8", "topk+int8"),
    ),
    # Methods: bytes per round as a share of the model against accuracy.
    "agnews-methods": Scenario(
        name="agnews-methods",
        description="LoRA vs soft prompt vs IA3 adapter vs head-only vs full fine-tuning",
        overrides=tuple(AGNEWS_LORA),
        rounds=8,
        quick_rounds=2,
        quick_overrides=("federation.local_steps=5",),
        variants={
            "prompt": ("method.type=prompt", "federation.lr=1e-2"),
            "adapter": ("method.type=adapter", "federation.lr=1e-2"),
            "head": ("method.type=head", "federation.lr=1e-2"),
            "full": ("method.type=full", "federation.lr=5e-5"),
        },
        sweep_clients=(),
        peers=(),
        quick_variants=("prompt",),
    ),
    # Trust: 20% malicious clients against FedAvg and the robust rules.
    "agnews-attacks": Scenario(
        name="agnews-attacks",
        description="20% sign-flip (scale 4) attackers: FedAvg against the robust rules",
        overrides=(*AGNEWS_LORA, "attack.type=sign_flip", "attack.fraction=0.2", "attack.scale=4"),
        rounds=8,
        quick_rounds=2,
        quick_overrides=("federation.local_steps=5",),
        variants={
            "clean": ("attack.type=none",),
            "median": ("strategy.name=median",),
            "trimmed_mean": ("strategy.name=trimmed_mean", "strategy.beta=0.2"),
            "multikrum": ("strategy.name=multikrum", "strategy.f=1"),
            "fltrust": ("strategy.name=fltrust",),
        },
        sweep_clients=(),
        peers=(),
        quick_variants=("median",),
    ),
}
