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


# The same task on SST-2 sentiment: 2 classes; the first 10,000 of its 60,614 training rows, scored
# on its 872 labelled test rows.
SST2_LORA = [
    *(o for o in AGNEWS_LORA if not o.startswith("name=")),
    "name=bench-sst2-lora",
    "data.train=${FEDFM_DATA}/sst2/train.tsv",
    "data.test=${FEDFM_DATA}/sst2/test.tsv",
    "data.text_column=sentence",
    "data.train_rows=10000",
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
        rounds=6,
        quick_rounds=2,
        quick_overrides=("federation.local_steps=5",),
        variants={
            "int8": ("codec.up=['delta','int8']",),
            "int4": ("codec.up=['delta','int4:block=64']",),
            "topk+int8": ("codec.up=['delta','topk:0.1','int8']",),
            "lora_svd": ("strategy.name=lora_svd",),
        },
        sweep_clients=(),
        peers=(),
        quick_variants=("int8", "topk+int8"),
    ),
    # More chains for the same comparison (fp16, top-k alone, ResFed residual, FFA-LoRA); run
    # with `fedfm bench agnews-codecs-more` when the machine has the time.
    "agnews-codecs-more": Scenario(
        name="agnews-codecs-more",
        description="fp16, top-k with error feedback, residual+int8 and FFA-LoRA uplinks",
        overrides=tuple(AGNEWS_LORA),
        rounds=6,
        quick_rounds=2,
        quick_overrides=("federation.local_steps=5",),
        variants={
            "fp16": ("codec.up=['fp16']",),
            "topk+EF": ("codec.up=['delta','topk:0.1']",),
            "residual+int8": ("codec.up=['residual','int8']",),
            "ffa-lora": ("method.freeze_a=true",),
        },
        sweep_clients=(),
        peers=(),
        quick_variants=("fp16",),
    ),
    # Methods: bytes per round as a share of the model against accuracy.
    "agnews-methods": Scenario(
        name="agnews-methods",
        description="LoRA vs soft prompt vs IA3 adapter vs head-only vs full fine-tuning",
        overrides=tuple(AGNEWS_LORA),
        rounds=6,
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
    # Trust, second half of the matrix: model replacement (scaled updates) and a backdoor.
    "agnews-attacks-scale": Scenario(
        name="agnews-attacks-scale",
        description="20% scaling (×4) attackers, and a 20% backdoor: FedAvg against robust rules",
        overrides=(*AGNEWS_LORA, "attack.type=scale", "attack.fraction=0.2", "attack.scale=4"),
        rounds=6,
        quick_rounds=2,
        quick_overrides=("federation.local_steps=5",),
        variants={
            "median": ("strategy.name=median",),
            "backdoor-fedavg": ("attack.type=backdoor",),
            "backdoor-median": ("attack.type=backdoor", "strategy.name=median"),
        },
        sweep_clients=(),
        peers=(),
        quick_variants=("median",),
    ),
    # Privacy: ε against accuracy for several noise levels (central client-level DP), example-level
    # DP-SGD, the membership-inference AUC of every variant, and secure aggregation's overhead
    # with 0 and 2 of 5 clients dropping out after selection.
    "agnews-privacy": Scenario(
        name="agnews-privacy",
        description="DP noise levels vs accuracy and MIA AUC; secure aggregation with 0/2 dropouts",
        overrides=(*AGNEWS_LORA, "privacy.audit=true"),
        rounds=6,
        quick_rounds=2,
        quick_overrides=("federation.local_steps=5",),
        variants={
            "central-σ0.7": ("privacy.dp=central", "privacy.noise_multiplier=0.7"),
            "central-σ1.5": ("privacy.dp=central", "privacy.noise_multiplier=1.5"),
            "local-σ1.0": ("privacy.dp=local", "privacy.noise_multiplier=1.0"),
            "secagg": ("secagg.enabled=true",),
            "secagg-2-drop": ("secagg.enabled=true", "federation.dropout=0.4"),
        },
        sweep_clients=(),
        peers=(),
        quick_variants=("central-σ0.7", "secagg"),
    ),
    # The communication scenario on a second data set: SST-2 sentiment (2 classes).
    "sst2-codecs": Scenario(
        name="sst2-codecs",
        description="SST-2: LoRA updates through int8, top-k+int8 and exact LoRA aggregation",
        overrides=tuple(SST2_LORA),
        rounds=6,
        quick_rounds=2,
        quick_overrides=("federation.local_steps=5",),
        variants={
            "int8": ("codec.up=['delta','int8']",),
            "topk+int8": ("codec.up=['delta','topk:0.1','int8']",),
            "lora_svd": ("strategy.name=lora_svd",),
            "prompt": ("method.type=prompt", "federation.lr=1e-2"),
        },
        sweep_clients=(),
        peers=(),
        quick_variants=("int8",),
    ),
}
