"""Governance of a shared model: kept updates, contribution values and payouts, unlearning,
signed provenance, cross-client deduplication (``[governance]``).

:func:`observers` gives the round observers a run's config asks for; the command-line tools
(``fedfm contrib``, ``fedfm unlearn``, ``fedfm verify``) read what they left in the run directory.
"""

from __future__ import annotations

from pathlib import Path

from fedfm.config import ExperimentConfig
from fedfm.governance.dedup import dedup_filter, deduplicate  # registers the partition filter
from fedfm.governance.kept import KeepUpdates, KeptRound, kept_rounds, load_round
from fedfm.governance.provenance import ProvenanceLog
from fedfm.governance.valuation import Contributions, contributions
from fedfm.prepared import Prepared
from fedfm.server.observers import OBSERVER_CHECKS, OBSERVERS, RoundObserver
from fedfm.signing import server_key

__all__ = [
    "Contributions",
    "KeepUpdates",
    "KeptRound",
    "ProvenanceLog",
    "check_ready",
    "contributions",
    "dedup_filter",
    "deduplicate",
    "kept_rounds",
    "load_round",
    "observers",
]


@OBSERVER_CHECKS.register("governance")
def check_ready(config: ExperimentConfig) -> None:
    """Fail (one line) before a run writes anything when ``[governance]`` cannot keep its
    promise: the signing key of the provenance log is missing or unreadable."""
    if config.governance.provenance:
        server_key(config.governance.signing_key)


@OBSERVERS.register("governance")
def observers(p: Prepared, run_dir: Path | None) -> list[RoundObserver]:
    """The round observers ``[governance]`` asks for (none without a run directory)."""
    g = p.config.governance
    if run_dir is None:
        return []
    out: list[RoundObserver] = []
    if g.keep_updates:
        out.append(KeepUpdates(run_dir))
    if g.provenance:  # after KeepUpdates: a round's record holds the hash of its kept file
        key, _ = server_key(g.signing_key)
        out.append(ProvenanceLog(run_dir, p.config, key))
    if g.contrib != "none":  # after the export record: the values change no exported byte
        out.append(Contributions(p))
    return out
