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


# What AG News's labels mean, for the zero-shot embedding teacher and the synthetic-data prompts.
AGNEWS_DESCRIPTIONS = (
    "data.descriptions=["
    '"World=World news: politics, war, elections and international affairs",'
    '"Sports=Sports news: games, teams, players and matches",'
    '"Business=Business news: companies, markets, stocks and the economy",'
    '"Sci/Tech=Science and technology news: computers, software, internet and research"]'
)
# An unlabelled public transfer set for distillation: AG News test rows 2,000–3,999, which no
# client holds and which lie outside the first 1,000 test rows that are scored.
AGNEWS_TRANSFER = (
    "warmup.source=transfer",
    "warmup.data=${FEDFM_DATA}/agnews/test.tsv",
    "warmup.offset=2000",
    "warmup.rows=2000",
    "warmup.steps=100",
)
EMBEDDING_TEACHER = ("teacher.type=embedding", AGNEWS_DESCRIPTIONS)


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
    target_accuracy: float | None = None  # rows report the first round that reaches it


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
            "int4+zlib": ("codec.up=['delta','int4:block=64','zlib']",),
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
            "ffa+int4": ("method.freeze_a=true", "codec.up=['delta','int4:block=64']"),
            "int4-b128+zlib": ("codec.up=['delta','int4:block=128','zlib']",),
            "int4-fp16s+zlib": ("codec.up=['delta','int4:block=64,scale=fp16','zlib']",),
        },
        sweep_clients=(),
        peers=(),
        quick_variants=("fp16",),
    ),
    # Naive (FedAvg of A and B) against exact LoRA aggregation (SVD of the mean product) under
    # the same non-IID split, over three seeds (seed changes the partition, init and batches).
    "agnews-lora-agg": Scenario(
        name="agnews-lora-agg",
        description="naive vs exact (lora_svd) LoRA aggregation, Dirichlet(0.5), seeds 0-2",
        overrides=tuple(AGNEWS_LORA),
        rounds=6,
        quick_rounds=2,
        quick_overrides=("federation.local_steps=5",),
        variants={
            "lora_svd": ("strategy.name=lora_svd",),
            "lora_svd-sqrt": ("strategy.name=lora_svd", "strategy.split=sqrt"),
            "fedavg-s1": ("seed=1",),
            "lora_svd-s1": ("strategy.name=lora_svd", "seed=1"),
            "fedavg-s2": ("seed=2",),
            "lora_svd-s2": ("strategy.name=lora_svd", "seed=2"),
        },
        sweep_clients=(),
        peers=(),
        quick_variants=("lora_svd",),
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
    # FM for FL, the FM as starting point: the same small model (MiniLM's first 2 layers, all
    # weights trained) from the FM's weights or from scratch, under label skew and IID.
    "fm4fl-init": Scenario(
        name="fm4fl-init",
        description="MiniLM-L2 full fine-tuning from the FM's weights vs from scratch, non-IID/IID",
        overrides=(
            *(o for o in AGNEWS_LORA if not o.startswith("method.")),
            "method.type=full",
            "model.layers=2",
            "federation.lr=2e-4",
        ),
        rounds=6,
        quick_rounds=2,
        quick_overrides=("federation.local_steps=5",),
        variants={
            "scratch": ("model.init=scratch",),
            "pretrained-iid": ("partition.scheme=iid",),
            "scratch-iid": ("model.init=scratch", "partition.scheme=iid"),
        },
        sweep_clients=(),
        peers=(),
        quick_variants=("scratch",),
        target_accuracy=0.7,
    ),
    # FM for FL, the FM as teacher: a zero-shot FM (MiniLM-L6 by label-description similarity)
    # distilled at the server into a smaller student (MiniLM's first 2 layers + LoRA) on an
    # unlabelled transfer set, white-box (soft labels) or black-box (its labels only); the
    # student is then federated.
    "fm4fl-kd": Scenario(
        name="fm4fl-kd",
        description="MiniLM-L2 student: FL alone vs after white-/black-box distillation of an FM",
        overrides=(*AGNEWS_LORA, "model.layers=2"),
        rounds=6,
        quick_rounds=2,
        quick_overrides=("federation.local_steps=5",),
        variants={
            "kd-white-box": (*EMBEDDING_TEACHER, *AGNEWS_TRANSFER),
            "kd-black-box": (*EMBEDDING_TEACHER, "teacher.access=black_box", *AGNEWS_TRANSFER),
            # FedDF: no FM teacher; the round's client ensemble is distilled on the transfer set
            "feddf": (
                "warmup.data=${FEDFM_DATA}/agnews/test.tsv",
                "warmup.offset=2000",
                "warmup.rows=1000",
                "warmup.ensemble_steps=20",
            ),
        },
        sweep_clients=(),
        peers=(),
        quick_variants=("kd-white-box",),
        target_accuracy=0.8,
    ),
    # FM for FL, the FM as data generator (GPT-FL): SmolLM2 writes 100 articles per label, they
    # are checked against the clients' rows (MinHash counts), filtered and balanced, the server
    # trains on them, then the clients fine-tune.
    "fm4fl-gptfl": Scenario(
        name="fm4fl-gptfl",
        description="GPT-FL: server warm-up on verified SmolLM2-generated articles, then FL",
        overrides=tuple(AGNEWS_LORA),
        rounds=6,
        quick_rounds=2,
        quick_overrides=("federation.local_steps=5", "synthetic.per_label=16"),
        variants={
            "gpt-fl": (
                AGNEWS_DESCRIPTIONS,
                "warmup.source=synthetic",
                "warmup.steps=100",
                "synthetic.per_label=100",
            ),
        },
        sweep_clients=(),
        peers=(),
        quick_variants=("gpt-fl",),
        target_accuracy=0.8,
    ),
    # Scarce labels: clients keep 5% of their labels; an FM adds confident pseudo-labels, or
    # warms the model up by distillation first.
    "fm4fl-scarce": Scenario(
        name="fm4fl-scarce",
        description="5% labelled rows: labelled only vs FM pseudo-labels vs distillation warm-up",
        overrides=(*AGNEWS_LORA, "data.labelled_fraction=0.05"),
        rounds=6,
        quick_rounds=2,
        quick_overrides=("federation.local_steps=5",),
        variants={
            "pseudo-labels": (*EMBEDDING_TEACHER, "teacher.pseudo_label_threshold=0.7"),
            "kd-warmup": (*EMBEDDING_TEACHER, *AGNEWS_TRANSFER),
            "kd+pseudo": (
                *EMBEDDING_TEACHER,
                *AGNEWS_TRANSFER,
                "teacher.pseudo_label_threshold=0.7",
            ),
        },
        sweep_clients=(),
        peers=(),
        quick_variants=("pseudo-labels",),
        target_accuracy=0.8,
    ),
}
