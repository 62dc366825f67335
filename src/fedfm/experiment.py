"""Running an experiment: build the pieces from a config, run the Federation, write the run directory.

The run directory (``runs/<name>/``) is a contract later tools rely on::

    config.toml      the resolved config (``fedfm run --resume`` reads it back)
    partition.json   per client: rows, label histogram (and group for natural splits)
    metrics.jsonl    one JSON object per round
    summary.json     the final figures
    checkpoints/     the last rounds' global and strategy state (safetensors)
    adapter/         peft adapter + head.safetensors (lora, prompt, adapter); model/ for head, full;
                     causal_lm: the peft adapter and the tokenizer
    report.html      one self-contained page with the config, per-round table and plots
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedfm.client.app import ClientApp, ClientData
from fedfm.client.trainer import Trainer
from fedfm.codecs import Pipeline
from fedfm.config import ExperimentConfig, config_to_toml, load_config, resolve_path
from fedfm.data.instructions import (
    Instructions,
    labelled_as_instructions,
    load_instructions,
    tokenize_instructions,
)
from fedfm.data.partition import Partition, partition
from fedfm.data.table import LabelledText, load_labelled_text
from fedfm.data.tokens import TokenizedText, tokenize
from fedfm.errors import ConfigError, DataError, ResumeError
from fedfm.methods import METHODS
from fedfm.metrics.memory import peak_rss_mb
from fedfm.metrics.sinks import ConsoleSink, JsonlSink, Sink
from fedfm.registry import spec_name
from fedfm.runtimes import RUNTIMES
from fedfm.server.asynchronous import AsyncFederation
from fedfm.server.checkpoint import latest_checkpoint
from fedfm.server.federation import Federation
from fedfm.state import State, clone_state
from fedfm.strategies import STRATEGIES
from fedfm.tasks.causal_lm import CausalLMTask
from fedfm.tasks.classification import ClassificationTask
from fedfm.tasks.models import load_causal_lm, load_encoder, tokenizer_key

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What :func:`run` returns: the figures of ``summary.json`` and the per-round rows."""

    run_dir: Path
    summary: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final_accuracy(self) -> float:
        return self.summary["final_accuracy"]


@dataclass
class Prepared:
    """Everything built from a config before the first round."""

    config: ExperimentConfig
    train: LabelledText | Instructions  # Instructions for task.type = "causal_lm"
    test: LabelledText | Instructions
    train_tokens: TokenizedText  # PromptedTokens for causal_lm
    test_tokens: TokenizedText
    partition: Partition
    task: ClassificationTask | CausalLMTask
    eval_rows: np.ndarray
    startup_seconds: float
    model_loaded_at: float = 0.0  # wall-clock time.time() when the base model was in memory
    attack: Any = None  # an Attack, when [attack] type is set
    malicious: list[str] = field(default_factory=list)
    poisoned: dict[str, ClientData] = field(default_factory=dict)  # data attacks: client → rows
    triggered: tuple[TokenizedText, np.ndarray] | None = None  # backdoor: test rows with trigger
    fm4fl: dict[str, Any] = field(default_factory=dict)  # scarce-label and warm-up reports
    all_rows: Partition | None = None  # scarce labels: every row the clients hold
    labelled_rows: list[np.ndarray] | None = None  # scarce labels: the rows with a true label


def _unique_run_dir(out: Path, name: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path, i = out / name, 1
    while path.exists():
        i += 1
        path = out / f"{name}-{i}"
    path.mkdir()
    return path


def _check_labels(train: LabelledText) -> None:
    counts = np.bincount(train.labels, minlength=len(train.label_names))
    empty = [train.label_names[i] for i, c in enumerate(counts) if c == 0]
    if empty:
        raise DataError(
            f"data.labels names the class {empty[0]!r}, which has no training rows; "
            f"classes with rows: {[n for n, c in zip(train.label_names, counts, strict=True) if c]}"
        )
    if len(train.label_names) < 2:
        raise DataError(
            f"the training data have a single class {train.label_names!r}; at least 2 are needed"
        )


def _check_supported(config: ExperimentConfig) -> None:
    """Refuse settings that cannot keep their promise, before anything is loaded or written."""
    from fedfm.privacy.federated import check_compatible

    check_compatible(config)
    if config.runtime.type == "grpc":
        raise ConfigError(
            "runtime.type = 'grpc' runs over the network: start `fedfm serve CONFIG.toml` and "
            "`fedfm join HOST:PORT --token ... --data ...` on each client (see docs/network.md)"
        )


def prepare(config: ExperimentConfig) -> Prepared:
    """Load data and model, tokenise (cached), partition, and build the task."""
    t0 = time.perf_counter()
    _check_supported(config)
    d = config.data
    causal_lm = config.task.type == "causal_lm"
    if causal_lm:
        train, test = _load_instructions(config)
    else:
        train, test = load_labelled(config)
    part = split(config, train)
    method = METHODS.of(config.method)(config.method)
    if causal_lm:
        tokenizer, model = load_causal_lm(config.model.name, config.federation.precision)
        model_loaded_at = time.time()
        key = tokenizer_key(config.model.name, tokenizer)
        train_tokens = tokenize_instructions(train, tokenizer, key, d.max_length)
        test_tokens = tokenize_instructions(test, tokenizer, key, d.max_length)
        task = CausalLMTask(
            tokenizer,
            model,
            method,
            config.seed,
            config.federation.precision,
            config.task.max_new_tokens,
        )
    else:
        m = config.model
        tokenizer, encoder = load_encoder(m.name, m.init, m.layers, config.seed)
        model_loaded_at = time.time()
        key = tokenizer_key(config.model.name, tokenizer)
        train_tokens = tokenize(train.texts, tokenizer, key, d.max_length)
        test_tokens = tokenize(test.texts, tokenizer, key, d.max_length)
        task = ClassificationTask(
            tokenizer,
            encoder,
            method,
            len(train.label_names),
            config.seed,
            config.federation.precision,
        )
    n_eval = len(test) if d.eval_rows == 0 else min(d.eval_rows, len(test))
    eval_rows = np.arange(n_eval)  # the first rows of the test set, the same for every system
    prepared = Prepared(
        config,
        train,
        test,
        train_tokens,
        test_tokens,
        part,
        task,
        eval_rows,
        time.perf_counter() - t0,
        model_loaded_at=model_loaded_at,
    )
    if d.labelled_fraction < 1:
        from fedfm.fm4fl.pseudo import apply_scarce_labels

        prepared.fm4fl["scarce_labels"] = apply_scarce_labels(prepared)
    if config.warmup.source != "none":
        from fedfm.fm4fl.warmup import warm_up

        prepared.fm4fl["warmup"] = warm_up(prepared, tokenizer, key)
    if config.attack.type != "none":
        _prepare_attack(prepared, tokenizer, key)
    return prepared


def load_labelled(config: ExperimentConfig) -> tuple[LabelledText, LabelledText]:
    """The classification data of ``config``: (train, test), checked, test in train's labels."""
    d = config.data
    train = load_labelled_text(
        resolve_path(d.train),
        d.text_column,
        d.label_column,
        d.labels or None,
        d.train_rows,
        "data.train",
    )
    _check_labels(train)
    test = load_labelled_text(
        resolve_path(d.test),
        d.text_column,
        d.label_column,
        train.label_names,
        d.test_rows,
        "data.test",
    )
    return train, test


def split(config: ExperimentConfig, train: LabelledText | Instructions) -> Partition:
    """The clients' rows: ``[partition]``, or one pooled client for centralized training."""
    if config.federation.mode == "centralized":
        return Partition(
            ["pooled"], [np.arange(len(train))], notes=["centralized: all rows pooled"]
        )
    return partition(train.labels, train.columns, config.partition, config.seed)


def _load_instructions(config: ExperimentConfig) -> tuple[Instructions, Instructions]:
    """causal_lm data: instruction JSONL files, or labelled tables turned into instructions
    with ``task.instruction``."""
    d, instruction = config.data, config.task.instruction
    if not instruction:
        return (
            load_instructions(resolve_path(d.train), d.train_rows, d.label_column, "data.train"),
            load_instructions(resolve_path(d.test), d.test_rows, d.label_column, "data.test"),
        )
    train, test = load_labelled(config)
    return labelled_as_instructions(train, instruction), labelled_as_instructions(test, instruction)


def _prepare_attack(p: Prepared, tokenizer, key: str) -> None:
    """Choose the malicious clients; poison their data (data attacks); build the backdoor test."""
    from fedfm.attacks import ATTACKS, malicious_clients

    c = p.config
    p.attack = ATTACKS.get(c.attack.type)(c.attack, p.train.label_names)
    p.malicious = malicious_clients(p.partition.client_ids, c.attack.fraction, c.seed)
    for cid in p.malicious if p.attack.level == "data" else ():
        index = p.partition.client_ids.index(cid)
        rows = p.partition.indices[index]
        rng = np.random.default_rng([c.seed, 0xDA7A, index])
        texts, labels = p.attack.poison_data(
            [p.train.texts[i] for i in rows], p.train.labels[rows], rng
        )
        tokens = tokenize(texts, tokenizer, key, c.data.max_length)
        p.poisoned[cid] = ClientData(tokens, labels, np.arange(len(texts)))
    if c.attack.type == "backdoor":
        n_eval = len(p.eval_rows)
        texts, labels = p.attack.triggered_test(
            p.test.texts[:n_eval], p.test.labels[:n_eval], c.seed
        )
        p.triggered = (tokenize(texts, tokenizer, key, c.data.max_length), labels)


def _evaluator(p: Prepared, rows: np.ndarray | None):
    def evaluate(state: State) -> dict[str, float]:
        p.task.set_state(state)
        metrics = p.task.evaluate(p.test_tokens, p.test.labels, rows)
        if p.triggered is not None:  # backdoor: share of triggered rows classified as the target
            tokens, labels = p.triggered
            target = np.full(len(labels), p.attack.target, dtype=labels.dtype)
            metrics["attack_success_rate"] = p.task.evaluate(tokens, target)["accuracy"]
        return metrics

    return evaluate


def client_app(p: Prepared, client_ids: Sequence[str], federation=None) -> tuple[ClientApp, Any]:
    """The clients' side of an experiment: their rows, the trainer (with local DP), the codec
    pipelines and the client hooks (rank truncation, update attacks, distributed DP noise).

    Returns the app and the local-DP object (None without ``dp = 'local'``). Runtimes that run
    clients elsewhere (Ray actors) call this on their own :func:`prepare` of the same config.
    """
    c = p.config
    fed_cfg = federation or c.federation
    data = {
        cid: ClientData(
            p.train_tokens, p.train.labels, p.partition.indices[p.partition.client_ids.index(cid)]
        )
        for cid in client_ids
    }
    data.update({cid: d for cid, d in p.poisoned.items() if cid in data})
    local_dp = None
    if c.privacy.dp == "local":
        from fedfm.privacy.local import LocalDP

        local_dp = LocalDP.for_clients(c.privacy, fed_cfg, data)
    down, up = Pipeline(c.codec.down, "codec.down"), Pipeline(c.codec.up, "codec.up")
    f = c.federation
    trainer = Trainer(p.task, f.optimizer, f.weight_decay, c.seed, f.length_grouping, local_dp)
    app = ClientApp(trainer, data, down, up, p.task.get_state())
    if getattr(c.method, "client_ranks", ()):  # LoRA: weaker clients train a lower rank
        from fedfm.methods.lora import client_rank_truncation

        app.prepare.append(client_rank_truncation(c.method, p.partition.client_ids))
    if p.attack is not None and p.attack.level == "update" and p.malicious:
        app.transforms.append(_update_attack(p, list(client_ids)))
    if c.privacy.dp == "distributed":  # after the attack: a malicious client still clips
        from fedfm.privacy.federated import client_transform

        index = {cid: i for i, cid in enumerate(client_ids)}
        app.transforms.append(client_transform(c, index, len(index), p.task.num_params()[0]))
    return app, local_dp


def _federation(
    p: Prepared, client_ids: Sequence[str], clients_per_round: int, local_steps: int, sinks, run_dir
):
    c = p.config
    fed_cfg = replace(c.federation, local_steps=local_steps)
    strategy = STRATEGIES.of(c.strategy)(c.strategy, fed_cfg)
    app, local_dp = client_app(p, client_ids, fed_cfg)
    if c.privacy.dp != "none" or c.secagg.enabled:
        from fedfm.privacy.federated import ProtectedAggregation

        strategy = ProtectedAggregation(strategy, c, len(client_ids), local_dp)
    if hasattr(strategy, "root_update"):  # FLTrust: the server trains on a small clean root set
        root_rng = np.random.default_rng([c.seed, 0x2007])
        root_rows = np.sort(
            root_rng.choice(
                len(p.train), size=min(c.strategy.root_rows, len(p.train)), replace=False
            )
        )
        root = ClientData(p.train_tokens, p.train.labels, root_rows)

        def root_update(rnd: int, global_state: State) -> State:
            instructions = strategy.configure_fit(rnd, "server")
            return app.trainer.fit(
                "server", len(client_ids), global_state, root, instructions
            ).state

        strategy.root_update = root_update
    if c.warmup.ensemble_steps:  # FedDF: distil the round's client ensemble into the aggregate
        from fedfm.fm4fl.ensemble import wrap

        if getattr(strategy, "asynchronous", False):
            raise ConfigError(
                "warmup.ensemble_steps > 0 needs a synchronous strategy; fedbuff aggregates "
                "buffered updates of different rounds"
            )
        strategy = wrap(strategy, app.trainer, c)
    runtime = RUNTIMES.get(c.runtime.type)(app, config=c)
    federation = AsyncFederation if getattr(strategy, "asynchronous", False) else Federation
    return federation(
        strategy=strategy,
        runtime=runtime,
        client_ids=client_ids,
        clients_per_round=clients_per_round,
        rounds=c.federation.rounds,
        evaluate=_evaluator(p, p.eval_rows),
        eval_every=c.federation.eval_every,
        down=app.down,
        up=app.up,
        seed=c.seed,
        sinks=sinks,
        run_dir=run_dir,
        name=c.name,
        dropout=c.federation.dropout,
    )


def _update_attack(p: Prepared, client_ids: list[str]):
    """A ClientApp transform: malicious clients replace their trained state (update attacks)."""
    from fedfm.client.trainer import derive_seed

    malicious = set(p.malicious)

    def transform(client_id: str, rnd: int, trained: State, received: State) -> State:
        if client_id not in malicious:
            return trained
        generator = torch.Generator().manual_seed(
            derive_seed(p.config.seed, rnd, client_ids.index(client_id), 0xA77)
        )
        return p.attack.poison_update(trained, received, generator)

    return transform


def _read_rows(path: Path, up_to: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["round"] <= up_to]


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def resolve_config(
    config: ExperimentConfig | str | Path | None,
    resume: str | Path | None,
    overrides: Sequence[str] = (),
):
    """The config to run and, when resuming, the run directory's own config and last checkpoint
    (None if it has none yet)."""
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.toml").is_file():
            raise ResumeError(f"{str(run_dir)!r} is not a run directory: it has no config.toml")
        return load_config(run_dir / "config.toml", overrides), latest_checkpoint(run_dir)
    if not isinstance(config, ExperimentConfig):
        return load_config(config, overrides), None
    if overrides:
        raise ValueError("overrides apply to a config file, not to an ExperimentConfig object")
    return config, None


def run(
    config: ExperimentConfig | str | Path | None = None,
    *,
    out: str | Path = "runs",
    resume: str | Path | None = None,
    overrides: Sequence[str] = (),
    progress: bool = False,
    sinks: Sequence[Sink] = (),
) -> RunResult:
    """Run an experiment and write its run directory; returns the final figures.

    ``config`` is an :class:`ExperimentConfig`, a TOML path, or None for the built-in default.
    ``resume`` continues an interrupted run directory from its last checkpoint.
    """
    config, ckpt = resolve_config(config, resume, overrides)
    start_round = ckpt.round + 1 if ckpt is not None else 1
    if resume is not None:
        run_dir = Path(resume)
        if config.federation.mode == "standalone":
            raise ResumeError(
                "federation.mode = 'standalone' runs cannot be resumed; start them again"
            )

    torch.set_num_threads(config.runtime.threads or os.cpu_count() or 1)
    # Data and model errors surface before anything is written.
    p = prepare(config)
    if resume is None:
        run_dir = _unique_run_dir(Path(out), config.name)
        (run_dir / "config.toml").write_text(config_to_toml(config))
    log.info("run directory: %s", run_dir)
    _write_json(
        run_dir / "partition.json", p.partition.describe(p.train.labels, p.train.label_names)
    )
    if p.fm4fl:
        _write_json(run_dir / "fm4fl.json", p.fm4fl)

    all_sinks: list[Sink] = [ConsoleSink(enabled=progress), *sinks]
    rows = _read_rows(run_dir / "metrics.jsonl", start_round - 1)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        if config.federation.mode == "standalone":
            result = _run_standalone(p, run_dir, all_sinks)
        else:
            result = _run_federated(p, run_dir, all_sinks, ckpt, start_round, rows)
    finally:
        for sink in all_sinks:
            sink.close()
    return result


def _summary_base(p: Prepared, run_dir: Path) -> dict[str, Any]:
    c = p.config
    trainable, total = p.task.num_params()
    return {
        "name": c.name,
        "mode": c.federation.mode,
        "method": spec_name(c.method),
        "strategy": spec_name(c.strategy),
        "clients": len(p.partition.client_ids),
        "trainable_params": trainable,
        "total_params": total,
        "startup_seconds": round(p.startup_seconds, 3),
        **({"fm4fl": p.fm4fl} if p.fm4fl else {}),
        "run_dir": str(run_dir),
    }


def _finish(
    p: Prepared, run_dir: Path, rows: list[dict[str, Any]], summary: dict[str, Any], sinks
) -> RunResult:
    from fedfm.metrics.report import write_report

    summary["peak_rss_mb"] = round(peak_rss_mb(), 1)
    _write_json(run_dir / "summary.json", summary)
    write_report(run_dir, (run_dir / "config.toml").read_text(), rows, summary)
    for sink in sinks:
        sink.end(summary)
    return RunResult(run_dir, summary, rows)


def _run_federated(p: Prepared, run_dir: Path, sinks, ckpt, start_round: int, rows) -> RunResult:
    c = p.config
    centralized = c.federation.mode == "centralized"
    if centralized:
        # Same budget on pooled data: one client doing every selected client's steps.
        fed = _federation(
            p,
            ["pooled"],
            1,
            c.federation.local_steps * c.federation.clients_per_round,
            sinks,
            run_dir,
        )
    else:
        fed = _federation(
            p,
            p.partition.client_ids,
            c.federation.clients_per_round,
            c.federation.local_steps,
            sinks,
            run_dir,
        )
    return drive(p, fed, run_dir, sinks, ckpt, start_round, rows)


def drive(
    p: Prepared, fed: Federation, run_dir: Path, sinks, ckpt, start_round: int, rows
) -> RunResult:
    """Run a built Federation (restored from ``ckpt`` if given), score, export, summarise."""
    c = p.config
    centralized = c.federation.mode == "centralized"
    fed.sinks.insert(0, JsonlSink(run_dir / "metrics.jsonl"))
    fed.start_info["model_loaded_at"] = p.model_loaded_at
    state = p.task.get_state()
    if ckpt is not None:
        from fedfm.codecs.wire import validate_state

        state = validate_state(ckpt.state, state)
        fed.strategy.load_state_dict(ckpt.strategy)
        fed.load_memory_state(ckpt.memory, state)
        fed.totals.update(ckpt.progress)
    fed.rows = list(rows)
    try:
        state = fed.run(state, start_round)
    finally:
        fed.runtime.close()
    if centralized:  # nothing is exchanged when the data are pooled
        for row in fed.rows:
            row["bytes_up"] = row["bytes_down"] = 0
        fed.totals["bytes_up"] = fed.totals["bytes_down"] = 0

    p.task.set_state(state)
    test_rows = None  # the whole (possibly data.test_rows-limited) test set
    final = p.task.evaluate(p.test_tokens, p.test.labels, test_rows)
    export_dir = run_dir / ("adapter" if p.task.method.is_peft else "model")
    p.task.export(export_dir, p.train.label_names)
    summary = {
        **_summary_base(p, run_dir),
        "final_accuracy": final["accuracy"],
        "final_loss": final["loss"],
        **({"final_perplexity": final["perplexity"]} if "perplexity" in final else {}),
        "test_rows": len(p.test),
        "rounds": c.federation.rounds,
        "total_seconds": round(fed.totals["seconds"], 3),
        "bytes_up_total": fed.totals["bytes_up"],
        "bytes_down_total": fed.totals["bytes_down"],
        "rejected_updates": len(fed.rejected),
        **_privacy_summary(p, fed),
        **({"attack": p.config.attack.type, "malicious_clients": p.malicious} if p.attack else {}),
        **(
            {"final_attack_success_rate": fed.rows[-1].get("attack_success_rate")}
            if p.triggered
            else {}
        ),
        "export_dir": str(export_dir),
    }
    return _finish(p, run_dir, fed.rows, summary, sinks)


def _privacy_summary(p: Prepared, fed: Federation) -> dict[str, Any]:
    """ε and δ of a DP run; the membership-inference AUC when the audit is on."""
    from fedfm.privacy.federated import ProtectedAggregation, noise_summary

    out: dict[str, Any] = {}
    if isinstance(fed.strategy, ProtectedAggregation):
        out.update(noise_summary(fed.strategy))
    if p.config.privacy.audit:
        from fedfm.privacy.audit import membership_auc

        out["mia_auc"] = membership_auc(p, p.config.privacy.audit_rows, p.config.seed)
    return out


def _run_standalone(p: Prepared, run_dir: Path, sinks) -> RunResult:
    """Each client trains alone for the whole budget; rows report the mean and worst client."""
    c = p.config
    initial = p.task.get_state()
    per_client: list[list[dict[str, Any]]] = []
    finals: list[dict[str, float]] = []
    total_seconds = 0.0
    for cid in p.partition.client_ids:
        log.info("standalone: training client %s alone", cid)
        fed = _federation(
            p,
            [cid],
            1,
            c.federation.local_steps,
            [s for s in sinks if isinstance(s, ConsoleSink)],
            None,
        )
        fed.name = f"{c.name} [{cid}]"
        state = fed.run(clone_state(initial))
        per_client.append(fed.rows)
        total_seconds += fed.totals["seconds"]
        p.task.set_state(state)
        finals.append({"client": cid, **p.task.evaluate(p.test_tokens, p.test.labels)})
        for sink in sinks:
            sink.close()
    rows = []
    jsonl = JsonlSink(run_dir / "metrics.jsonl")
    for r in range(c.federation.rounds):
        client_rows = [rs[r] for rs in per_client]
        accs = [x["accuracy"] for x in client_rows if x["accuracy"] is not None]
        row = {
            "round": r + 1,
            "accuracy": float(np.mean(accs)) if accs else None,
            "accuracy_worst": float(np.min(accs)) if accs else None,
            "loss": float(np.mean([x["loss"] for x in client_rows])),
            "bytes_up": 0,
            "bytes_down": 0,
            "round_seconds": float(sum(x["round_seconds"] for x in client_rows)),
            "peak_rss_mb": max(x["peak_rss_mb"] for x in client_rows),
            "clients": [x["clients"][0] for x in client_rows if x["clients"]],
        }
        rows.append(row)
        jsonl.round(row)
    accs = [f["accuracy"] for f in finals]
    summary = {
        **_summary_base(p, run_dir),
        "final_accuracy": float(np.mean(accs)),
        "final_accuracy_worst": float(np.min(accs)),
        "final_accuracy_per_client": {f["client"]: f["accuracy"] for f in finals},
        "test_rows": len(p.test),
        "rounds": c.federation.rounds,
        "total_seconds": round(total_seconds, 3),
        "bytes_up_total": 0,
        "bytes_down_total": 0,
    }
    return _finish(p, run_dir, rows, summary, sinks)
