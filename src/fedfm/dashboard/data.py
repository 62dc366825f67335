"""What the dashboard shows, read from a run directory while the run writes it.

Everything comes from the run directory's contract (:mod:`fedfm.rundir`): ``config.toml`` (the
planned rounds, the privacy settings), ``metrics.jsonl`` (one row per finished round),
``summary.json`` (once the run finished) and, for a served run, ``server.sqlite`` (the clients
that joined, the late and refused ones). Files are only read: the run owns them (SQLite may add
its usual ``-wal``/``-shm`` companions beside ``server.sqlite``). A row half written at the
moment of reading is left for the next poll.
"""

from __future__ import annotations

import json
import math
import sqlite3
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedfm.errors import FedFMError

# The events of server.sqlite the page lists, by what they mean to an operator.
LATE_EVENTS = ("straggler", "late")
REFUSED_EVENTS = ("refused", "upload_refused")
MAX_LISTED = 50  # the latest late and rejected entries sent to the page

Live = Callable[[], dict[str, Any]]


def check_run_dir(path: str | Path) -> Path:
    """``path`` as a run directory (it has a config.toml), or a FedFMError naming it."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise FedFMError(f"RUN_DIR {str(path)!r} does not exist")
    if not (run_dir / "config.toml").is_file():
        raise FedFMError(f"RUN_DIR {str(path)!r} is not a run directory: it has no config.toml")
    return run_dir


def finite(value: Any) -> Any:
    """``value`` with NaN and ±inf replaced by None, at any depth (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The complete rows of ``metrics.jsonl`` (a last line still being written is skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("round"), int):
            rows.append(row)
    return rows


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, tomllib.TOMLDecodeError):
        return {}


def _server_record(path: Path) -> dict[str, Any] | None:
    """Joined clients and the late and refused events of ``server.sqlite`` (read-only), or None
    when the run was not served."""
    if not path.is_file():
        return None
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return None
    try:
        joined = [r[0] for r in db.execute("SELECT client_id FROM clients ORDER BY joined")]
        kinds = LATE_EVENTS + REFUSED_EVENTS
        marks = ", ".join("?" * len(kinds))
        events = db.execute(
            f"SELECT round, client_id, kind, detail FROM events WHERE kind IN ({marks}) "
            "ORDER BY time",
            kinds,
        ).fetchall()
    except sqlite3.Error:  # the server is creating its tables: next poll
        return None
    finally:
        db.close()
    return {"joined": joined, "events": events}


def _clients(rows: list[dict[str, Any]], server: dict[str, Any] | None) -> dict[str, Any]:
    """Late and rejected clients: the server's event log when served, plus the updates the round
    loop refused (recorded in each row's ``rejected``)."""
    late, rejected = [], []
    if server is not None:
        for rnd, cid, kind, detail in server["events"]:
            entry = {"round": rnd, "client": cid, "reason": detail}
            (late if kind in LATE_EVENTS else rejected).append(entry)
    seen_late = {(e["round"], e["client"]) for e in late}
    for row in rows:
        for cid in row.get("rejected") or ():
            if (row["round"], cid) not in seen_late:  # a straggler is late, not refused
                rejected.append({"round": row["round"], "client": cid, "reason": "update refused"})
    return {
        "joined": server["joined"] if server is not None else None,
        "connected": None,
        "late_total": len(late),
        "rejected_total": len(rejected),
        "late": late[-MAX_LISTED:],
        "rejected": rejected[-MAX_LISTED:],
    }


def snapshot(run_dir: Path | None, live: Live | None = None) -> dict[str, Any]:
    """The JSON document of ``/api/metrics``: the run, its rounds so far, the summary once
    finished, and its clients. ``live()`` adds what only the serving process knows (the clients
    connected now); ``run_dir`` None: a server still loading its model."""
    if run_dir is None:
        return {"run": None, "rounds": [], "summary": None, "clients": None, "live": True}
    config = _read_config(run_dir / "config.toml")
    federation = config.get("federation", {})
    privacy = config.get("privacy", {})
    rows = read_rows(run_dir / "metrics.jsonl")
    summary = _read_json(run_dir / "summary.json")
    server = _server_record(run_dir / "server.sqlite")
    clients = _clients(rows, server)
    if live is not None:
        clients["connected"] = live().get("connected")
    dp = privacy.get("dp", "none") != "none" or any(r.get("epsilon") is not None for r in rows)
    return finite(
        {
            "run": {
                "name": config.get("name", run_dir.name),
                "run_dir": str(run_dir),
                "rounds_planned": federation.get("rounds"),
                "clients_per_round": federation.get("clients_per_round"),
                "differential_privacy": dp,
                "served": server is not None,
                "finished": summary is not None,
            },
            "rounds": rows,
            "summary": summary,
            # simulated clients are always there: only a refusal is news
            "clients": clients if server or live or clients["rejected_total"] else None,
            "live": live is not None,
        }
    )
