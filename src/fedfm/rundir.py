"""The run directory: what a run writes, and how a run is driven to it and resumed from it.

The run directory (``runs/<name>/``) is a contract later tools rely on::

    config.toml      the resolved config (``fedfm run --resume`` reads it back)
    partition.json   per client: rows, label histogram (and group for natural splits)
    dedup.json       with ``[governance] dedup``: the cross-client pairs, rows dropped, bytes sent
    metrics.jsonl    one JSON object per round
    summary.json     the final figures
    checkpoints/     the last rounds' global and strategy state (safetensors)
    adapter/         peft adapter + head.safetensors (lora, prompt, adapter); model/ for head, full;
                     causal_lm: the peft adapter and the tokenizer
    report.html      one self-contained page with the config, per-round table and plots
    tensorboard/     with ``[logging] report_to = ["tensorboard"]``: TensorBoard event files
    mlruns/          with ``report_to = ["mlflow"]`` (and no $MLFLOW_TRACKING_URI): an MLflow store

A network server (``fedfm serve``) writes the same files, plus ``server.sqlite`` and ``updates/``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from fedfm.client.app import trained_rows
from fedfm.codecs.wire import validate_state
from fedfm.config import ExperimentConfig, config_to_dict, config_to_toml, load_config
from fedfm.errors import ResumeError
from fedfm.metrics.memory import peak_rss_mb
from fedfm.metrics.report import write_report
from fedfm.metrics.sinks import JsonlSink, Sink, check_report_to, report_sinks
from fedfm.modelcard import write_model_card
from fedfm.prepared import Prepared
from fedfm.privacy.audit import audit_summary
from fedfm.server.checkpoint import Checkpoint, latest_checkpoint
from fedfm.server.continual import continual_summary
from fedfm.server.federation import Federation

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run returns: the figures of ``summary.json`` and the per-round rows."""

    run_dir: Path
    summary: dict[str, Any]
    metrics: list[dict[str, Any]] = field(default_factory=list)
    already_finished: bool = False  # a resumed run that had nothing left to do

    @property
    def final_accuracy(self) -> float:
        return self.summary["final_accuracy"]


def run_config(run_dir: Path) -> ExperimentConfig:
    """The config a run directory ran with (a :class:`ResumeError` if it is not one)."""
    if not (Path(run_dir) / "config.toml").is_file():
        raise ResumeError(f"{str(run_dir)!r} is not a run directory: it has no config.toml")
    return load_config(Path(run_dir) / "config.toml")


def resolve_config(
    config: ExperimentConfig | str | Path | None,
    resume: str | Path | None,
    overrides: Sequence[str] = (),
) -> tuple[ExperimentConfig, Checkpoint | None]:
    """The config to run and, when resuming, the run directory's own config and last checkpoint
    (None if it has none yet)."""
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.toml").is_file():
            raise ResumeError(f"{str(run_dir)!r} is not a run directory: it has no config.toml")
        config = load_config(run_dir / "config.toml", overrides)
        if overrides:
            _state_changes(load_config(run_dir / "config.toml"), config, run_dir)
        ckpt = latest_checkpoint(run_dir)
        if ckpt is not None and ckpt.round > config.federation.rounds:
            raise ResumeError(
                f"federation.rounds = {config.federation.rounds} is fewer than the {ckpt.round} "
                f"rounds {str(run_dir)!r} already ran; allowed: ≥ {ckpt.round}"
            )
        return config, ckpt
    if not isinstance(config, ExperimentConfig):
        return load_config(config, overrides), None
    if overrides:
        raise ValueError("overrides apply to a config file, not to an ExperimentConfig object")
    return config, None


def _flat(config: ExperimentConfig) -> dict[str, Any]:
    """``{"section.key": value}`` of a config, as its TOML file has them."""
    data = config_to_dict(config)
    flat = {k: v for k, v in data.items() if not isinstance(v, dict)}
    for section, table in data.items():
        if isinstance(table, dict):
            flat.update({f"{section}.{k}": v for k, v in table.items()})
    return flat


def _state_changes(saved: ExperimentConfig, config: ExperimentConfig, run_dir: Path) -> None:
    """Say which keys ``--set`` changes in a resumed run (its config.toml is rewritten to match:
    the run directory records what ran)."""
    before, after = _flat(saved), _flat(config)
    changed = [k for k in after if before.get(k) != after[k]]
    if changed:
        log.warning(
            "resuming %s with a changed config (written to its config.toml): %s",
            run_dir,
            ", ".join(f"{k} = {after[k]!r} (was {before.get(k)!r})" for k in changed),
        )


def finished_run(resume: str | Path | None, config: ExperimentConfig) -> RunResult | None:
    """The result of a resumed run directory that already finished all ``federation.rounds``
    (its summary.json written), or None when there is something left to run."""
    if resume is None or not (Path(resume) / "summary.json").is_file():
        return None
    run_dir = Path(resume)
    rows = read_rows(run_dir / "metrics.jsonl", config.federation.rounds)
    if not rows or rows[-1]["round"] < config.federation.rounds:
        return None
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary.get("rounds") != config.federation.rounds:
        return None
    return RunResult(run_dir, summary, rows, already_finished=True)


def unique_run_dir(out: Path, name: str) -> Path:
    """A new directory ``out/name`` (``name-2``, ``name-3``, ... when taken)."""
    out.mkdir(parents=True, exist_ok=True)
    path, i = out / name, 1
    while path.exists():
        i += 1
        path = out / f"{name}-{i}"
    path.mkdir()
    return path


def read_rows(path: Path, up_to: int) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl`` up to round ``up_to``."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["round"] <= up_to]


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (a reader never sees half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def open_run(
    p: Prepared, out: str | Path, resume: str | Path | None, start_round: int
) -> tuple[Path, list[dict[str, Any]]]:
    """The run directory (new, or the resumed one) with its config, partition and fm4fl files
    written, and ``metrics.jsonl`` cut back to the rows before ``start_round`` (returned)."""
    check_report_to(p.config.logging.report_to)  # a missing library stops the run before it starts
    if resume is None:
        run_dir = unique_run_dir(Path(out), p.config.name)
        (run_dir / "config.toml").write_text(config_to_toml(p.config))
    else:
        run_dir = Path(resume)
        (run_dir / "config.toml").write_text(config_to_toml(p.config))  # with any --set changes
    log.info("run directory: %s", run_dir)
    labels = p.train.labels
    write_json(run_dir / "partition.json", p.partition.describe(labels, p.train.label_names))
    if p.fm4fl:
        write_json(run_dir / "fm4fl.json", p.fm4fl)
    if p.dedup is not None:
        write_json(run_dir / "dedup.json", p.dedup)
    rows = read_rows(run_dir / "metrics.jsonl", start_round - 1)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir, rows


def summary_base(p: Prepared, run_dir: Path) -> dict[str, Any]:
    """The figures every summary starts with."""
    c = p.config
    trainable, total = p.task.num_params()
    return {
        "name": c.name,
        "mode": c.federation.mode,
        "method": c.method.plugin_name,
        "strategy": c.strategy.plugin_name,
        "clients": len(p.partition.client_ids),
        "trainable_params": trainable,
        "total_params": total,
        "startup_seconds": round(p.startup_seconds, 3),
        **({"fm4fl": p.fm4fl} if p.fm4fl else {}),
        **({"offsite": p.offsite} if p.offsite else {}),
        **(
            {"dedup_pairs": p.dedup["pairs"], "dedup_dropped_rows": p.dedup["rows_dropped"]}
            if p.dedup is not None
            else {}
        ),
        "run_dir": str(run_dir),
    }


@contextmanager
def names_run_dir(run_dir: Path) -> Iterator[None]:
    """A Ctrl-C (KeyboardInterrupt) inside carries ``run_dir``: the CLI names it as the run
    directory to resume from. Everything a run does once its directory exists runs inside."""
    try:
        yield
    except KeyboardInterrupt as e:
        if getattr(e, "run_dir", None) is None:
            e.run_dir = run_dir  # type: ignore[attr-defined]
        raise


def provenance() -> dict[str, Any]:
    """When the run finished (UTC, ISO 8601), with which versions, from which command line."""
    versions = {"python": platform.python_version()}
    for package in ("fedfm", "torch", "transformers", "peft"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "unknown"
    argv0 = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    program = "python -m fedfm" if argv0 == "__main__.py" else argv0
    return {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions,
        "command": shlex.join([program, *sys.argv[1:]]),
    }


def finish(
    run_dir: Path,
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    sinks: Sequence[Sink],
    after_export: Callable[[], dict[str, Any]] | None = None,
) -> RunResult:
    """Write the model card, ``summary.json`` and the report; tell the sinks the run ended.
    ``after_export`` (the governance observers) runs once the exported folder is final, after
    the model card; its fields join the summary."""
    summary["peak_rss_mb"] = round(peak_rss_mb(), 1)
    summary.update(provenance())
    if "export_dir" in summary:
        write_model_card(Path(summary["export_dir"]), load_config(run_dir / "config.toml"), summary)
    if after_export is not None:
        summary.update(after_export())
    write_json(run_dir / "summary.json", summary)
    write_report(run_dir, (run_dir / "config.toml").read_text(), rows, summary)
    for sink in sinks:
        sink.end(summary)
    return RunResult(run_dir, summary, rows)


def _final_figures(p: Prepared, rows: list[dict[str, Any]]) -> dict[str, float]:
    """The final figures: the server's whole (``data.test_rows``) test set, or, when only the
    clients evaluate, their last evaluation (every client's held-out rows)."""
    if p.config.evaluation.on_server:
        figures = p.task.evaluate(p.test_tokens, p.test.labels)
        if p.client_task is not None:  # offsite: the emulator with the same tuned ends
            p.client_task.set_state(p.task.get_state())
            emulated = p.client_task.evaluate(p.test_tokens, p.test.labels)
            figures["emulator_accuracy"] = emulated["accuracy"]
        return figures
    last = rows[-1] if rows else {}
    figures = {k.removeprefix("client_"): v for k, v in last.items() if k.startswith("client_")}
    if figures.get("accuracy") is None:  # no global model (personalize.method = 'local_head')
        figures = {k.removeprefix("personal_"): v for k, v in figures.items()}
    return {
        "accuracy": figures.get("accuracy"),
        "loss": figures.get("loss"),
        **({"perplexity": figures["perplexity"]} if "perplexity" in figures else {}),
    }


def _client_evaluation_summary(c: ExperimentConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Federated evaluation's figures for the summary (its bytes apart from training's)."""
    if not c.evaluation.on_clients:
        return {}
    last = rows[-1] if rows else {}
    return {
        "final_client_accuracy": last.get("client_accuracy"),
        "final_client_loss": last.get("client_loss"),
        "final_client_eval": last.get("client_eval", {}),
        **{
            k: v
            for k, v in last.items()
            if k.startswith(("personal_accuracy_", "global_accuracy_"))
        },
        "client_eval_bytes_up_total": sum(r.get("client_eval_bytes_up", 0) for r in rows),
        "client_eval_bytes_down_total": sum(r.get("client_eval_bytes_down", 0) for r in rows),
    }


def drive(
    p: Prepared,
    fed: Federation,
    run_dir: Path,
    sinks: Sequence[Sink],
    ckpt: Checkpoint | None,
    start_round: int,
    rows: list[dict[str, Any]],
) -> RunResult:
    """Run a built Federation (restored from ``ckpt`` if given), score, export, summarise.
    The sinks of ``[logging] report_to`` are built here, for the run directory, and closed."""
    report = report_sinks(p.config.logging.report_to, run_dir, p.config)
    fed.sinks.extend(report)
    try:
        return _drive(p, fed, run_dir, [*sinks, *report], ckpt, start_round, rows)
    finally:
        for sink in report:
            sink.close()


def _drive(
    p: Prepared,
    fed: Federation,
    run_dir: Path,
    sinks: Sequence[Sink],
    ckpt: Checkpoint | None,
    start_round: int,
    rows: list[dict[str, Any]],
) -> RunResult:
    c = p.config
    centralized = c.federation.mode == "centralized"
    fed.sinks.insert(0, JsonlSink(run_dir / "metrics.jsonl"))
    fed.start_info["model_loaded_at"] = p.model_loaded_at
    state = p.task.get_state()
    if ckpt is not None:
        state = validate_state(ckpt.state, state)
        fed.strategy.load_state_dict(ckpt.strategy)
        fed.load_memory_state(ckpt.memory, state)
        fed.totals.update(ckpt.progress)
    fed.rows = list(rows)
    members = None
    try:
        state = fed.run(state, start_round)
        if c.privacy.audit:  # before the runtime closes: its clients hold the record
            members = trained_rows(fed.runtime.state_dict())
    finally:
        fed.runtime.close()
    if centralized:  # nothing is exchanged when the data are pooled
        for row in fed.rows:
            row["bytes_up"] = row["bytes_down"] = 0
        fed.totals["bytes_up"] = fed.totals["bytes_down"] = 0

    p.task.set_state(state)
    final = _final_figures(p, fed.rows)
    export_dir = run_dir / ("adapter" if p.task.method.is_peft else "model")
    p.task.export(export_dir, p.train.label_names)

    def governance() -> dict[str, Any]:  # kept updates, provenance, contribution values
        fields: dict[str, Any] = {}
        for observer in fed.observers:
            fields.update(observer.finish(run_dir, state, export_dir))
        return fields

    summary = {
        **summary_base(p, run_dir),
        "final_accuracy": final["accuracy"],
        "final_loss": final["loss"],
        **({"final_perplexity": final["perplexity"]} if "perplexity" in final else {}),
        **(
            {"final_emulator_accuracy": final["emulator_accuracy"]}
            if "emulator_accuracy" in final
            else {}
        ),
        **p.task.test_counts(p.test),
        "rounds": c.federation.rounds,
        "total_seconds": round(fed.totals["seconds"], 3),
        "bytes_up_total": fed.totals["bytes_up"],
        "bytes_down_total": fed.totals["bytes_down"],
        "tokens_total": fed.totals.get("tokens", 0),
        "tokens_per_client": fed.totals.get("tokens_per_client", {}),
        "rejected_updates": sum("what" not in r for r in fed.rejected),
        **_client_evaluation_summary(c, fed.rows),
        **continual_summary(fed.rows),  # [continual]: average_accuracy, forgetting
        **fed.strategy.summary(),
        **(audit_summary(p, members, c.privacy.audit_rows, c.seed) if c.privacy.audit else {}),
        **({"attack": c.attack.type, "malicious_clients": p.malicious} if p.attack else {}),
        **(
            {"final_attack_success_rate": fed.rows[-1].get("attack_success_rate")}
            if p.triggered
            else {}
        ),
        "export_dir": str(export_dir),
    }
    return finish(run_dir, fed.rows, summary, sinks, governance)
