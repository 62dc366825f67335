"""Who may join: per-client tokens from ``[server] tokens_file`` and optional mutual TLS.

The tokens file has one ``client_id token`` per line (``#`` starts a comment). It is re-read when
it changes, so removing a line revokes that client: its next call is refused.
"""

from __future__ import annotations

import hmac
import re
import threading
from pathlib import Path

from fedfm.errors import ConfigError

CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
MIN_TOKEN_CHARS = 16


def read_tokens(path: Path) -> dict[str, str]:
    """``{client_id: token}`` from a tokens file, in file order; malformed lines are errors."""
    if not path.is_file():
        raise ConfigError(f"server.tokens_file = {str(path)!r} does not exist")
    tokens: dict[str, str] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        where = f"server.tokens_file {str(path)!r} line {lineno}"
        if len(parts) != 2:
            raise ConfigError(f"{where}: expected 'client_id token', got {len(parts)} fields")
        cid, token = parts
        if not CLIENT_ID.match(cid):
            raise ConfigError(
                f"{where}: client id {cid!r} must be 1–128 letters, digits, '_', '.' or '-'"
            )
        if len(token) < MIN_TOKEN_CHARS:
            raise ConfigError(
                f"{where}: the token of {cid!r} has {len(token)} characters; at least "
                f"{MIN_TOKEN_CHARS} are required (e.g. python -c 'import secrets; "
                "print(secrets.token_hex(24))')"
            )
        if cid in tokens:
            raise ConfigError(f"{where}: client id {cid!r} appears twice")
        tokens[cid] = token
    if not tokens:
        raise ConfigError(f"server.tokens_file = {str(path)!r} lists no client")
    return tokens


class ClientRegistry:
    """The allowed clients; their order (the file's) fixes each client's index and seed."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._mtime = self.path.stat().st_mtime_ns if self.path.exists() else 0
        self.tokens = read_tokens(self.path)
        self.order = list(self.tokens)  # indices are stable: revoked ids keep their slot

    def _refresh(self) -> None:
        try:
            mtime = self.path.stat().st_mtime_ns
        except OSError:
            return
        if mtime == self._mtime:
            return
        try:
            tokens = read_tokens(self.path)
        except ConfigError:
            return  # a half-edited file: keep the last good registry
        with self._lock:
            self._mtime, self.tokens = mtime, tokens
            self.order.extend(c for c in tokens if c not in self.order)

    def allowed(self, client_id: str) -> bool:
        self._refresh()
        return client_id in self.tokens

    def check(self, client_id: str, token: str) -> str | None:
        """None if the client may join, else the reason it may not."""
        self._refresh()
        expected = self.tokens.get(client_id)
        if expected is None:
            return f"unknown or revoked client {client_id!r}"
        if not hmac.compare_digest(expected.encode(), token.encode()):
            return f"wrong token for client {client_id!r}"
        return None

    def index(self, client_id: str) -> int:
        return self.order.index(client_id)
