"""Signed provenance (``[governance] provenance``): an append-only, hash-chained log of what the
server did, ``<run_dir>/provenance.jsonl``, each record signed with the server's Ed25519 key.

One JSON object per line, in canonical form (sorted keys, no spaces, ASCII)::

    start    the run began: fedfm version, the key's fingerprint, sha256 of config.toml
    resume   the run was resumed (same fields); the chain goes on from the last record
    round    round, config, strategy, codecs, per admitted client the sha256 of its upload,
             the digest of its decoded update, its example count and (over the network) its
             own signature of the upload with its public key; the digests of the state the
             round started from and of the aggregate, the sha256 of every checkpoint file and
             of the kept-updates file
    export   the exported folder's files (sha256 each) and the final state's digest

Every record holds ``seq`` (its line number from 0), ``prev`` (sha256 of the previous line's
bytes; 64 zeros for the first) and ``sig``: the base64 Ed25519 signature of the record's
canonical JSON without ``sig``. A state's digest is the sha256 over its tensors in name order
(name, dtype, shape, raw bytes): the same tensors give the same digest whatever file they are in.

A resume redoes the rounds after the last checkpoint; a round the log already holds is recorded
again with ``redo: true`` (the log is append-only: both stay, the later one counts).
:func:`check_log` is what ``fedfm verify`` and a resume run on an existing log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedfm.config import ExperimentConfig, config_to_dict
from fedfm.errors import ConfigError, ResumeError
from fedfm.governance.kept import round_path
from fedfm.server.observers import RoundObserver, RoundRecord
from fedfm.signing import fingerprint, public_pem, signature_valid
from fedfm.state import State

LOG = "provenance.jsonl"
PUBLIC_KEY = "provenance.pub"
GENESIS = "0" * 64

__all__ = [
    "GENESIS",
    "LOG",
    "PUBLIC_KEY",
    "ProvenanceLog",
    "canonical",
    "check_log",
    "file_sha256",
    "folder_sha256",
    "state_digest",
]


def canonical(record: Mapping[str, Any]) -> bytes:
    """The one byte form of a record: sorted keys, no spaces, ASCII only."""
    return json.dumps(
        record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the tensors in name order: each one's name, dtype and shape (as JSON, length
    prefixed) and its raw bytes."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        head = json.dumps([name, str(t.dtype).removeprefix("torch."), list(t.shape)]).encode()
        h.update(len(head).to_bytes(8, "little") + head)
        raw = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
        h.update(len(raw).to_bytes(8, "little"))
        h.update(memoryview(raw))
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def folder_sha256(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``, sorted."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): file_sha256(p) for p in files}


def sign(key: Ed25519PrivateKey, record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "sig": base64.b64encode(key.sign(canonical(record))).decode()}


def _line_problem(raw: bytes, rec: Any, seq: int, prev: str, key: Ed25519PublicKey | None) -> str:
    """Why line ``seq`` is not a record fedfm wrote (empty: it is)."""
    if not isinstance(rec, dict):
        return "not a JSON record"
    if canonical(rec) != raw:
        return "not in the canonical form fedfm writes (changed)"
    if rec.get("seq") != seq:
        return f"out of place: its seq is {rec.get('seq')!r}, expected {seq}"
    if rec.get("prev") != prev:
        return "the chain is broken: prev is not the sha256 of the line before"
    sig = rec.get("sig")
    try:
        signature = base64.b64decode(sig, validate=True) if isinstance(sig, str) else b""
    except (binascii.Error, ValueError):
        signature = b""
    if not signature or base64.b64encode(signature).decode() != sig:
        return "its signature is not base64 of 64 bytes (changed)"
    if key is not None:
        unsigned = {k: v for k, v in rec.items() if k != "sig"}
        if not signature_valid(key, signature, canonical(unsigned)):
            return "the signature does not verify with the server's public key"
    return ""


def check_log(
    data: bytes, key: Ed25519PublicKey | None
) -> tuple[list[dict[str, Any] | None], list[str], str]:
    """Parse and check a log's bytes: the records (None where a line fails), the problems (one
    line each, naming the log's line number from 1) and the sha256 of the last line.
    ``key`` None checks everything but the signatures."""
    lines = data.split(b"\n")
    problems = []
    if lines[-1] != b"":
        problems.append(f"{LOG} line {len(lines)}: the log does not end with a newline (changed)")
    else:
        lines.pop()
    records: list[dict[str, Any] | None] = []
    prev = GENESIS
    for seq, raw in enumerate(lines):
        try:
            rec = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            rec = None
        problem = _line_problem(raw, rec, seq, prev, key)
        if problem:
            problems.append(f"{LOG} line {seq + 1}: {problem}")
        records.append(None if problem else rec)
        prev = hashlib.sha256(raw).hexdigest()
    return records, problems, prev


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _fedfm_version() -> str:
    try:
        return metadata.version("fedfm")
    except metadata.PackageNotFoundError:
        return "unknown"


class ProvenanceLog(RoundObserver):
    """Appends the signed records of a run to ``<run_dir>/provenance.jsonl`` (flushed and
    fsynced one by one); on a run directory that has one, checks it and continues its chain."""

    def __init__(self, run_dir: Path, config: ExperimentConfig, key: Ed25519PrivateKey) -> None:
        self.run_dir = run_dir
        self.path = run_dir / LOG
        self.key = key
        public = key.public_key()
        self.fingerprint = fingerprint(public)
        self.run_name = config.name
        self.strategy = config.strategy.plugin_name
        self.codec = {"down": list(config.codec.down), "up": list(config.codec.up)}
        self.keep_updates = config.governance.keep_updates
        self.seq, self.prev, self.recorded = 0, GENESIS, 0
        pub_path = run_dir / PUBLIC_KEY
        kind = "start"
        if self.path.is_file():
            self._continue(pub_path, public)
            kind = "resume"
        if not pub_path.is_file() or kind == "start":
            tmp = pub_path.with_name(f".tmp_{PUBLIC_KEY}")
            tmp.write_bytes(public_pem(public))
            os.replace(tmp, pub_path)
        config_file = run_dir / "config.toml"
        self.config_hash = (
            file_sha256(config_file)
            if config_file.is_file()
            else _sha(canonical(config_to_dict(config)))
        )
        self._last: tuple[State | None, str] = (None, "")
        self._append(
            {
                "kind": kind,
                "fedfm": _fedfm_version(),
                "key": self.fingerprint,
                "config": self.config_hash,
                "time": _now(),
            }
        )

    def _continue(self, pub_path: Path, public: Ed25519PublicKey) -> None:
        """Check the log this run continues; refuse (nothing written) when it is broken or was
        signed with another key."""
        if pub_path.is_file() and pub_path.read_bytes() != public_pem(public):
            raise ConfigError(
                f"governance.signing_key: {self.fingerprint} is not the key that signed "
                f"{str(self.path)!r} (its public key is {str(pub_path)!r}); resume with that key"
            )
        records, problems, last = check_log(self.path.read_bytes(), public)
        if problems:
            raise ResumeError(
                f"{str(self.path)!r} cannot be continued: {problems[0]}"
                + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                + "; nothing was written (fedfm verify lists every problem)"
            )
        self.seq, self.prev = len(records), last
        rounds = [r.get("round", 0) for r in records if r is not None and r["kind"] == "round"]
        self.recorded = max(rounds, default=0)

    def _append(self, record: dict[str, Any]) -> str:
        line = canonical(sign(self.key, {**record, "seq": self.seq, "prev": self.prev}))
        with open(self.path, "ab") as f:
            f.write(line + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self.seq, self.prev = self.seq + 1, _sha(line)
        return self.prev

    def _digest(self, state: State) -> str:
        """A state's digest; the last one is remembered (a round starts from the state the one
        before ended with, and the export is the last round's state: hashed once)."""
        last, digest = self._last
        if state is not last:
            digest = state_digest(state)
            self._last = (state, digest)
        return digest

    def round(self, record: RoundRecord) -> None:
        rnd = record.round
        before = self._digest(record.before)
        clients: list[dict[str, Any]] = [
            {
                "id": u.client_id,
                "payload": _sha(record.payloads.get(u.client_id, b"")),
                "update": state_digest(u.state),
                "examples": int(u.num_examples),
                "signed": record.signatures.get(u.client_id),  # over the network: by the client
            }
            for u in record.updates
        ]
        secure = not record.updates and bool(record.row.get("clients"))
        if secure:  # only the sum reached the server
            clients = [{"id": str(c)} for c in record.row["clients"]]
        entry: dict[str, Any] = {
            "kind": "round",
            "run": self.run_name,
            "round": rnd,
            "config": self.config_hash,
            "strategy": self.strategy,
            "codec": self.codec,
            "clients": clients,
            "secure": secure,
            "before": before,
            "aggregate": self._digest(record.after),
            "checkpoint": None,
            "kept": None,
            "redo": rnd <= self.recorded,
        }
        if record.checkpoint is not None:
            folder = Path(record.checkpoint)
            entry["checkpoint"] = {
                "dir": self._relative(folder),
                "files": folder_sha256(folder),
            }
        kept = round_path(self.run_dir, rnd)
        if self.keep_updates and record.updates and kept.is_file():
            entry["kept"] = {"file": self._relative(kept), "sha256": file_sha256(kept)}
        self._append(entry)
        self.recorded = max(self.recorded, rnd)

    def finish(self, run_dir: Path, state: State, export_dir: Path) -> dict[str, Any]:
        head = self._append(
            {
                "kind": "export",
                "dir": self._relative(export_dir),
                "files": folder_sha256(export_dir),
                "state": self._digest(state),
                "time": _now(),
            }
        )
        return {
            "provenance": {"log": LOG, "records": self.seq, "head": head, "key": self.fingerprint}
        }

    def _relative(self, path: Path) -> str:
        try:
            return Path(path).resolve().relative_to(self.run_dir.resolve()).as_posix()
        except ValueError:
            return str(path)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
