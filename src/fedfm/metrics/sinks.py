"""Sinks: where per-round metrics go (the live console display, metrics.jsonl, and the sinks
that ``[logging] report_to`` names, such as TensorBoard and MLflow).

A sink named in ``report_to`` is a :class:`Sink` subclass registered in :data:`SINKS`; the run
builds it as ``cls(run_dir, config)`` once the run directory exists, on ``fedfm run`` and on
``fedfm serve`` alike.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedfm.errors import ConfigError
from fedfm.registry import Registry


class Sink:
    """Receives a run's events; every method is optional.

    The events come in this order: ``start`` once, then per round ``client_done`` as clients
    answer and ``round`` with the round's row, then ``end`` with the summary; ``close`` always
    comes last, also when the run fails or is interrupted (``end`` then never comes). A resumed
    run starts again at ``info["start_round"]``.

    A sink of your own, named in ``[logging] report_to``, subclasses this, takes
    ``(run_dir, config)`` and registers itself; its module is named in ``[plugins] modules``::

        from fedfm.metrics import SINKS, Sink, scalars

        @SINKS.register("csv")
        class CsvSink(Sink):
            # each round's accuracy and loss in <run_dir>/rounds.csv
            def __init__(self, run_dir, config):
                self.path = run_dir / "rounds.csv"

            def round(self, row):
                values = scalars(row)  # the row's numbers: accuracy, loss, bytes_up, ...
                with self.path.open("a") as f:
                    f.write(f"{row['round']},{values.get('accuracy', '')},{values['loss']}\\n")

    ``requires`` names the modules a sink imports, checked before the run starts; a missing one
    stops the run with one line that says what to ``pip install`` (``install``).
    """

    requires: tuple[str, ...] = ()  # modules the sink imports (checked before the run)
    install: str = ""  # what to pip install when one is missing

    def start(self, info: dict[str, Any]) -> None:
        """The run begins: ``info`` has ``name``, ``rounds``, ``start_round``, ``clients``."""

    def client_done(self, round: int, done: int, total: int) -> None:
        """One more of this round's clients has answered."""

    def round(self, row: dict[str, Any]) -> None:
        """One round's metrics (the metrics.jsonl row): ``round``, ``loss``, ``accuracy`` (None
        when not evaluated this round), ``bytes_up``, ``bytes_down``, ``round_seconds``,
        ``clients`` and what the task, strategy and privacy settings add."""

    def end(self, summary: dict[str, Any]) -> None:
        """The run finished with this summary (the summary.json figures)."""

    def close(self) -> None:
        """Release the display or file, also when the run fails."""


SINKS: Registry[type[Sink]] = Registry("sink", "logging.report_to")
"""The sinks ``[logging] report_to`` can name."""


def scalars(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a row or summary, nested tables flattened as ``table/key``
    (lists, strings, booleans and None left out)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(scalars(value, f"{prefix}{key}/"))
        elif (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ):
            out[f"{prefix}{key}"] = float(value)
    return out


def check_report_to(names: Sequence[str]) -> None:
    """Raise a ConfigError naming ``logging.report_to`` when a named sink is unknown or a
    module it needs is not installed (before anything of the run is written)."""
    for name in names:
        cls = SINKS.get(name)
        missing = [m for m in cls.requires if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(
                f"logging.report_to = {name!r} needs the {', '.join(missing)} package, which is "
                f"not installed; pip install {cls.install or ' '.join(missing)}"
            )


def report_sinks(names: Sequence[str], run_dir: Path, config: Any) -> list[Sink]:
    """The sinks ``report_to`` names, built for this run directory."""
    check_report_to(names)
    return [SINKS.get(name)(run_dir, config) for name in names]


class JsonlSink(Sink):
    """Appends one JSON object per round to ``metrics.jsonl``, flushed at once."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def round(self, row: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _fmt_acc(value: Any) -> str:
    return "—" if value is None else f"{value:.4f}"


class ConsoleSink(Sink):
    """A live progress display: round, clients answered, loss, accuracy and MB sent."""

    def __init__(self, enabled: bool = True) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = enabled
        self.progress = None
        self.task = None
        self.mb = 0.0

    def start(self, info):
        if not self.enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        done = info["start_round"] - 1
        self.task = self.progress.add_task(
            f"{info['name']} rounds", total=info["rounds"], completed=done, status="starting"
        )
        self.console.print(
            f"{'round':>5} {'clients':>7} {'loss':>8} {'accuracy':>9} {'MB up':>8} {'MB down':>8} {'sec':>6}"
        )

    def client_done(self, round, done, total):
        if self.progress is not None:
            self.progress.update(self.task, status=f"round {round}: {done}/{total} clients")

    def round(self, row):
        self.mb += (row["bytes_up"] + row["bytes_down"]) / 1e6
        if self.progress is None:
            return
        ppl = row.get("perplexity")  # language models: held-out perplexity after the columns
        self.console.print(
            f"{row['round']:>5} {len(row['clients']):>7} {row['loss']:>8.4f} {_fmt_acc(row.get('accuracy')):>9} "
            f"{row['bytes_up'] / 1e6:>8.3f} {row['bytes_down'] / 1e6:>8.3f} {row['round_seconds']:>6.1f}"
            + ("" if ppl is None else f"  perplexity {ppl:.2f}")
        )
        score = f"acc {_fmt_acc(row.get('accuracy'))}" if ppl is None else f"ppl {ppl:.1f}"
        self.progress.update(self.task, advance=1, status=f"{score} · {self.mb:.1f} MB sent")

    def close(self):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
