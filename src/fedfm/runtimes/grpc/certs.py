"""``fedfm certs DIR``: a throw-away certificate authority, server and client certificates; and
the server's TLS credentials from ``[server]`` (:func:`server_credentials`).

For trying the network runtime out; in production point ``[server] certificate``,
``private_key`` and ``root_certificate`` at certificates from your own PKI. Keys are EC P-256,
written with mode 0600; certificates last ``days`` days.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

import grpc

from fedfm.config import ServerConfig
from fedfm.errors import ConfigError


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedfm"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _issue(
    subject: str, key, issuer_name, issuer_key, *, ca: bool, sans=(), client=False, days=365
):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name or _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        names = []
        for s in sans:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(s)))
            except ValueError:
                names.append(x509.DNSName(s))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if not ca:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def make_certs(
    out: str | Path,
    hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
    clients: tuple[str, ...] = (),
    days: int = 365,
    force: bool = False,
) -> dict[str, Path]:
    """Write ``ca.pem``/``ca.key``, ``server.pem``/``server.key`` and ``<client>.pem``/``.key``.

    An existing CA in ``out`` is kept (an error) unless ``force``: a new CA invalidates every
    certificate the old one signed."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if days < 1:
        raise ConfigError(f"certificate lifetime days = {days} must be ≥ 1")
    if not hosts:
        raise ConfigError("the server certificate needs at least one host name or IP")
    out = Path(out)
    existing = [out / n for n in ("ca.pem", "ca.key") if (out / n).exists()]
    if existing and not force:
        raise ConfigError(
            f"{str(existing[0])!r} exists: a new CA would invalidate every certificate it signed; "
            "use another folder, or --force to replace it"
        )
    out.mkdir(parents=True, exist_ok=True)

    def pem_key(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def pem_cert(cert) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    written: dict[str, Path] = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("fedfm test CA", ca_key, None, None, ca=True, days=days)
    for name, data, private in (("ca.key", pem_key(ca_key), True), ("ca.pem", pem_cert(ca), False)):
        _write(out / name, data, private)
        written[name] = out / name
    entries = [("server", hosts, False)] + [(c, (), True) for c in clients]
    for name, sans, client in entries:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(name, key, ca.subject, ca_key, ca=False, sans=sans, client=client, days=days)
        _write(out / f"{name}.key", pem_key(key), True)
        _write(out / f"{name}.pem", pem_cert(cert), False)
        written[f"{name}.pem"] = out / f"{name}.pem"
        written[f"{name}.key"] = out / f"{name}.key"
    return written


def server_credentials(settings: ServerConfig, base: Path) -> grpc.ServerCredentials | None:
    """TLS credentials from ``[server]`` (paths relative to ``base``), or None without TLS."""
    if not settings.tls:
        if settings.mutual_tls:
            raise ConfigError("server.mutual_tls = true needs server.tls = true")
        return None

    def path(value: str, default: str, key: str) -> Path:
        p = Path(value) if value else Path(settings.certs_dir) / default
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            raise ConfigError(
                f"server.{key} = {str(p)!r} does not exist; create test certificates with "
                f"`fedfm certs {settings.certs_dir}` or point server.{key} at yours"
            )
        return p

    cert = path(settings.certificate, "server.pem", "certificate").read_bytes()
    key = path(settings.private_key, "server.key", "private_key").read_bytes()
    root = None
    if settings.mutual_tls:
        root = path(settings.root_certificate, "ca.pem", "root_certificate").read_bytes()
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=root, require_client_auth=settings.mutual_tls
    )
