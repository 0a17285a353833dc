"""HTTP pieces every service shares: RFC 9457 problems, health, readiness, metrics, client IP."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics

PROBLEM = "application/problem+json"


class ProblemResponse(Response):
    media_type = PROBLEM

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        type_: str = "about:blank",
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        body: dict[str, Any] = {"type": type_, "title": title, "status": status}
        if detail:
            body["detail"] = detail
        body.update(extensions)
        super().__init__(orjson.dumps(body), status_code=status, headers=headers)


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


ReadinessCheck = Callable[[], Awaitable[tuple[str, bool]]]


def ops_routes(readiness: Callable[[], Awaitable[dict[str, bool]]]) -> list[Route]:
    """/healthz (alive), /readyz (every dependency and consumer up), /metrics."""

    async def healthz(_: Request) -> Response:
        return FastJSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        checks = await readiness()
        ready = bool(checks) and all(checks.values())
        return FastJSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    async def metrics_(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/healthz", healthz, methods=["GET"], include_in_schema=False),
        Route("/readyz", readyz, methods=["GET"], include_in_schema=False),
        Route("/metrics", metrics_, methods=["GET"], include_in_schema=False),
    ]


class MetricsMiddleware:
    """Counts and times requests by route template (never by raw path: ids would explode it)."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service
        # (route template, status) -> its counter and histogram: `labels()` validates and locks
        # on every call, about as much CPU as the rest of this middleware (bench/README.md).
        self._series: dict[tuple[str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            series = self._series.get((template, status))
            if series is None:
                series = self._series[(template, status)] = (
                    metrics.HTTP_REQUESTS.labels(self.service, template, str(status)),
                    metrics.HTTP_LATENCY.labels(self.service, template),
                )
            series[0].inc()
            series[1].observe(time.perf_counter() - started)


async def read_limited(receive: Receive, limit: int) -> bytes | None:
    """The request body, read from the ASGI messages, or None as soon as it is larger than
    `limit` bytes (the rest is never read: the caller answers 413 and closes). Raises
    starlette's ClientDisconnect when the client leaves mid-body. Check the declared
    Content-Length against `limit` first: it costs nothing."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def declared_too_large(content_length: str | None, limit: int) -> bool:
    """A Content-Length header that already says the body is larger than `limit`."""
    return content_length is not None and content_length.isdigit() and int(content_length) > limit


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(spec: str | Iterable[str]) -> tuple[Network, ...]:
    """TRUSTED_PROXIES: comma-separated addresses or CIDRs."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in items if item.strip())


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]
) -> str:
    """The client's address: the socket peer, unless the peer is a trusted proxy, in which case
    X-Forwarded-For is walked from the right past trusted proxies to the first untrusted hop."""
    peer = peer or "unknown"

    def is_trusted(addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr)
        except ValueError:
            return False
        return any(ip in net for net in trusted)

    if not trusted or not forwarded_for or not is_trusted(peer):
        return peer
    hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # a forged or garbled header: fall back to what we know
    return hops[0] if hops else peer
