"""``fedfm audit | screen``: the trust commands (membership audit, backdoor screening).

Each command has an ``add_<name>(sub)`` that declares its arguments and a ``cmd_<name>(args)``
that runs it; :data:`COMMANDS` maps names to the latter for :mod:`fedfm.cli`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from fedfm.trust.lira import ATTACKS, AUDIT, membership_audit


def add_parsers(sub) -> None:
    """Declare every trust command on the ``fedfm`` sub-parsers."""
    add_audit(sub)


def add_audit(sub) -> None:
    p = sub.add_parser(
        "audit",
        help="membership-inference audit of a finished run: loss threshold or LiRA with shadows",
        description="Attack a finished run (privacy.audit = true) with membership inference on "
        "rows its clients trained on against test rows: loss (the loss threshold, as in "
        "summary.json's mia_auc) or lira (offline LiRA: K shadow federations trained without "
        "the audited rows calibrate each row). Prints AUC and TPR at 1%% and 0.1%% FPR and "
        "writes RUN_DIR/audit.json.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run with privacy.audit = true")
    p.add_argument("--attack", default="lira", choices=ATTACKS)
    p.add_argument(
        "--shadows", type=int, default=4, help="lira: shadow federations to train (≥ 2; default 4)"
    )
    p.add_argument(
        "--rows",
        type=int,
        default=0,
        help="members audited, and as many test rows (0: the run's privacy.audit_rows; lira "
        "takes at most half the trained rows)",
    )


def cmd_audit(args: argparse.Namespace) -> int:
    report = membership_audit(args.run_dir, args.attack, args.shadows, args.rows)
    for attack in ("loss", "lira"):
        if attack in report:
            f = report[attack]
            print(
                f"{attack:<5} AUC {f['auc']:.4f}  TPR {f['tpr_at_1%_fpr']:.4f} at 1% FPR, "
                f"{f['tpr_at_0.1%_fpr']:.4f} at 0.1% FPR"
            )
    print(
        f"{report['rows']} members against {report['rows']} test rows"
        + (f", {report['lira']['shadows']} shadows" if "lira" in report else "")
        + f", {report['seconds']:.1f} s; {Path(args.run_dir) / AUDIT}"
    )
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "audit": cmd_audit,
}
