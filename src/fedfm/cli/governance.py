"""``fedfm contrib | unlearn | verify``: the governance commands, reading a run directory.

Each command has an ``add_<name>(sub)`` that declares its arguments and a ``cmd_<name>(args)``
that runs it; :data:`COMMANDS` maps names to the latter for :mod:`fedfm.cli`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from fedfm import assemble
from fedfm.errors import ConfigError
from fedfm.governance.contrib import METHODS
from fedfm.governance.kept import require_kept
from fedfm.governance.unlearn import unlearn
from fedfm.governance.valuation import CONTRIBUTIONS, contributions
from fedfm.governance.verify import verify_run
from fedfm.rundir import run_config


def add_verify(sub) -> None:
    p = sub.add_parser(
        "verify",
        help="check a run directory against its signed provenance log (exit 1: changed)",
        description="Check provenance.jsonl (every line canonical, chained and signed by the "
        "server's Ed25519 key), config.toml, the checkpoints, the kept updates and the exported "
        "model against it. Exit 0: everything checks; 1: something was changed (each problem "
        "on one line, naming the file and the place); 2: bad input.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run directory")
    p.add_argument(
        "--public-key",
        metavar="PEM",
        default=None,
        help="the server's public key (PEM) to check the signatures with; default: "
        "provenance.pub beside the log, which proves only consistency with that file",
    )


def cmd_verify(args: argparse.Namespace) -> int:
    public_key = Path(args.public_key) if args.public_key else None
    result = verify_run(Path(args.run_dir), public_key)
    for problem in result.problems:
        print(problem)
    for note in result.notes:
        print(f"note: {note}")
    if result.ok:
        print(
            f"verified {args.run_dir}: {result.records} records, chain and signatures valid "
            f"(key {result.key}), {result.files} files match"
            + (
                f", {result.client_signatures} client signatures valid"
                if result.client_signatures
                else ""
            )
        )
        return 0
    print(f"verification FAILED for {args.run_dir}: {len(result.problems)} problem(s)")
    return 1


def add_parsers(sub) -> None:
    """Declare every governance command on the ``fedfm`` sub-parsers."""
    add_contrib(sub)
    add_unlearn(sub)
    add_verify(sub)


def add_contrib(sub) -> None:
    p = sub.add_parser(
        "contrib",
        help="value each client of a finished run from its kept updates, and split a payout",
        description="Value each client of RUN_DIR from the client updates it kept "
        "([governance] keep_updates = true), scored on the server's validation rows, without "
        "retraining: loo (round-wise leave-one-out), gtg_shapley (GTG-Shapley, default) or "
        "tmc_shapley (truncated Monte-Carlo Shapley of the replayed run). Flags free riders, "
        "splits --total (default: shares summing to 1) and writes RUN_DIR/contributions.json.",
    )
    p.add_argument("run_dir", help="a run directory with kept updates")
    p.add_argument("--method", default="gtg_shapley", choices=METHODS)
    p.add_argument(
        "--budget", type=int, default=0, help="evaluations the sampled methods may spend (0: auto)"
    )
    p.add_argument(
        "--rows",
        type=int,
        default=0,
        help="validation rows per evaluation (0: the run's eval rows)",
    )
    p.add_argument("--total", type=float, default=1.0, help="the payout budget (default: 1)")
    p.add_argument(
        "--floor", type=float, default=0.0, help="each unflagged client's least share (0 … <1)"
    )


def _check(condition: bool, flag: str, value, allowed: str) -> None:
    if not condition:
        raise ConfigError(f"{flag} = {value!r} is not allowed; allowed: {allowed}")


def cmd_contrib(args: argparse.Namespace) -> int:
    _check(args.budget >= 0, "--budget", args.budget, "≥ 0")
    _check(args.rows >= 0, "--rows", args.rows, "≥ 0")
    _check(args.total > 0, "--total", args.total, "> 0")
    _check(0 <= args.floor < 1, "--floor", args.floor, "0 ≤ floor < 1")
    run_dir = Path(args.run_dir)
    config = run_config(run_dir)
    require_kept(run_dir)  # before loading the model: one line naming the option
    p = assemble.prepare_server(config, [])  # the server's validation rows and the model only
    result = contributions(run_dir, p, args.method, args.budget, args.rows, args.floor, args.total)
    width = max(len(c) for c in result["values"])
    for c, v in sorted(result["values"].items(), key=lambda kv: -kv[1]):
        ci = result["confidence"].get(c)
        flag = ", ".join(result["flags"].get(c, []))
        print(
            f"{c:<{width}}  value {v:+.4f}"
            + (f" ± {ci:.4f}" if ci is not None else "")
            + f"  payout {result['payouts'][c]:.4f}"
            + (f"  flagged: {flag}" if flag else "")
        )
    print(
        f"{result['method']}: {result['evaluations']} evaluations in {result['seconds']:.1f} s; "
        f"{run_dir / CONTRIBUTIONS}"
    )
    return 0


def add_unlearn(sub) -> None:
    p = sub.add_parser(
        "unlearn",
        help="remove one client from a finished run's model, into a new run directory",
        description="Write OUT, a run directory whose model never learnt from CLIENT: retrain "
        "(rerun without it from the checkpoint before it first took part; the gold standard) "
        "or replay (FedEraser: rebuild from the kept updates, the remaining clients "
        "calibrating with a few local steps; needs [governance] keep_updates = true).",
    )
    p.add_argument("run_dir", help="a finished run directory (an in-process runtime)")
    p.add_argument("--client", required=True, help="the client id to remove")
    p.add_argument("--out", required=True, help="a new folder for the unlearnt run")
    p.add_argument("--method", default="retrain", choices=("retrain", "replay"))
    p.add_argument(
        "--calibration",
        type=float,
        default=1.0,
        help="replay: calibration steps as a share of the run's local steps (default: 1)",
    )


def cmd_unlearn(args: argparse.Namespace) -> int:
    options = {"calibration": args.calibration} if args.method == "replay" else {}
    summary = unlearn(args.run_dir, args.client, args.out, args.method, **options)
    record = summary["unlearned"]
    asr = summary.get("final_attack_success_rate")
    print(
        f"unlearnt {record['client']!r} by {record['method']} from round "
        f"{record['first_round']} in {record['seconds']:.1f} s: accuracy "
        f"{summary['final_accuracy']:.4f}"
        + (f", attack success rate {asr:.4f}" if asr is not None else "")
        + f"; {args.out}"
    )
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "contrib": cmd_contrib,
    "unlearn": cmd_unlearn,
    "verify": cmd_verify,
}
