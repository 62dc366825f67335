"""``fedfm audit | screen``: the trust commands (membership audit, backdoor screening).

Each command has an ``add_<name>(sub)`` that declares its arguments and a ``cmd_<name>(args)``
that runs it; :data:`COMMANDS` maps names to the latter for :mod:`fedfm.cli`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from fedfm.errors import ConfigError
from fedfm.trust.lira import ATTACKS, AUDIT, membership_audit
from fedfm.trust.strip import screen_run


def add_parsers(sub) -> None:
    """Declare every trust command on the ``fedfm`` sub-parsers."""
    add_audit(sub)
    add_screen(sub)


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


def add_screen(sub) -> None:
    p = sub.add_parser(
        "screen",
        help="STRIP: is a classifier (a base or teacher to federate on) backdoored? exit 1: yes",
        description="STRIP (Gao et al. 2019) on a finished classification run's model: "
        "superimpose each input with clean texts (the run's first --rows test rows) and flag "
        "inputs whose prediction keeps a low entropy, at a threshold calibrated to --fpr on "
        "clean inputs. Screens the texts of --texts (one per line: e.g. the texts a teacher "
        "will label), or tests a suspected --trigger inserted into other test rows. Exit 0: "
        "clean; 1: poisoned (more inputs flagged than clean ones would be); 2: bad input.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished classification run")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--texts", metavar="FILE", help="texts to screen, one per line")
    what.add_argument("--trigger", metavar="PHRASE", help="a suspected trigger to test")
    p.add_argument("--rows", type=int, default=300, help="clean test rows (default 300)")
    p.add_argument("--copies", type=int, default=16, help="superimpositions per input")
    p.add_argument(
        "--replace", type=float, default=0.5, help="share of an input's words replaced (0.5)"
    )
    p.add_argument("--fpr", type=float, default=0.01, help="calibrated FPR on clean inputs")
    p.add_argument("--seed", type=int, default=0)


def _check(condition: bool, flag: str, value, allowed: str) -> None:
    if not condition:
        raise ConfigError(f"{flag} = {value!r} is not allowed; allowed: {allowed}")


def cmd_screen(args: argparse.Namespace) -> int:
    _check(args.copies >= 1, "--copies", args.copies, "≥ 1")
    _check(0 < args.replace < 1, "--replace", args.replace, "0 < share < 1")
    _check(0 < args.fpr < 1, "--fpr", args.fpr, "0 < fpr < 1")
    texts = None
    if args.texts is not None:
        path = Path(args.texts)
        _check(path.is_file(), "--texts", args.texts, "a file of texts, one per line")
        texts = [t for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
        _check(bool(texts), "--texts", args.texts, "a file with at least one text")
    r = screen_run(
        args.run_dir, texts, args.trigger, args.rows, args.copies, args.replace, args.fpr, args.seed
    )
    print(
        f"flagged {r.flagged} of {r.screened} inputs ({r.flagged_rate:.1%}); clean inputs "
        f"flagged {r.clean_fpr:.1%} at a threshold of {r.threshold:.3f} bits calibrated for "
        f"{r.fpr:.1%}; a clean model stays at ≤ {r.allowed}"
    )
    print(f"{args.run_dir}: {'POISONED' if r.poisoned else 'no backdoor found'} (STRIP)")
    return 1 if r.poisoned else 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "audit": cmd_audit,
    "screen": cmd_screen,
}
