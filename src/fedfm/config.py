"""Experiment config: frozen dataclasses, loaded from TOML, validated once.

Every key has a default, so an empty file is the built-in default experiment (federated LoRA
fine-tuning of all-MiniLM-L6-v2 on AG News). Unknown keys, wrong types and values out of range
raise :class:`~fedfm.errors.ConfigError` naming ``section.key``, the value and what is allowed.

Sections whose keys depend on a plug-in (``[method]`` by ``type``, ``[strategy]`` by ``name``)
are parsed into the plug-in's own spec dataclass, found through its registry.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedfm.errors import ConfigError
from fedfm.registry import spec_name

DEFAULT_DATA_ROOT = "../shared/data"


def data_root() -> str:
    """Where ``${FEDFM_DATA}`` points: the environment variable, else ``../shared/data``."""
    return os.environ.get("FEDFM_DATA", DEFAULT_DATA_ROOT)


def resolve_path(path: str) -> Path:
    """Expand ``${FEDFM_DATA}``, ``~`` and other environment variables in a configured path."""
    env = dict(os.environ)
    env.setdefault("FEDFM_DATA", data_root())
    expanded = path.replace("${FEDFM_DATA}", env["FEDFM_DATA"]).replace(
        "$FEDFM_DATA", env["FEDFM_DATA"]
    )
    return Path(os.path.expanduser(os.path.expandvars(expanded)))


def check(condition: bool, key: str, value: Any, allowed: str) -> None:
    """Raise a ConfigError ``key = value is not allowed; allowed: …`` unless ``condition``."""
    if not condition:
        raise ConfigError(f"{key} = {value!r} is not allowed; allowed: {allowed}")


def check_choice(key: str, value: Any, choices: typing.Iterable[str]) -> None:
    choices = list(choices)
    check(value in choices, key, value, " | ".join(repr(c) for c in choices))


# --------------------------------------------------------------------------------------------
# Sections


@dataclass(frozen=True)
class TaskConfig:
    """What is learned: ``classification`` of text, or ``causal_lm`` instruction tuning of a
    generative model (data: instruction JSONL, or a labelled table with ``instruction``; see
    :mod:`fedfm.data.instructions`), scored by exact match and perplexity."""

    type: str = "classification"
    # causal_lm, labelled table as data: the question put before each row's text; the label answers
    instruction: str = ""
    max_new_tokens: int = 8  # causal_lm: greedy answer length for exact-match scoring

    def __post_init__(self) -> None:
        check_choice("task.type", self.type, ["classification", "causal_lm"])
        check(
            1 <= self.max_new_tokens <= 512, "task.max_new_tokens", self.max_new_tokens, "1 … 512"
        )
        check(
            self.type == "causal_lm" or not self.instruction,
            "task.instruction",
            self.instruction,
            "'' unless task.type = 'causal_lm'",
        )


# LoRA's default targets are BERT's attention names; Llama-style decoders call them these.
CAUSAL_LM_LORA_TARGETS = ("q_proj", "v_proj")


def _check_causal_lm(config: ExperimentConfig) -> None:
    """task.type = 'causal_lm': LoRA only (the default targets become q_proj, v_proj); no data
    attacks and no example-level DP, which assume labelled classification rows."""

    method = spec_name(config.method)
    check(method == "lora", "method.type", method, "'lora' with task.type = 'causal_lm'")
    if config.method.target_modules == type(config.method)().target_modules:
        object.__setattr__(
            config,
            "method",
            dataclasses.replace(config.method, target_modules=CAUSAL_LM_LORA_TARGETS),
        )
    check(
        config.attack.type not in ("label_flip", "backdoor"),
        "attack.type",
        config.attack.type,
        "an update attack ('none', 'sign_flip', 'scale', 'noise') with task.type = 'causal_lm'",
    )
    check(
        config.privacy.dp != "local",
        "privacy.dp",
        config.privacy.dp,
        "'none', 'central' or 'distributed' with task.type = 'causal_lm'",
    )


def _check_fm4fl(config: ExperimentConfig) -> None:
    """The FM-for-FL sections fit together: a teacher where one is needed, classification only."""
    fm4fl = (
        config.teacher.type != "none"
        or config.warmup.source != "none"
        or config.warmup.ensemble_steps
        or config.data.labelled_fraction < 1
        or config.model.init != "pretrained"
        or config.model.layers
    )
    if fm4fl:
        check(
            config.task.type == "classification",
            "task.type",
            config.task.type,
            "'classification' with [teacher], [warmup], data.labelled_fraction or model.init",
        )
    if config.warmup.ensemble_steps:
        check(
            config.privacy.dp == "none" and not config.secagg.enabled,
            "warmup.ensemble_steps",
            config.warmup.ensemble_steps,
            "0 with DP or secure aggregation (ensemble distillation reads each client's model)",
        )
    if config.warmup.source == "transfer":
        check(
            config.teacher.type != "none",
            "teacher.type",
            config.teacher.type,
            "a teacher to label the transfer set of warmup.source = 'transfer'",
        )
    if config.teacher.pseudo_label_threshold > 0:
        check(
            config.teacher.type != "none",
            "teacher.type",
            config.teacher.type,
            "a teacher for teacher.pseudo_label_threshold > 0",
        )
        check(
            config.data.labelled_fraction < 1,
            "teacher.pseudo_label_threshold",
            config.teacher.pseudo_label_threshold,
            "0 unless data.labelled_fraction < 1 (there are no unlabelled rows to pseudo-label)",
        )


@dataclass(frozen=True)
class ModelConfig:
    """The foundation model: ``minilm`` (packaged all-MiniLM-L6-v2), a local folder or an HF id.

    ``init = "scratch"`` keeps the architecture but draws fresh random weights (seeded), the
    baseline that shows what the FM's pre-training buys; ``layers = N`` keeps only the first N
    transformer layers of an encoder (a smaller student for distillation)."""

    name: str = "minilm"
    init: str = "pretrained"  # pretrained | scratch
    layers: int = 0  # encoder only: keep the first N transformer layers; 0 = all

    def __post_init__(self) -> None:
        check(bool(self.name.strip()), "model.name", self.name, "a non-empty name or path")
        check_choice("model.init", self.init, ["pretrained", "scratch"])
        check(self.layers >= 0, "model.layers", self.layers, "0 (all) or a number of layers ≥ 1")


@dataclass(frozen=True)
class DataConfig:
    """Where the data are and which columns hold text and label."""

    train: str = "${FEDFM_DATA}/agnews/train.tsv"
    test: str = "${FEDFM_DATA}/agnews/test.tsv"
    text_column: str = "text"
    label_column: str = "label"
    labels: tuple[str, ...] = ()  # fixes the label order; default: sorted labels of train
    max_length: int = 64  # tokens per example after truncation
    train_rows: int = 0  # use only the first N training rows (0 = all)
    test_rows: int = 0  # use only the first N test rows (0 = all) for the final evaluation
    eval_rows: int = 1000  # the first N test rows are scored after each round (0 = all)
    # scarce labels: the share of each client's rows that keep their label (the rest are
    # unlabelled: unused, or pseudo-labelled by the [teacher] above its threshold)
    labelled_fraction: float = 1.0
    # "LABEL=text" per label: what the label means, for the embedding teacher and the
    # synthetic-data prompts (a label without one stands for itself)
    descriptions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check(8 <= self.max_length <= 8192, "data.max_length", self.max_length, "8 … 8192")
        check(
            0 < self.labelled_fraction <= 1,
            "data.labelled_fraction",
            self.labelled_fraction,
            "0 < fraction ≤ 1",
        )
        for item in self.descriptions:
            check(
                "=" in item and item.split("=", 1)[0].strip() != "",
                "data.descriptions",
                item,
                "items of the form 'LABEL=description'",
            )
        for key in ("train_rows", "test_rows", "eval_rows"):
            value = getattr(self, key)
            check(value >= 0, f"data.{key}", value, "0 (all) or a positive number of rows")
        check(
            len(set(self.labels)) == len(self.labels), "data.labels", self.labels, "unique labels"
        )


@dataclass(frozen=True)
class PartitionConfig:
    """How the training rows are split over clients."""

    scheme: str = "dirichlet"
    clients: int = 10
    alpha: float = 0.5  # dirichlet: concentration; small = strong label skew
    classes_per_client: int = 2  # shards
    sigma: float = 1.0  # quantity: log-normal sigma of client sizes
    column: str = ""  # column: the column whose values are the clients
    min_size: int = 10  # column: groups smaller than this are merged or dropped
    small_groups: str = "merge"  # column: "merge" tiny groups into one client, or "drop" them

    def __post_init__(self) -> None:
        from fedfm.data.partition import PARTITIONERS

        check_choice("partition.scheme", self.scheme, PARTITIONERS.names())
        check(
            self.clients >= 0,
            "partition.clients",
            self.clients,
            "≥ 1 (0 = one per group for scheme 'column')",
        )
        if self.scheme != "column":
            check(self.clients >= 1, "partition.clients", self.clients, "≥ 1")
        check(self.alpha > 0 and math.isfinite(self.alpha), "partition.alpha", self.alpha, "> 0")
        check(
            self.classes_per_client >= 1,
            "partition.classes_per_client",
            self.classes_per_client,
            "≥ 1",
        )
        check(self.sigma >= 0, "partition.sigma", self.sigma, "≥ 0")
        check(self.min_size >= 1, "partition.min_size", self.min_size, "≥ 1")
        check_choice("partition.small_groups", self.small_groups, ["merge", "drop"])
        if self.scheme == "column":
            check(
                bool(self.column),
                "partition.column",
                self.column,
                "a column name when scheme = 'column'",
            )


@dataclass(frozen=True)
class FederationConfig:
    """The round loop's budget and the clients' local training."""

    mode: str = "federated"  # federated | centralized | standalone
    rounds: int = 20
    clients_per_round: int = 5
    local_steps: int = 10
    local_epochs: float = 0.0  # > 0 replaces local_steps by epochs over the client's rows
    batch_size: int = 32
    lr: float = 2e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    precision: str = "bf16"  # bf16 autocast on CPU, or fp32
    length_grouping: int = 8  # batches per length-sorted window (less padding); 1 = plain random
    eval_every: int = 1  # evaluate the global model every N rounds (and always after the last)
    dropout: float = (
        0.0  # share of the selected clients that drop out after selection (simulated faults)
    )

    def __post_init__(self) -> None:
        check_choice("federation.mode", self.mode, ["federated", "centralized", "standalone"])
        check(self.rounds >= 1, "federation.rounds", self.rounds, "≥ 1")
        check(
            self.clients_per_round >= 1,
            "federation.clients_per_round",
            self.clients_per_round,
            "≥ 1",
        )
        check(self.local_steps >= 1, "federation.local_steps", self.local_steps, "≥ 1")
        check(
            self.local_epochs >= 0,
            "federation.local_epochs",
            self.local_epochs,
            "≥ 0 (0 = use local_steps)",
        )
        check(self.batch_size >= 1, "federation.batch_size", self.batch_size, "≥ 1")
        check(0 < self.lr < 10 and math.isfinite(self.lr), "federation.lr", self.lr, "0 < lr < 10")
        check_choice("federation.optimizer", self.optimizer, ["adamw", "adam", "sgd"])
        check(self.weight_decay >= 0, "federation.weight_decay", self.weight_decay, "≥ 0")
        check_choice("federation.precision", self.precision, ["bf16", "fp32"])
        check(self.eval_every >= 1, "federation.eval_every", self.eval_every, "≥ 1")
        check(0 <= self.dropout < 1, "federation.dropout", self.dropout, "0 ≤ dropout < 1")
        check(
            self.length_grouping >= 1,
            "federation.length_grouping",
            self.length_grouping,
            "≥ 1 (1 = off)",
        )


@dataclass(frozen=True)
class RuntimeConfig:
    """Where clients run: ``sim`` (in-process, one shared frozen base), ``ray`` (Ray actors, each
    with one frozen base; local or a cluster) or ``grpc`` (network clients of ``fedfm serve``)."""

    type: str = "sim"
    threads: int = 0  # torch threads; 0 = all cores
    workers: int = 2  # ray: actors, each holding the frozen base once
    cpus_per_worker: float = 1.0  # ray: CPUs reserved per actor (also its torch threads)
    address: str = ""  # ray: cluster address (``ray start --head``); "" = a local instance

    def __post_init__(self) -> None:
        from fedfm.runtimes import RUNTIMES

        check_choice("runtime.type", self.type, RUNTIMES.names())
        check(self.threads >= 0, "runtime.threads", self.threads, "≥ 0 (0 = all cores)")
        check(self.workers >= 1, "runtime.workers", self.workers, "≥ 1")
        check(self.cpus_per_worker > 0, "runtime.cpus_per_worker", self.cpus_per_worker, "> 0")


@dataclass(frozen=True)
class CodecConfig:
    """Codec pipelines for the downlink (server → client) and uplink (client → server)."""

    up: tuple[str, ...] = ()
    down: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        from fedfm.codecs import Pipeline

        for direction in ("up", "down"):  # builds each chain once: checks items and their order
            Pipeline(getattr(self, direction), f"codec.{direction}")


@dataclass(frozen=True)
class PrivacyConfig:
    """Differential privacy and its accounting: client-level DP-FedAvg (``central``,
    ``distributed``) or example-level DP-SGD on each client (``local``, see
    :mod:`fedfm.privacy.local`; ``clip_norm`` is then the per-example gradient bound)."""

    dp: str = "none"  # none | central | distributed | local (example-level DP-SGD on each client)
    accountant: str = "rdp"  # rdp | prv (opacus)
    noise_multiplier: float = 0.0  # σ; 0 with target_epsilon > 0: calibrated to reach it
    target_epsilon: float = 0.0
    delta: float = 1e-5
    clip: str = "fixed"  # fixed | adaptive (quantile clipping, Andrew et al. 2021)
    clip_norm: float = 1.0  # the fixed norm, or the initial one for adaptive clipping
    target_quantile: float = 0.5  # adaptive: share of updates left unclipped
    clip_lr: float = 0.2  # adaptive: geometric learning rate of the clip norm
    audit: bool = False  # loss-threshold membership inference on the final model (AUC)
    audit_rows: int = 1000  # members (client training rows) and as many non-members (test rows)

    def __post_init__(self) -> None:
        check_choice("privacy.dp", self.dp, ["none", "central", "distributed", "local"])
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

    enabled: bool = False
    threshold: int = 0  # t: shares needed to recover a mask; 0 = a majority of the round's clients
    fraction_bits: int = 16  # fixed-point resolution 2^-bits
    modulus_bits: int = 32  # the ring Z_(2^bits)

    def __post_init__(self) -> None:
        check(self.threshold >= 0, "secagg.threshold", self.threshold, "≥ 0 (0 = majority)")
        check(4 <= self.fraction_bits <= 30, "secagg.fraction_bits", self.fraction_bits, "4 … 30")
        check(self.modulus_bits in (32, 64), "secagg.modulus_bits", self.modulus_bits, "32 or 64")


@dataclass(frozen=True)
class AttackConfig:
    """Malicious clients, for robustness experiments."""

    type: str = "none"  # none | sign_flip | scale | noise | label_flip | backdoor
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
            ["none", "sign_flip", "scale", "noise", "label_flip", "backdoor"],
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
class ServerConfig:
    """``fedfm serve``: the network server (gRPC). Ignored by in-process runtimes."""

    address: str = "127.0.0.1:8443"  # HOST:PORT to listen on (``--address`` overrides)
    tokens_file: str = ""  # one ``client_id token`` per line; the registry of allowed clients
    tls: bool = True  # TLS on by default; false only for loopback experiments
    certificate: str = ""  # server certificate (PEM); "" = <certs_dir>/server.pem
    private_key: str = ""  # its key (PEM); "" = <certs_dir>/server.key
    root_certificate: str = ""  # CA (PEM) that signed client certificates (mutual TLS)
    certs_dir: str = "certs"  # where ``fedfm certs`` wrote them
    mutual_tls: bool = False  # require client certificates whose common name is the client id
    min_clients: int = 0  # clients that must have joined before round 1; 0 = clients_per_round
    join_timeout: float = 600.0  # seconds to wait for min_clients
    round_timeout: float = 600.0  # seconds a round waits for updates; stragglers are dropped
    client_timeout: float = 30.0  # a client silent this long (no heartbeat) is lost for the round
    chunk_size: int = 1 << 20  # bytes per streamed chunk
    max_payload_mb: float = 4096.0  # largest accepted update
    max_requests_per_second: float = 50.0  # per client; excess calls are refused
    linger: float = 10.0  # seconds the server stays up after the last round to tell clients

    def __post_init__(self) -> None:
        host, sep, port = self.address.rpartition(":")
        check(
            bool(sep) and bool(host) and port.isdigit() and 0 <= int(port) < 65536,
            "server.address",
            self.address,
            "HOST:PORT, e.g. 127.0.0.1:8443 or 0.0.0.0:8443",
        )
        check(self.min_clients >= 0, "server.min_clients", self.min_clients, "≥ 0")
        for key in ("join_timeout", "round_timeout", "client_timeout"):
            check(getattr(self, key) > 0, f"server.{key}", getattr(self, key), "> 0 seconds")
        check(
            1024 <= self.chunk_size <= 64 << 20,
            "server.chunk_size",
            self.chunk_size,
            "1024 … 67108864 bytes",
        )
        check(self.max_payload_mb > 0, "server.max_payload_mb", self.max_payload_mb, "> 0")
        check(
            self.max_requests_per_second > 0,
            "server.max_requests_per_second",
            self.max_requests_per_second,
            "> 0",
        )
        check(self.linger >= 0, "server.linger", self.linger, "≥ 0 seconds")


def _method_spec_default() -> Any:
    from fedfm.methods import METHODS

    return METHODS.get("lora").Spec()


def _strategy_spec_default() -> Any:
    from fedfm.strategies import STRATEGIES

    return STRATEGIES.get("fedavg").Spec()


@dataclass(frozen=True)
class TeacherConfig:
    """A foundation model as teacher (FM for FL; see :mod:`fedfm.fm4fl.teacher`).

    ``embedding``: zero-shot by similarity between a text and each label's description
    (``data.descriptions``) under a sentence-embedding model (default ``minilm``).
    ``generative``: a chat LM (default ``smollm2``) asked ``instruction`` + the text; white-box
    reads the next-token logits of each label's answer word (``answers``), black-box parses the
    generated text. ``run``: a finished fedfm classification run directory (``model`` is its
    path). ``function``: ``model = "module:callable"``, a black-box ``list[str] -> list[str]``
    returning label names (e.g. a hosted API).
    ``access = "black_box"`` uses the predicted label only; ``white_box`` its probabilities.
    """

    type: str = "none"  # none | embedding | generative | run | function
    model: str = ""  # "" = minilm (embedding) / smollm2 (generative); run dir; module:callable
    access: str = "white_box"  # white_box | black_box
    instruction: str = ""  # generative: the question put before each text
    answers: tuple[str, ...] = ()  # generative: "LABEL=word" (default: the label's first word)
    calibrate: bool = True  # divide by the mean prediction over the texts (label-prior fix)
    temperature: float = 2.0  # distillation temperature for white-box soft targets
    pseudo_label_threshold: float = 0.0  # > 0: unlabelled client rows at ≥ this confidence
    max_length: int = 128  # tokens of text the teacher reads

    def __post_init__(self) -> None:
        check_choice(
            "teacher.type", self.type, ["none", "embedding", "generative", "run", "function"]
        )
        check_choice("teacher.access", self.access, ["white_box", "black_box"])
        check(
            self.type not in ("run", "function") or bool(self.model),
            "teacher.model",
            self.model,
            "a run directory (type 'run') or 'module:callable' (type 'function')",
        )
        check(
            self.type != "function" or ":" in self.model,
            "teacher.model",
            self.model,
            "'module:callable' for teacher.type = 'function'",
        )
        check(
            self.type != "function" or self.access == "black_box",
            "teacher.access",
            self.access,
            "'black_box' for teacher.type = 'function' (it returns labels only)",
        )
        check(self.temperature > 0, "teacher.temperature", self.temperature, "> 0")
        check(
            0 <= self.pseudo_label_threshold <= 1,
            "teacher.pseudo_label_threshold",
            self.pseudo_label_threshold,
            "0 (off) … 1",
        )
        check(8 <= self.max_length <= 8192, "teacher.max_length", self.max_length, "8 … 8192")
        for item in self.answers:
            check("=" in item, "teacher.answers", item, "items of the form 'LABEL=word'")


@dataclass(frozen=True)
class WarmupConfig:
    """Server-side training of the global model before round 1 (FM for FL).

    ``transfer``: an unlabelled public table (``data``), labelled by the [teacher] (white-box:
    distillation on its soft labels; black-box: its pseudo-labels). ``synthetic``: GPT-FL, a
    labelled set generated by a generative FM ([synthetic]) and verified against the clients'
    data before use."""

    source: str = "none"  # none | transfer | synthetic
    data: str = ""  # transfer: a table (TSV/CSV/JSONL) of unlabelled texts
    text_column: str = "text"
    offset: int = 0  # transfer: skip the first N rows (e.g. rows the clients hold)
    rows: int = 2000  # transfer: use at most N rows
    steps: int = 100
    batch_size: int = 32
    lr: float = 0.0  # 0 = federation.lr
    # > 0: after every round the server also distils the ensemble of that round's client models
    # (their mean tempered probabilities on the transfer table) into the aggregate for this many
    # steps (FedDF, Lin et al. 2020)
    ensemble_steps: int = 0

    def __post_init__(self) -> None:
        check_choice("warmup.source", self.source, ["none", "transfer", "synthetic"])
        check(self.ensemble_steps >= 0, "warmup.ensemble_steps", self.ensemble_steps, "≥ 0")
        check(
            self.ensemble_steps == 0 or bool(self.data),
            "warmup.data",
            self.data,
            "a table of texts for warmup.ensemble_steps > 0 (the transfer set)",
        )
        check(
            self.source != "transfer" or bool(self.data),
            "warmup.data",
            self.data,
            "a table of texts for warmup.source = 'transfer'",
        )
        check(self.offset >= 0, "warmup.offset", self.offset, "≥ 0")
        check(self.rows >= 1, "warmup.rows", self.rows, "≥ 1")
        check(self.steps >= 1, "warmup.steps", self.steps, "≥ 1")
        check(self.batch_size >= 1, "warmup.batch_size", self.batch_size, "≥ 1")
        check(self.lr >= 0, "warmup.lr", self.lr, "0 (federation.lr) or > 0")


@dataclass(frozen=True)
class SyntheticConfig:
    """GPT-FL synthetic data: label-conditioned prompts to a generative FM (see
    :mod:`fedfm.fm4fl.synthetic`), then verified (:mod:`fedfm.fm4fl.verify`)."""

    model: str = "smollm2"
    # a JSONL of {"text", "label"} rows generated elsewhere (e.g. by a larger FM behind an API):
    # used instead of generating, and verified the same way
    file: str = ""
    per_label: int = 100  # samples generated per label
    prompt: str = "Write one short news article about {description}."  # {label}, {description}
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 64
    batch_size: int = 16
    verify: bool = True  # near-duplicate check against client data, quality filters, balance
    near_duplicate: float = 0.5  # Jaccard similarity (MinHash estimate) that counts as a copy
    min_words: int = 8
    max_words: int = 200
    balance: bool = True  # drop surplus samples to match the clients' label distribution

    def __post_init__(self) -> None:
        check(1 <= self.per_label <= 100_000, "synthetic.per_label", self.per_label, "1 … 100000")
        import string

        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(self.prompt) if f is not None}
        except ValueError:
            fields = {"?"}
        check(
            bool(fields) and fields <= {"label", "description"},
            "synthetic.prompt",
            self.prompt,
            "a prompt with {label} and/or {description} and no other {fields} "
            "(write a literal brace as {{ or }})",
        )
        check(self.temperature > 0, "synthetic.temperature", self.temperature, "> 0")
        check(0 < self.top_p <= 1, "synthetic.top_p", self.top_p, "0 < top_p ≤ 1")
        check(
            1 <= self.max_new_tokens <= 1024,
            "synthetic.max_new_tokens",
            self.max_new_tokens,
            "1 … 1024",
        )
        check(self.batch_size >= 1, "synthetic.batch_size", self.batch_size, "≥ 1")
        check(
            0 < self.near_duplicate <= 1,
            "synthetic.near_duplicate",
            self.near_duplicate,
            "0 < Jaccard ≤ 1",
        )
        check(self.min_words >= 1, "synthetic.min_words", self.min_words, "≥ 1")
        check(
            self.max_words >= self.min_words,
            "synthetic.max_words",
            self.max_words,
            f"≥ synthetic.min_words ({self.min_words})",
        )


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment; ``ExperimentConfig()`` is the built-in default."""

    name: str = "agnews-lora"
    seed: int = 0
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    method: Any = field(default_factory=_method_spec_default)
    federation: FederationConfig = field(default_factory=FederationConfig)
    strategy: Any = field(default_factory=_strategy_spec_default)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self) -> None:
        check(
            bool(self.name) and "/" not in self.name,
            "name",
            self.name,
            "a non-empty name without '/'",
        )
        check(0 <= self.seed < 2**32, "seed", self.seed, "0 … 2**32 − 1")
        if self.task.type == "causal_lm":
            _check_causal_lm(self)
        _check_fm4fl(self)
        if self.federation.mode == "federated" and self.partition.clients:
            check(
                self.federation.clients_per_round <= self.partition.clients,
                "federation.clients_per_round",
                self.federation.clients_per_round,
                f"≤ partition.clients ({self.partition.clients})",
            )

    def replace(self, **changes: Any) -> ExperimentConfig:
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------------------------
# Parsing


_SECTIONS: dict[str, type] = {
    "task": TaskConfig,
    "model": ModelConfig,
    "data": DataConfig,
    "partition": PartitionConfig,
    "federation": FederationConfig,
    "runtime": RuntimeConfig,
    "codec": CodecConfig,
    "privacy": PrivacyConfig,
    "secagg": SecAggConfig,
    "attack": AttackConfig,
    "server": ServerConfig,
    "teacher": TeacherConfig,
    "warmup": WarmupConfig,
    "synthetic": SyntheticConfig,
}


def _type_name(tp: Any) -> str:
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    return "a list"


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        (item_tp, *_rest) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} = {value!r} has the wrong type; expected a list")
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            if option is type(None) and value is None:
                return None
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} = {value!r} has the wrong type")
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is bool and isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    raise ConfigError(f"{key} = {value!r} has the wrong type; expected {_type_name(tp)}")


def build_dataclass(
    cls: type, data: dict[str, Any], section: str, skip: tuple[str, ...] = ()
) -> Any:
    """Build the frozen dataclass ``cls`` from a TOML table, rejecting unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"[{section}] must be a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in skip]
    unknown = sorted(set(data) - set(names) - set(skip))
    if unknown:
        allowed = ", ".join(names) or "(no keys)"
        raise ConfigError(
            f"unknown key {section}.{unknown[0]}; allowed keys in [{section}]: {allowed}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in data.items() if k not in skip}
    return cls(**kwargs)


def _plugin_spec(
    registry_module: str, registry_name: str, key: str, default: str, data: Any, section: str
) -> Any:
    import importlib

    registry = getattr(importlib.import_module(registry_module), registry_name)
    if not isinstance(data, dict):
        raise ConfigError(f"[{section}] must be a table, got {data!r}")
    name = data.get(key, default)
    if not isinstance(name, str):
        raise ConfigError(f"{section}.{key} = {name!r} has the wrong type; expected a string")
    plugin = registry.get(name)
    return build_dataclass(plugin.Spec, data, section, skip=(key,))


def config_from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from a parsed TOML document."""
    top_keys = {"name", "seed", *(_SECTIONS), "method", "strategy"}
    unknown = sorted(set(data) - top_keys)
    if unknown:
        raise ConfigError(
            f"unknown key or section {unknown[0]!r}; allowed: name, seed, "
            + ", ".join(f"[{s}]" for s in [*_SECTIONS, "method", "strategy"])
        )
    kwargs: dict[str, Any] = {}
    if "name" in data:
        kwargs["name"] = _coerce(data["name"], str, "name")
    if "seed" in data:
        kwargs["seed"] = _coerce(data["seed"], int, "seed")
    for section, cls in _SECTIONS.items():
        if section in data:
            kwargs[section] = build_dataclass(cls, data[section], section)
    if "method" in data:
        kwargs["method"] = _plugin_spec(
            "fedfm.methods", "METHODS", "type", "lora", data["method"], "method"
        )
    if "strategy" in data:
        kwargs["strategy"] = _plugin_spec(
            "fedfm.strategies", "STRATEGIES", "name", "fedavg", data["strategy"], "strategy"
        )
    return ExperimentConfig(**kwargs)


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse one ``--set section.key=value``; the value is read as TOML, else as a plain string."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r} is not of the form section.key=value")
    dotted, raw = item.split("=", 1)
    path = [p.strip() for p in dotted.strip().split(".")]
    if not all(path):
        raise ConfigError(f"--set {item!r}: {dotted!r} is not a key such as federation.rounds")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return path, value


def apply_overrides(data: dict[str, Any], overrides: typing.Sequence[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to a parsed TOML document (a new dict is returned)."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return out


def parse_config_text(text: str, source: str = "config") -> ExperimentConfig:
    """Build a config from TOML text (e.g. the experiment a server sends to a joining client)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source} is not valid TOML: {e}") from None
    return config_from_dict(data)


def load_config(
    path: str | Path | None = None, overrides: typing.Sequence[str] = ()
) -> ExperimentConfig:
    """Load a TOML experiment config (``None`` = the built-in default) and apply ``--set`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {str(p)!r} is not valid TOML: {e}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"config file {str(p)!r} is not UTF-8 text") from None
    return config_from_dict(apply_overrides(data, overrides))


# --------------------------------------------------------------------------------------------
# Writing the resolved config


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def config_to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """The config as a plain dict of TOML tables, plug-in names included."""

    out: dict[str, Any] = {"name": config.name, "seed": config.seed}
    for section in _SECTIONS:
        out[section] = dataclasses.asdict(getattr(config, section))
    out["method"] = {
        "type": spec_name(config.method),
        **dataclasses.asdict(config.method),
    }
    out["strategy"] = {
        "name": spec_name(config.strategy),
        **dataclasses.asdict(config.strategy),
    }
    return out


def config_to_toml(config: ExperimentConfig) -> str:
    """The resolved config as TOML text that :func:`load_config` reads back to an equal config."""
    data = config_to_dict(config)
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, table in data.items():
        if isinstance(table, dict):
            lines.append(f"\n[{section}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
    return "\n".join(lines) + "\n"
