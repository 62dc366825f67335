"""The sections of an experiment whose keys are fixed: what is learned, from which data, over
how many clients and rounds, where the clients run and how their messages are coded.

Each is a frozen dataclass that checks its own values in ``__post_init__``; rules that span
sections live in :mod:`fedfm.config.experiment`.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import Any

from fedfm.config.checks import check, check_choice, registry


@dataclass(frozen=True)
class TaskConfig:
    """What is learned: ``classification`` of text; ``causal_lm`` instruction tuning of a
    generative model (data: instruction JSONL, or a labelled table with ``instruction``; see
    :mod:`fedfm.data.instructions`), scored by exact match and perplexity; ``lm`` pre-training
    of a language model on unlabelled text (``data.text_column``, packed into blocks of
    ``data.max_length`` tokens), scored by held-out perplexity."""

    type: str = "classification"  # the task: what the model learns and how it is scored
    # causal_lm, labelled table as data: the question put before each row's text; the label answers
    instruction: str = ""
    max_new_tokens: int = 8  # causal_lm: greedy answer length for exact-match scoring

    def __post_init__(self) -> None:
        check_choice("task.type", self.type, registry("task").names())
        check(
            1 <= self.max_new_tokens <= 512, "task.max_new_tokens", self.max_new_tokens, "1 … 512"
        )
        check(
            self.type == "causal_lm" or not self.instruction,
            "task.instruction",
            self.instruction,
            "'' unless task.type = 'causal_lm'",
        )


@dataclass(frozen=True)
class ModelConfig:
    """The foundation model: ``minilm`` (packaged all-MiniLM-L6-v2), a local folder or an HF id.

    ``init = "scratch"`` keeps the architecture but draws fresh random weights (seeded), the
    baseline that shows what the FM's pre-training buys; ``layers = N`` keeps only the first N
    transformer layers of an encoder (a smaller student for distillation). For ``task.type =
    "lm"`` (default model ``smollm2``) a scratch model takes the model's tokenizer and a
    SmolLM2-shaped decoder of ``layers`` layers of width ``hidden_size`` (0 = the model's own)."""

    name: str = "minilm"  # "minilm", "smollm2", a local folder or .gguf file, or an HF id
    init: str = "pretrained"  # pretrained | scratch
    layers: int = 0  # encoder: keep the first N layers; lm scratch: N layers; 0 = the model's
    hidden_size: int = 0  # lm scratch: the width (a multiple of 64); 0 = the model's own

    def __post_init__(self) -> None:
        check(bool(self.name.strip()), "model.name", self.name, "a non-empty name or path")
        check_choice("model.init", self.init, ["pretrained", "scratch"])
        check(self.layers >= 0, "model.layers", self.layers, "0 (all) or a number of layers ≥ 1")
        check(
            self.hidden_size >= 0,
            "model.hidden_size",
            self.hidden_size,
            "0 (the model's own) or a width ≥ 64, a multiple of 64",
        )


@dataclass(frozen=True)
class DataConfig:
    """Where the data are and which columns hold text and label."""

    train: str = "${FEDFM_DATA}/agnews/train.tsv"  # training table: CSV, TSV, JSONL or Parquet
    # "" = no test file: hold out test_fraction of the training rows (seeded) as the test set
    test: str = "${FEDFM_DATA}/agnews/test.tsv"
    test_fraction: float = 0.2  # share of the training rows held out when test = ""
    text_column: str = "text"  # the column of the input text
    label_column: str = "label"  # the column of the label (classification)
    labels: tuple[str, ...] = ()  # fixes the label order; default: sorted labels of train
    max_length: int = 64  # tokens per example after truncation; task 'lm': tokens per block
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
        check(0 < self.test_fraction < 1, "data.test_fraction", self.test_fraction, "0 < f < 1")
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

    scheme: str = "dirichlet"  # how rows are dealt to clients: label skew, shards, sizes, a column
    clients: int = 10  # number of clients (column: 0 = one per group)
    alpha: float = 0.5  # dirichlet: concentration; small = strong label skew
    classes_per_client: int = 2  # shards
    sigma: float = 1.0  # quantity: log-normal sigma of client sizes
    column: str = ""  # column: the column whose values are the clients
    min_size: int = 10  # column: groups smaller than this are merged or dropped
    small_groups: str = "merge"  # column: "merge" tiny groups into one client, or "drop" them

    def __post_init__(self) -> None:
        check_choice("partition.scheme", self.scheme, registry("partition scheme").names())
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

    mode: str = "federated"  # federated | centralized | standalone | offsite ([offsite])
    rounds: int = 20  # federated rounds
    clients_per_round: int = 5  # clients selected (seeded) each round
    local_steps: int = 10  # optimizer steps each selected client takes per round
    local_epochs: float = 0.0  # > 0 replaces local_steps by epochs over the client's rows
    batch_size: int = 32  # examples per local step
    lr: float = 2e-3  # the clients' learning rate
    optimizer: str = "adamw"  # the clients' optimizer (its state stays on the client)
    weight_decay: float = 0.0  # decoupled weight decay (adamw) or L2 (adam, sgd)
    precision: str = "bf16"  # bf16 autocast on CPU, or fp32
    length_grouping: int = 8  # batches per length-sorted window (less padding); 1 = plain random
    eval_every: int = 1  # evaluate the global model every N rounds (and always after the last)
    dropout: float = (
        0.0  # share of the selected clients that drop out after selection (simulated faults)
    )

    def __post_init__(self) -> None:
        check_choice(
            "federation.mode", self.mode, ["federated", "centralized", "standalone", "offsite"]
        )
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

    type: str = "sim"  # the runtime: sim (in-process), ray, grpc (fedfm serve)
    threads: int = 0  # torch threads; 0 = all cores
    workers: int = 2  # ray: actors, each holding the frozen base once
    cpus_per_worker: float = 1.0  # ray: CPUs reserved per actor (also its torch threads)
    address: str = ""  # ray: cluster address (``ray start --head``); "" = a local instance

    def __post_init__(self) -> None:
        check_choice("runtime.type", self.type, registry("runtime").names())
        check(self.threads >= 0, "runtime.threads", self.threads, "≥ 0 (0 = all cores)")
        check(self.workers >= 1, "runtime.workers", self.workers, "≥ 1")
        check(self.cpus_per_worker > 0, "runtime.cpus_per_worker", self.cpus_per_worker, "> 0")


@dataclass(frozen=True)
class CodecConfig:
    """Codec pipelines for the downlink (server → client) and uplink (client → server)."""

    up: tuple[str, ...] = ()  # the uplink chain (client → server), applied in order
    down: tuple[str, ...] = ()  # the downlink chain (server → client), applied in order

    def __post_init__(self) -> None:
        codecs: Any = registry("codec")  # fedfm.codecs.base._CodecRegistry
        for direction in ("up", "down"):  # each item (name, argument) and their order
            codecs.check_chain(getattr(self, direction), f"codec.{direction}")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 maybe in brackets) is this machine only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    max_requests_per_address: float = 200.0  # per peer IP, checked before any session
    max_partial_mb: float = 1024.0  # all partial uploads together (memory and disk)
    max_streams: int = 16  # Upload/Download streams under way; Join and Poll keep their threads
    streams_per_address: int = 8  # of which from one peer IP
    stream_idle_seconds: float = 30.0  # a stream silent this long is cancelled (5 s before auth)
    stream_max_seconds: float = 900.0  # a stream older than this is cancelled
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
        for key in ("max_requests_per_address", "max_partial_mb", "stream_idle_seconds"):
            check(getattr(self, key) > 0, f"server.{key}", getattr(self, key), "> 0")
        check(
            self.stream_max_seconds >= self.stream_idle_seconds,
            "server.stream_max_seconds",
            self.stream_max_seconds,
            f"≥ server.stream_idle_seconds ({self.stream_idle_seconds:g})",
        )
        check(1 <= self.max_streams <= 1024, "server.max_streams", self.max_streams, "1 … 1024")
        check(
            1 <= self.streams_per_address <= self.max_streams,
            "server.streams_per_address",
            self.streams_per_address,
            f"1 … server.max_streams ({self.max_streams})",
        )
        check(
            self.tls or is_loopback(host),
            "server.tls",
            self.tls,
            f"true, as server.address = {self.address!r} is not loopback (without TLS anyone on "
            "the path reads and changes every update; `fedfm certs` makes certificates)",
        )


@dataclass(frozen=True)
class EvaluationConfig:
    """Where the global model is scored each round: on the server's test set (``server``), by
    the round's clients on their own held-out rows (``clients``; a server without a test set),
    or both. ``client_split`` is each client's held-out share of its rows (never trained on)."""

    where: str = "server"  # server | clients | both
    client_split: float = 0.0  # each client's held-out share of its rows (clients, both)

    def __post_init__(self) -> None:
        check_choice("evaluation.where", self.where, ["server", "clients", "both"])
        check(
            0 <= self.client_split < 1,
            "evaluation.client_split",
            self.client_split,
            "0 ≤ share < 1",
        )
        check(
            self.where == "server" or self.client_split > 0,
            "evaluation.client_split",
            self.client_split,
            f"> 0 when evaluation.where = {self.where!r} (the clients' held-out share)",
        )

    @property
    def on_server(self) -> bool:
        return self.where in ("server", "both")

    @property
    def on_clients(self) -> bool:
        return self.where in ("clients", "both")


@dataclass(frozen=True)
class PluginsConfig:
    """Modules of the user's own plug-ins, imported before the rest of the config is read
    (from the config file's folder, the current folder, or ``sys.path``)."""

    modules: tuple[str, ...] = ()  # modules to import: they register plug-ins by name
    # Folders searched first; the folder of the config file that named the modules is added,
    # so that a resumed run finds them again.
    paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoggingConfig:
    """Where the per-round metrics go besides the console, ``metrics.jsonl`` and the report:
    ``report_to`` names sinks of the ``sink`` registry, e.g. ``["tensorboard", "mlflow"]``
    (event files in ``<run_dir>/tensorboard``; an MLflow run in ``<run_dir>/mlruns``, or at
    ``$MLFLOW_TRACKING_URI`` when set). A plug-in module can register more."""

    report_to: tuple[str, ...] = ()  # sinks that get every round's metrics and the summary

    def __post_init__(self) -> None:
        sinks = registry("sink")
        for name in self.report_to:
            sinks.get(name)  # unknown: names the key, the value and the registered sinks
        check(
            len(set(self.report_to)) == len(self.report_to),
            "logging.report_to",
            self.report_to,
            "each sink once",
        )
