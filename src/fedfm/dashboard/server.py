"""The dashboard's HTTP server: uvicorn on a socket bound up front, in a background thread.

Binding first turns a taken or bad port into one clear error before anything else starts (and
lets port 0 pick a free port). Bound to loopback by default; bound elsewhere, the dashboard
requires a token (generated when not given) on every request.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import socket
import threading

import uvicorn

from fedfm.dashboard.app import RunSource, create_app
from fedfm.errors import FedFMError

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback interface only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_port(port: int, flag: str = "--port") -> int:
    """``port`` if it is a TCP port number (0: any free port), else a FedFMError naming it."""
    if not 0 <= port <= 65535:
        raise FedFMError(f"{flag} {port} is not allowed; allowed: 0 … 65535 (0 = any free port)")
    return port


def bind(host: str, port: int, flag: str = "--port") -> socket.socket:
    """A listening socket on ``host:port``, or a FedFMError saying why not."""
    check_port(port, flag)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM
        )[0]
    except socket.gaierror:
        raise FedFMError(f"--host {host!r} is not an address of this machine") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not a live listener's port
        sock.bind(address)
        sock.listen(64)
    except OSError as e:
        sock.close()
        if e.errno in (98, 48, 10048):  # EADDRINUSE on Linux, macOS, Windows
            raise FedFMError(
                f"{flag} {port}: {host}:{port} is already in use; choose another port"
            ) from None
        raise FedFMError(f"{flag} {port}: cannot listen on {host}:{port} ({e.strerror})") from None
    sock.setblocking(False)
    return sock


class DashboardServer:
    """Serves the dashboard of ``source`` on ``host:port`` once :meth:`start` is called.

    ``token``: required on every request; None bound to loopback means none, None bound
    elsewhere means a new random one (see :attr:`url`, which carries it).
    """

    def __init__(
        self,
        source: RunSource,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        token: str | None = None,
        flag: str = "--port",
    ) -> None:
        loopback = is_loopback(host)
        if token is not None and not token.strip():
            raise FedFMError("--token is empty; give a token or leave --token out")
        if token is None and not loopback:
            token = secrets.token_urlsafe(24)
        self.token = token
        self.socket = bind(host, port, flag)
        self.host = host
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(
            create_app(source, token, loopback),
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name="fedfm-dashboard"
        )
        self.thread.daemon = True  # never keeps a finished (or interrupted) run alive

    @property
    def url(self) -> str:
        """The page's address (with ``?token=`` when it needs one)."""
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"
        query = f"?token={self.token}" if self.token else ""
        return f"http://{host}:{self.port}/{query}"

    def start(self) -> DashboardServer:
        self.thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving (open page requests get up to a second to finish)."""
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout)
        self.socket.close()

    def wait(self) -> None:
        """Serve until interrupted (Ctrl-C: the usual way to stop it), then stop."""
        try:
            while self.thread.is_alive():
                self.thread.join(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()
