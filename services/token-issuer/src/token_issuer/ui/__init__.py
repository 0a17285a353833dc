"""The reference web page at `/ui/`: MyScanner's scanner list, properties page and "Authorise
scanner" dialog, a plain client of this service's API (static ES modules, no build step).

Every answer under `/ui/` carries a strict Content-Security-Policy (no inline script or style,
no other origin, Trusted Types) and `X-Content-Type-Options: nosniff`. Besides the static
files there are two small JSON documents:

- `config.json`: the host origins allowed to frame the page and hand it a bearer token with
  `postMessage` (`UI_HOST_ORIGINS`), and whether the dev identities exist.
- `dev/identities.json`: only when `UI_DEV_IDENTITIES_FILE` is set (by `scanner-auth dev`),
  and only to a loopback client: the demo users and their JWTs, for the "Acting as" picker.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..settings import Settings, host_origins

__all__ = ["content_security_policy", "host_origins", "mount", "ui_app"]

STATIC = Path(__file__).parent / "static"
PREFIX = "/ui"


def content_security_policy(origins: list[str]) -> str:
    ancestors = " ".join(origins) if origins else "'none'"
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; "
        f"frame-ancestors {ancestors}; "
        "require-trusted-types-for 'script'; trusted-types 'none'"
    )


class SecurityHeaders:
    """Adds the page's security headers to every answer under /ui/."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.headers = [
            (b"content-security-policy", content_security_policy(origins).encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
            (b"cross-origin-resource-policy", b"same-origin"),
        ]
        if not origins:
            self.headers.append((b"x-frame-options", b"DENY"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() not in {name for name, _ in self.headers}
                    and k.lower() != b"cache-control"
                ]
                cache = b"no-store" if scope["path"].endswith(".json") else b"no-cache"
                message["headers"] = [*headers, *self.headers, (b"cache-control", cache)]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ui_app(*, origins: list[str], dev_identities_file: str | None) -> ASGIApp:
    async def config(_: Request) -> Response:
        return JSONResponse(
            {"host_origins": origins, "dev_identities": dev_identities_file is not None}
        )

    async def dev_identities(request: Request) -> Response:
        # Demo JWTs, for `scanner-auth dev` only: never configured outside it, and even then
        # served only to this machine.
        path = Path(dev_identities_file) if dev_identities_file else None
        if path is None or not _loopback(request) or not path.is_file():
            return JSONResponse({"detail": "not found"}, status_code=404)
        document: Any = json.loads(path.read_text())
        return JSONResponse(document)

    app = Starlette(
        routes=[
            Route("/config.json", config, methods=["GET"]),
            Route("/dev/identities.json", dev_identities, methods=["GET"]),
            Mount("/", StaticFiles(directory=STATIC, html=True)),
        ]
    )
    return SecurityHeaders(app, origins)


def mount(app: Starlette, settings: Settings) -> None:
    """Serve the page at /ui/ (unless `UI_ENABLED=false`)."""
    if not settings.ui_enabled:
        return
    app.mount(
        PREFIX,
        ui_app(
            origins=host_origins(settings.ui_host_origins),
            dev_identities_file=settings.ui_dev_identities_file,
        ),
        name="ui",
    )
