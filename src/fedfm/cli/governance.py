"""``fedfm contrib | unlearn | verify``: the governance commands, reading a run directory.

Each command has an ``add_<name>(sub)`` that declares its arguments and a ``cmd_<name>(args)``
that runs it; :data:`COMMANDS` maps names to the latter for :mod:`fedfm.cli`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from fedfm.governance.verify import verify_run


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


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {"verify": cmd_verify}


def add_parsers(sub) -> None:
    """Declare every governance command on the ``fedfm`` sub-parsers."""
    add_verify(sub)
