"""The network server's durable record: ``<run_dir>/server.sqlite`` plus payload files.

What it keeps: the clients that joined (the signing key each first joined with, and the last
round whose downlink each one fetched), the rounds (who was asked, who answered), every accepted
update (its bytes in ``updates/``, its SHA-256 here), and an event log of rejects and faults. After ``kill -9`` the server resumes from
the last round checkpoint; updates of the interrupted round that had already arrived are reused
instead of asking their clients again. Stdlib ``sqlite3`` in WAL mode; one lock serialises the
gRPC worker threads and the round loop.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT PRIMARY KEY, joined REAL, last_seen REAL, joins INTEGER DEFAULT 0);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, started REAL, finished REAL, selected TEXT, received TEXT);
CREATE TABLE IF NOT EXISTS updates (
    round INTEGER, client_id TEXT, sha256 TEXT, size INTEGER, path TEXT, received REAL,
    PRIMARY KEY (round, client_id));
CREATE TABLE IF NOT EXISTS events (
    time REAL, round INTEGER, client_id TEXT, kind TEXT, detail TEXT);
CREATE TABLE IF NOT EXISTS client_keys (client_id TEXT PRIMARY KEY, public_key BLOB);
CREATE TABLE IF NOT EXISTS update_signatures (
    round INTEGER, client_id TEXT, signed TEXT, PRIMARY KEY (round, client_id));
"""


class ServerStore:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.updates_dir = self.run_dir / "updates"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(self.run_dir / "server.sqlite"), check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def _exec(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # clients ---------------------------------------------------------------------------------
    def client_joined(self, client_id: str) -> None:
        now = time.time()
        self._exec(
            "INSERT INTO clients (client_id, joined, last_seen, joins) VALUES (?, ?, ?, 1) "
            "ON CONFLICT(client_id) DO UPDATE SET last_seen = ?, joins = joins + 1",
            (client_id, now, now, now),
        )

    def pin_key(self, client_id: str, public_key: bytes) -> bytes:
        """The signing key ``client_id`` is known by: the first one it joined with (kept)."""
        self._exec(
            "INSERT OR IGNORE INTO client_keys (client_id, public_key) VALUES (?, ?)",
            (client_id, public_key),
        )
        return self.pinned_key(client_id) or public_key

    def pinned_key(self, client_id: str) -> bytes | None:
        rows = self._exec("SELECT public_key FROM client_keys WHERE client_id = ?", (client_id,))
        return bytes(rows[0][0]) if rows else None

    def clients(self) -> list[dict]:
        rows = self._exec("SELECT client_id, joined, last_seen, joins FROM clients")
        return [
            dict(zip(("client_id", "joined", "last_seen", "joins"), r, strict=True)) for r in rows
        ]

    # rounds ----------------------------------------------------------------------------------
    def round_started(self, rnd: int, selected: list[str]) -> None:
        self._exec(
            "INSERT INTO rounds (round, started, selected) VALUES (?, ?, ?) "
            "ON CONFLICT(round) DO UPDATE SET started = excluded.started, "
            "selected = excluded.selected",
            (rnd, time.time(), json.dumps(selected)),
        )

    def round_finished(self, rnd: int, received: list[str]) -> None:
        self._exec(
            "UPDATE rounds SET finished = ?, received = ? WHERE round = ?",
            (time.time(), json.dumps(received), rnd),
        )
        # Updates of finished rounds are in the checkpoint now; keep one round for inspection.
        for (path,) in self._exec("SELECT DISTINCT path FROM updates WHERE round < ?", (rnd,)):
            shutil.rmtree(Path(path).parent, ignore_errors=True)
        self._exec("DELETE FROM updates WHERE round < ?", (rnd,))
        self._exec("DELETE FROM update_signatures WHERE round < ?", (rnd,))

    def rounds(self) -> list[dict]:
        rows = self._exec("SELECT round, started, finished, selected, received FROM rounds")
        keys = ("round", "started", "finished", "selected", "received")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    # updates ---------------------------------------------------------------------------------
    def save_update(self, rnd: int, client_id: str, payload: bytes) -> None:
        """Write an accepted update durably (temp file, fsync, rename) and record it."""
        folder = self.updates_dir / f"round_{rnd:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{client_id}.bin"
        tmp = folder / f".{client_id}.tmp"
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._exec(
            "INSERT OR REPLACE INTO updates VALUES (?, ?, ?, ?, ?, ?)",
            (
                rnd,
                client_id,
                hashlib.sha256(payload).hexdigest(),
                len(payload),
                str(path),
                time.time(),
            ),
        )

    def save_signature(self, rnd: int, client_id: str, signed: dict) -> None:
        """What the client signed for its stored update (a resumed server records it again)."""
        self._exec(
            "INSERT OR REPLACE INTO update_signatures VALUES (?, ?, ?)",
            (rnd, client_id, json.dumps(signed)),
        )

    def stored_signature(self, rnd: int, client_id: str) -> dict | None:
        rows = self._exec(
            "SELECT signed FROM update_signatures WHERE round = ? AND client_id = ?",
            (rnd, client_id),
        )
        try:
            signed = json.loads(rows[0][0]) if rows else None
        except ValueError:
            return None
        return signed if isinstance(signed, dict) else None

    def stored_update(self, rnd: int, client_id: str) -> bytes | None:
        """An update received before a crash, if its file is intact (else None)."""
        rows = self._exec(
            "SELECT sha256, path FROM updates WHERE round = ? AND client_id = ?", (rnd, client_id)
        )
        if not rows:
            return None
        digest, path = rows[0]
        try:
            data = Path(path).read_bytes()
        except OSError:
            return None
        return data if hashlib.sha256(data).hexdigest() == digest else None

    # events ----------------------------------------------------------------------------------
    def event(self, kind: str, client_id: str = "", rnd: int = 0, detail: str = "") -> None:
        self._exec(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?)", (time.time(), rnd, client_id, kind, detail)
        )

    def events(self, kind: str | None = None) -> list[dict]:
        sql = "SELECT time, round, client_id, kind, detail FROM events"
        rows = self._exec(sql + " WHERE kind = ?", (kind,)) if kind else self._exec(sql)
        keys = ("time", "round", "client_id", "kind", "detail")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
