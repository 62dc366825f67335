"""``fedfm verify RUN_DIR``: check a run directory against its signed provenance log.

Checked: every line of ``provenance.jsonl`` (canonical, in place, chained, signed by the server's
key), that the start and resume records name that key, that each round started from the
aggregate of the round before, that each network client's own signature covers the upload the
server recorded for it, that ``config.toml`` is the one the last start or resume recorded, and
that every checkpoint file, every exported file and every kept-updates file has the sha256 the
newest valid record naming it holds (no file missing, none added). The exported state must be
the last round's aggregate. Each problem is one line naming the file and the place.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedfm.errors import DataError
from fedfm.governance.kept import UPDATES
from fedfm.governance.provenance import LOG, PUBLIC_KEY, check_log, file_sha256, folder_sha256
from fedfm.server.checkpoint import CHECKPOINTS
from fedfm.signing import (
    fingerprint,
    load_public_key,
    public_from_raw,
    public_pem,
    signature_valid,
    upload_message,
)

__all__ = ["Verification", "verify_run"]

EXPORT_DIRS = ("adapter", "model")


@dataclass(frozen=True)
class Verification:
    """What ``fedfm verify`` found: the problems (empty: everything checks), what was checked,
    and whether the key was given (pinned) or read beside the log."""

    problems: list[str]
    records: int
    files: int
    key: str  # the fingerprint the signatures were checked with ("" = none could be read)
    pinned: bool
    notes: list[str] = field(default_factory=list)
    client_signatures: int = 0  # clients' own signatures of their uploads (network runs)

    @property
    def ok(self) -> bool:
        return not self.problems


def _server_key(
    run_dir: Path, public_key: Path | None, problems: list[str]
) -> tuple[Ed25519PublicKey | None, bool]:
    """The key the signatures are checked with: ``--public-key`` (bad input: DataError), else
    provenance.pub beside the log (a changed one is a problem)."""
    beside = run_dir / PUBLIC_KEY
    if public_key is not None:
        try:
            data = Path(public_key).read_bytes()
        except OSError as e:
            raise DataError(
                f"--public-key {str(public_key)!r} cannot be read: {e.strerror}"
            ) from None
        key = load_public_key(data, f"--public-key {str(public_key)!r}")
        if beside.is_file() and beside.read_bytes() != public_pem(key):
            problems.append(f"{PUBLIC_KEY}: not the given --public-key (changed or another key)")
        return key, True
    if not beside.is_file():
        raise DataError(
            f"{str(run_dir)!r} has no {PUBLIC_KEY} beside its log: give the server's public key "
            "with --public-key PEM"
        )
    try:
        return load_public_key(beside.read_bytes(), PUBLIC_KEY), False
    except DataError as e:
        problems.append(f"{e} (changed); the signatures cannot be checked")
        return None, False


def _semantics(records: list[dict[str, Any] | None], key: str, problems: list[str]) -> None:
    """What the valid records say of each other: the key they name, each round starting from
    the aggregate of the round before, the export being the last round's state."""
    aggregates: dict[int, str] = {}
    last_round: dict[str, Any] | None = None
    for i, rec in enumerate(records, 1):
        if rec is None:
            continue
        kind = rec.get("kind")
        where = f"{LOG} line {i}"
        if kind in ("start", "resume") and key and rec.get("key") != key:
            problems.append(f"{where}: names key {rec.get('key')}, the signatures are by {key}")
        elif kind == "round":
            rnd = rec.get("round")
            earlier = aggregates.get(rnd - 1) if isinstance(rnd, int) else None
            if earlier is not None and rec.get("before") != earlier:
                problems.append(
                    f"{where}: round {rnd} did not start from round {rnd - 1}'s aggregate"
                )
            if isinstance(rnd, int):
                aggregates[rnd] = rec.get("aggregate")
            last_round = rec
            problems.extend(f"{where}: {p}" for p in _client_signatures(rec))
        elif (
            kind == "export"
            and last_round is not None
            and rec.get("state") != last_round.get("aggregate")
        ):
            problems.append(
                f"{where}: the exported state is not round {last_round.get('round')}'s aggregate"
            )


def _client_signatures(rec: dict[str, Any]) -> list[str]:
    """Each client's own signature of its upload (network runs): it must cover the payload
    hash the server recorded for it."""
    out = []
    for c in rec.get("clients") or []:
        signed = c.get("signed") if isinstance(c, dict) else None
        if not signed:
            continue
        try:
            key = public_from_raw(base64.b64decode(signed["public_key"], validate=True))
            signature = base64.b64decode(signed["signature"], validate=True)
            message = upload_message(
                str(rec.get("run")), c["id"], signed["round"], signed["stage"], c["payload"]
            )
            valid = signature_valid(key, signature, message)
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid:
            out.append(
                f"client {str(c.get('id'))[:80]!r}'s signature does not cover the upload "
                "recorded for it"
            )
    return out


def _newest(records: list[dict[str, Any] | None], match) -> tuple[int, dict[str, Any]] | None:
    """The newest valid record (line number, record) for which ``match(record)`` is true."""
    for i in range(len(records), 0, -1):
        rec = records[i - 1]
        if rec is not None and match(rec):
            return i, rec
    return None


def _compare(
    run_dir: Path, folder: Path, recorded: dict[str, str], line: int, problems: list[str]
) -> int:
    """Each file of ``folder`` against ``recorded`` ({relative path: sha256}); files checked."""
    actual = folder_sha256(folder) if folder.is_dir() else {}
    rel = _relative(run_dir, folder)
    for name, sha in recorded.items():
        if name not in actual:
            problems.append(f"{rel}/{name}: missing (recorded at {LOG} line {line})")
        elif actual[name] != sha:
            problems.append(
                f"{rel}/{name}: changed (its sha256 is not the one at {LOG} line {line})"
            )
    for name in actual.keys() - recorded.keys():
        problems.append(f"{rel}/{name}: not recorded in the log (added)")
    return len(actual)


def _relative(run_dir: Path, path: Path) -> str:
    try:
        return path.relative_to(run_dir).as_posix()
    except ValueError:
        return str(path)


def _files(run_dir: Path, records: list[dict[str, Any] | None], problems: list[str]) -> int:
    """Checkpoints, kept updates and the exported folder against the records; files checked."""
    checked = 0
    root = run_dir / CHECKPOINTS
    folders = sorted(p for p in root.glob("round_*") if p.is_dir()) if root.is_dir() else []
    for folder in folders:
        rel = folder.relative_to(run_dir).as_posix()
        found = _newest(
            records,
            lambda r, rel=rel: (
                r.get("kind") == "round"
                and isinstance(r.get("checkpoint"), dict)
                and r["checkpoint"].get("dir") == rel
            ),
        )
        if found is None:
            problems.append(f"{rel}: no valid record of {LOG} names this checkpoint")
            continue
        line, rec = found
        checked += _compare(run_dir, folder, rec["checkpoint"].get("files", {}), line, problems)
    kept = sorted((run_dir / UPDATES).glob("round_*.safetensors"))
    for path in kept:
        rel = path.relative_to(run_dir).as_posix()
        found = _newest(
            records,
            lambda r, rel=rel: (
                r.get("kind") == "round"
                and isinstance(r.get("kept"), dict)
                and r["kept"].get("file") == rel
            ),
        )
        checked += 1
        if found is None:
            problems.append(f"{rel}: no valid record of {LOG} names these kept updates")
        elif file_sha256(path) != found[1]["kept"].get("sha256"):
            problems.append(f"{rel}: changed (its sha256 is not the one at {LOG} line {found[0]})")
    export = _newest(records, lambda r: r.get("kind") == "export")
    last = _newest(records, lambda r: r.get("kind") in ("round", "export"))
    exported = [run_dir / d for d in EXPORT_DIRS if (run_dir / d).is_dir()]
    if export is None:
        problems.extend(
            f"{d.name}/: exported, but no valid export record names it" for d in exported
        )
        return checked
    line, rec = export
    if last is not None and last[0] > line:
        problems.append(
            f"{LOG} line {last[0]}: rounds were recorded after the last export (line {line}); "
            "the exported model is not the log's last state"
        )
    folder = run_dir / str(rec.get("dir", ""))
    if not folder.is_dir() or folder.resolve() == run_dir.resolve():
        problems.append(f"{rec.get('dir')}/: missing (exported at {LOG} line {line})")
        return checked
    return checked + _compare(run_dir, folder, rec.get("files", {}), line, problems)


def _config(run_dir: Path, records: list[dict[str, Any] | None], problems: list[str]) -> None:
    found = _newest(records, lambda r: r.get("kind") in ("start", "resume"))
    path = run_dir / "config.toml"
    if found is not None and path.is_file() and file_sha256(path) != found[1].get("config"):
        problems.append(
            f"config.toml: changed (its sha256 is not the one at {LOG} line {found[0]})"
        )


def verify_run(run_dir: Path, public_key: Path | None = None) -> Verification:
    """Check ``run_dir`` against its provenance log. Bad input (not a run directory, no log, an
    unreadable --public-key) raises :class:`DataError`; changes are in the result's problems."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.toml").is_file():
        raise DataError(f"{str(run_dir)!r} is not a run directory: it has no config.toml")
    log_path = run_dir / LOG
    if not log_path.is_file():
        raise DataError(
            f"{str(run_dir)!r} has no {LOG}: run it with [governance] provenance = true "
            "(--set governance.provenance=true)"
        )
    problems: list[str] = []
    key, pinned = _server_key(run_dir, public_key, problems)
    records, log_problems, _ = check_log(log_path.read_bytes(), key)
    problems.extend(log_problems)
    printed = fingerprint(key) if key is not None else ""
    _semantics(records, printed, problems)
    signed = sum(
        1
        for r in records
        if r is not None and r.get("kind") == "round"
        for c in r.get("clients") or []
        if isinstance(c, dict) and c.get("signed")
    )
    _config(run_dir, records, problems)
    files = _files(run_dir, records, problems)
    notes = []
    if not pinned:
        notes.append(
            f"signatures checked with {PUBLIC_KEY} beside the log: this proves the log is "
            "consistent with that key, not who wrote it (whoever rewrites the log can replace "
            "both); pin the server's key with --public-key"
        )
    return Verification(problems, len(records), files, printed, pinned, notes, signed)
