"""The dashboard's web application (Starlette): one page, its assets, and ``/api/metrics``.

Read-only: every route answers GET (and HEAD) only. The page polls ``/api/metrics`` once a
second and redraws; its script, style and chart code ship in this package (``static/``), nothing
is fetched from elsewhere (the Content-Security-Policy says so to the browser).

Security: with a token every request must carry it, as ``Authorization: Bearer TOKEN`` or as
``?token=TOKEN`` (how the browser's first request and the page's own requests carry it); it is
compared in constant time, anything else gets 401. Without a token (loopback only, see
:mod:`fedfm.dashboard.server`) the Host header must name the loopback interface, so that a web
page elsewhere cannot read the metrics through DNS rebinding.
"""

from __future__ import annotations

import hmac
from importlib import resources
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from fedfm.dashboard.data import Live, snapshot

LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1", "[::1]"]
ASSETS = {  # file → media type; the only files served
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # the token may be in the page's address
    "Cache-Control": "no-store",
}


class RunSource:
    """Where the page's data come from: a run directory (set later by a server still loading its
    model) and, in the serving process, ``live()`` for what only it knows."""

    def __init__(self, run_dir: Path | None = None, live: Live | None = None) -> None:
        self.run_dir = run_dir
        self.live = live

    def attach(self, run_dir: Path, live: Live | None = None) -> None:
        """The run directory exists now (and the server's ``live()``)."""
        self.live = live if live is not None else self.live
        self.run_dir = Path(run_dir)

    def snapshot(self) -> dict:
        return snapshot(self.run_dir, self.live)


class TokenMiddleware:
    """401 for any request without the token (header or query), compared in constant time.

    The page's script and style (``/static/``) are the package's own files, the same for every
    run: the browser loads them without the token; the page and its data need it."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        public = scope["type"] == "http" and scope["path"].startswith("/static/")
        if scope["type"] == "http" and not public and not self._allowed(Request(scope)):
            response = PlainTextResponse(
                "401: this dashboard needs its token (?token=... or Authorization: Bearer ...)",
                status_code=401,
                headers={"WWW-Authenticate": "Bearer", **HEADERS},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, request: Request) -> bool:
        given = request.query_params.get("token", "")
        header = request.headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            given = header[7:].strip()
        return hmac.compare_digest(given.encode(), self.token)


def _asset(name: str) -> bytes:
    return resources.files("fedfm.dashboard").joinpath("static", name).read_bytes()


def create_app(source: RunSource, token: str | None = None, loopback: bool = True) -> Starlette:
    """The dashboard of ``source``: ``token`` required on every request when given; a loopback
    binding accepts only loopback Host headers."""

    async def page(request: Request) -> Response:
        return Response(
            _asset("index.html"), media_type="text/html; charset=utf-8", headers=HEADERS
        )

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return PlainTextResponse("404: not found", status_code=404, headers=HEADERS)
        return Response(_asset(name), media_type=ASSETS[name], headers=HEADERS)

    def metrics(request: Request) -> Response:  # reads files: Starlette runs it in a thread
        return JSONResponse(source.snapshot(), headers=HEADERS)

    middleware = []
    if loopback:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_HOSTS))
    if token:
        middleware.append(Middleware(TokenMiddleware, token=token))
    routes = [
        Route("/", page, methods=["GET", "HEAD"]),
        Route("/static/{name}", asset, methods=["GET", "HEAD"]),
        Route("/api/metrics", metrics, methods=["GET", "HEAD"]),
    ]
    return Starlette(routes=routes, middleware=middleware)
