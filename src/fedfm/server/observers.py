"""Round observers: parts that must see what the server saw in each round, after it is
checkpointed (the kept updates of ``[governance]``, the signed provenance log), and the final
state once the model is exported.

An observer sees exactly what the server holds: the global state before and after the round,
each admitted client's decoded update and the bytes it uploaded; under secure aggregation only
the sum, so ``updates`` and ``payloads`` are empty.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedfm.registry import Registry
from fedfm.state import State, Update


@dataclass
class RoundRecord:
    round: int
    before: State  # the global state the round started from
    after: State  # the global state it ended with
    updates: list[Update]  # the admitted updates, in selection order (empty: secure round)
    payloads: dict[str, bytes]  # each admitted client's uploaded bytes
    row: dict[str, Any]  # the round's metrics row
    checkpoint: Path | None = None  # the checkpoint written for the round, if any
    # what each network client signed for its upload (Runtime.upload_signatures)
    signatures: dict[str, dict[str, Any]] = field(default_factory=dict)


class RoundObserver:
    """Override what you need; both calls happen on the server, in round order."""

    def round(self, record: RoundRecord) -> None:
        """After round ``record.round`` was logged and checkpointed."""

    def finish(self, run_dir: Path, state: State, export_dir: Path) -> dict[str, Any]:
        """After training, once the final model is exported to ``export_dir``; returns fields
        for the run's summary (or an empty dict)."""
        return {}


ObserverFactory = Callable[[Any, "Path | None"], list[RoundObserver]]

OBSERVERS: Registry[ObserverFactory] = Registry("observer", "governance")
"""Factories ``(prepared, run_dir) → [RoundObserver]``, registered by plug-in packages
(``fedfm.governance``): the assembly asks each for the observers a config wants."""


def observers_for(prepared: Any, run_dir: Path | None) -> list[RoundObserver]:
    """Every registered factory's observers for this run, in registration order."""
    return [o for name in OBSERVERS.names() for o in OBSERVERS.get(name)(prepared, run_dir)]


ObserverCheck = Callable[[Any], None]

OBSERVER_CHECKS: Registry[ObserverCheck] = Registry("observer check", "governance")
"""``config → None``: raises (one line) when an observer the config asks for cannot keep its
promise (e.g. the provenance log's signing key is missing); run before anything is written."""


def check_observers(config: Any) -> None:
    """Every registered check, before a run (``fedfm run``, ``fedfm serve``) writes anything."""
    for name in OBSERVER_CHECKS.names():
        OBSERVER_CHECKS.get(name)(config)
