"""Sinks: where per-round metrics go (the live console display, metrics.jsonl)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class Sink:
    """Receives the run's events; every method is optional."""

    def start(self, info: dict[str, Any]) -> None:
        """The run begins: ``info`` has ``name``, ``rounds``, ``start_round``, ``clients``."""

    def client_done(self, round: int, done: int, total: int) -> None:
        """One more of this round's clients has answered."""

    def round(self, row: dict[str, Any]) -> None:
        """One round's metrics (the metrics.jsonl row)."""

    def end(self, summary: dict[str, Any]) -> None:
        """The run finished with this summary."""

    def close(self) -> None:
        """Release the display or file, also when the run fails."""


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
