"""``[governance]``: what a run keeps and records so that, after training, the parties can ask
who contributed what (``fedfm contrib``), remove one of them (``fedfm unlearn``), prove what went
into the model (``fedfm verify``), and find rows that several clients hold (deduplication)."""

from __future__ import annotations

from dataclasses import dataclass

from fedfm.config.checks import check, check_choice

CONTRIB_METHODS = ("none", "loo", "gtg_shapley", "tmc_shapley")
DEDUP_POLICIES = ("off", "report", "drop_later", "keep_one")


@dataclass(frozen=True)
class GovernanceConfig:
    """Provenance, kept updates, contribution values and payouts, cross-client deduplication.

    ``keep_updates`` writes each round's decoded client updates (and the global state they
    started from) to ``<run_dir>/updates/``: ``fedfm contrib`` and ``fedfm unlearn --method
    replay`` rebuild any subset's aggregate from them without retraining. ``provenance`` appends
    a hash-chained record per round to ``<run_dir>/provenance.jsonl``, signed with the server's
    Ed25519 key (``signing_key``; empty: ``~/.config/fedfm/keys/server.ed25519``, made on first
    use); ``fedfm verify`` checks it. ``contrib`` values the clients when training ends
    (``contributions.json``): clients flagged as free riders get nothing, every other one
    ``payout_floor`` of ``payout_total`` and the rest in proportion to its value. ``dedup``
    finds near-duplicate rows across clients from keyed MinHash signatures (the server never
    sees a row's text) before training."""

    keep_updates: bool = False  # keep each round's client updates (needed by contrib, unlearn)
    provenance: bool = True  # hash-chained, signed record of every round: provenance.jsonl
    signing_key: str = ""  # the server's Ed25519 key (PEM); "" = ~/.config/fedfm/keys/…
    contrib: str = "none"  # value the clients when training ends: loo | gtg_shapley | …
    contrib_budget: int = 0  # evaluations the sampled methods may spend (0 = the method's own)
    contrib_rows: int = 0  # validation rows each evaluation scores (0 = the server's eval rows)
    payout_total: float = 1.0  # the budget split among the clients (1.0: shares)
    payout_floor: float = 0.0  # each unflagged client's least share of payout_total
    dedup: str = "off"  # cross-client near-duplicate rows: off | report | drop_later | keep_one
    dedup_threshold: float = 0.8  # the Jaccard similarity from which two rows are duplicates
    dedup_num_perm: int = 128  # MinHash permutations per row (bytes sent: 4 per permutation)

    def __post_init__(self) -> None:
        check_choice("governance.contrib", self.contrib, CONTRIB_METHODS)
        check_choice("governance.dedup", self.dedup, DEDUP_POLICIES)
        check(
            self.contrib == "none" or self.keep_updates,
            "governance.contrib",
            self.contrib,
            "'none' unless governance.keep_updates = true (the values are computed from the "
            "kept updates)",
        )
        check(
            0 <= self.contrib_budget <= 1_000_000,
            "governance.contrib_budget",
            self.contrib_budget,
            "0 … 1,000,000",
        )
        check(self.contrib_rows >= 0, "governance.contrib_rows", self.contrib_rows, "≥ 0")
        check(
            self.payout_total > 0,
            "governance.payout_total",
            self.payout_total,
            "> 0",
        )
        check(
            0 <= self.payout_floor < 1,
            "governance.payout_floor",
            self.payout_floor,
            "0 ≤ floor < 1 (a share of payout_total)",
        )
        check(
            0.1 <= self.dedup_threshold <= 1,
            "governance.dedup_threshold",
            self.dedup_threshold,
            "0.1 … 1",
        )
        check(
            16 <= self.dedup_num_perm <= 1024,
            "governance.dedup_num_perm",
            self.dedup_num_perm,
            "16 … 1024",
        )
