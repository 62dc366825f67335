"""Ed25519 signing keys: the server's (``[governance] signing_key``) and their public halves.

A key is a PEM file (PKCS#8, unencrypted). Without a configured path the server uses
``<config home>/keys/server.ed25519``, made on first use: mode 0600 in a 0700 folder, written
to a temporary file and linked into place, so two runs starting at once never see half a key
and never replace each other's. The config home is ``$FEDFM_CONFIG_HOME``, else
``$XDG_CONFIG_HOME/fedfm``, else ``~/.config/fedfm``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedfm.config.paths import resolve_path
from fedfm.errors import ConfigError, DataError

__all__ = [
    "client_key",
    "config_home",
    "default_key_path",
    "fingerprint",
    "load_private_key",
    "load_public_key",
    "public_from_raw",
    "public_pem",
    "raw_public",
    "server_key",
    "TrustedKeys",
    "load_trusted_keys",
    "raw_signature_valid",
    "signature_valid",
    "upload_message",
]


def config_home() -> Path:
    """fedfm's config folder: ``$FEDFM_CONFIG_HOME``, ``$XDG_CONFIG_HOME/fedfm`` or
    ``~/.config/fedfm``."""
    if os.environ.get("FEDFM_CONFIG_HOME"):
        return Path(os.environ["FEDFM_CONFIG_HOME"])
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "fedfm"


def default_key_path(name: str = "server") -> Path:
    return config_home() / "keys" / f"{name}.ed25519"


def _create_key(path: Path) -> None:
    """A new key at ``path`` (0600, folder 0700), unless another process made one first."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another run made one meanwhile: keep it
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_private_key(path: Path, what: str = "signing key") -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file ``path``; :class:`DataError` in one line."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        reason = e.strerror if isinstance(e, OSError) else str(e).splitlines()[0]
        raise DataError(
            f"{what} {str(path)!r} cannot be read: {reason} (an unencrypted PKCS#8 PEM Ed25519 key)"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise DataError(f"{what} {str(path)!r} is a {type(key).__name__}, not an Ed25519 key")
    return key


def server_key(configured: str) -> tuple[Ed25519PrivateKey, Path]:
    """The server's key and where it is: ``configured`` (must exist), or the default one,
    made on first use."""
    return _key(configured, "governance.signing_key", "server")


def client_key(configured: str | Path | None, client_id: str) -> tuple[Ed25519PrivateKey, Path]:
    """A network client's key (``fedfm join --signing-key``): ``configured`` (must exist), or
    ``<config home>/keys/client-<id>.ed25519``, made on first use."""
    if not configured and not CLIENT_FILE_NAME.match(client_id):
        raise ConfigError(
            f"--client-id {client_id[:80]!r} cannot name a key file (1–128 letters, digits, "
            "'_', '.' or '-', not starting with '.'); give --signing-key"
        )
    return _key(str(configured or ""), "--signing-key", f"client-{client_id}")


CLIENT_FILE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")


def _key(configured: str, option: str, default_name: str) -> tuple[Ed25519PrivateKey, Path]:
    if configured:
        path = resolve_path(configured)
        if not path.is_file():
            raise ConfigError(
                f"{option} = {configured!r}: no such file; give an Ed25519 PEM key, or leave "
                "it empty to use (and make) the default key"
            )
        return load_private_key(path, option), path
    path = default_key_path(default_name)
    if not path.exists():
        _create_key(path)
    return load_private_key(path), path


def raw_public(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of a (private key's) public key, as they travel at Join."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_from_raw(data: bytes) -> Ed25519PublicKey:
    """The Ed25519 public key of 32 raw bytes; ValueError otherwise."""
    if len(data) != 32:
        raise ValueError(f"{len(data)} bytes, not the 32 of an Ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(data)


def upload_message(run: str, client_id: str, rnd: int, stage: str, sha256: str) -> bytes:
    """What a network client signs for each upload: the run, itself, the round, the stage and
    the sha256 of the payload, so a signature cannot be replayed for another one."""
    return "\n".join(["fedfm-upload-v1", run, client_id, str(rnd), stage, sha256]).encode()


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(data: bytes, where: str) -> Ed25519PublicKey:
    """The Ed25519 public key in PEM ``data``; :class:`DataError` naming ``where``."""
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise DataError(f"{where}: not a PEM public key ({str(e).splitlines()[0]})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise DataError(f"{where}: a {type(key).__name__}, not an Ed25519 public key")
    return key


def fingerprint(key: Ed25519PublicKey) -> str:
    """``sha256:<hex>`` of the raw 32-byte public key."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def signature_valid(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def raw_signature_valid(public_key: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is the Ed25519 signature of ``message`` under the raw 32-byte
    ``public_key``; a malformed key or signature is simply not valid."""
    try:
        return signature_valid(public_from_raw(public_key), signature, message)
    except ValueError:
        return False


def load_trusted_keys(path: str | Path) -> dict[str, bytes]:
    """The roster a client pins (``fedfm join --trusted-keys FILE``): one ``<client id> <hex of
    the 32-byte Ed25519 public key>`` a line, ``#`` comments; :class:`ConfigError` in one line."""
    file = Path(path)
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--trusted-keys {str(file)!r} cannot be read: {e}") from None
    keys: dict[str, bytes] = {}
    for number, line in enumerate(lines, start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            if len(fields) != 2:
                raise ValueError(f"{len(fields)} fields, expected 2")
            key = bytes.fromhex(fields[1])
            public_from_raw(key)
        except ValueError as e:
            raise ConfigError(
                f"--trusted-keys {str(file)!r} line {number}: {e}; expected '<client id> "
                "<64 hex digits of an Ed25519 public key>'"
            ) from None
        if fields[0] in keys:
            raise ConfigError(f"--trusted-keys {str(file)!r} line {number}: {fields[0]!r} twice")
        keys[fields[0]] = key
    return keys


class TrustedKeys:
    """Which Ed25519 key each client id may sign with, for a client checking a roster the
    server sent (secure aggregation): a pinned list (``--trusted-keys``), else trust on first
    use: the first key seen for an id is the only one accepted for it afterwards (in this
    process). TOFU cannot catch a server that lies from the first round on (it can invent
    clients, Sybils, with keys of its own); a pinned list can."""

    def __init__(self, pinned: Mapping[str, bytes] | None = None) -> None:
        self.pinned = dict(pinned) if pinned is not None else None
        self.seen: dict[str, bytes] = {}

    def refusal(self, client_id: str, key: bytes) -> str | None:
        """Why ``key`` is not acceptable as ``client_id``'s, or None."""
        if self.pinned is not None:
            if client_id not in self.pinned:
                return f"client {client_id[:80]!r} is not in the trusted keys"
            if self.pinned[client_id] != key:
                return f"client {client_id[:80]!r} signs with a key other than its trusted one"
        elif client_id in self.seen and self.seen[client_id] != key:
            return f"client {client_id[:80]!r} signs with a key other than the one first seen"
        return None

    def remember(self, keys: Mapping[str, bytes]) -> None:
        """Trust on first use: keep the keys of a roster that passed every check."""
        for client_id, key in keys.items():
            self.seen.setdefault(client_id, key)
