"""Building a service's HTTP app: FastAPI (documented APIs) or plain Starlette (hot paths), both
with RFC 9457 problem responses, /healthz, /readyz, /metrics and request metrics."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from .db import is_infrastructure_error
from .http import PROBLEM, MetricsMiddleware, ProblemResponse, ops_routes
from .runtime import ServiceRuntime, lifespan_for

log = logging.getLogger("scanner_auth.api")

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    503: "Service Unavailable",
}


def problem(
    status: int,
    detail: str | None = None,
    *,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> ProblemResponse:
    return ProblemResponse(
        status, title or _TITLES.get(status, "Error"), detail, headers=headers, **extensions
    )


class Problem(HTTPException):
    """Raise from a route: becomes an application/problem+json response."""

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.title = title
        self.extensions = extensions


async def _http_exception(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers) if exc.headers else None
    if isinstance(exc, Problem):
        return problem(
            exc.status_code, exc.detail, title=exc.title, headers=headers, **exc.extensions
        )
    detail = exc.detail if isinstance(exc.detail, str) else None
    return problem(exc.status_code, detail, headers=headers)


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # Never echo the input: a malformed body may still carry a code or credential.
    errors = [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "msg": e.get("msg", ""),
            "type": e.get("type", ""),
        }
        for e in exc.errors()
    ]
    return problem(422, "the request is malformed", errors=errors)


_UNAVAILABLE_DOC: dict[int | str, dict[str, Any]] = {
    503: {
        "description": "A dependency (the database or Kafka) is unreachable for a moment; "
        "`Retry-After` says when to try again.",
        "content": {PROBLEM: {}},
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before trying again.",
                "schema": {"type": "integer"},
            }
        },
    }
}


async def _unexpected(_: Request, exc: Exception) -> Response:
    # An outage is the client's cue to retry; anything else is our bug. Neither says more.
    if is_infrastructure_error(exc):
        log.warning("dependency unavailable", extra={"error": type(exc).__name__})
        return problem(
            503, "temporarily unavailable; try again shortly", headers={"Retry-After": "5"}
        )
    log.error("unhandled error", exc_info=exc)
    return problem(500, "an unexpected error occurred")


def fastapi_app(
    runtime: ServiceRuntime,
    *,
    title: str,
    version: str = "1.0.0",
    description: str = "",
    routers: Sequence[Any] = (),
) -> FastAPI:
    app = FastAPI(
        title=title,
        version=version,
        description=description,
        lifespan=lifespan_for(runtime),
        routes=list(ops_routes(runtime.readiness)),
        exception_handlers={
            StarletteHTTPException: _http_exception,
            RequestValidationError: _validation_error,
            Exception: _unexpected,
        },
    )
    for router in routers:
        app.include_router(router, responses=_UNAVAILABLE_DOC)
    app.add_middleware(MetricsMiddleware, service=runtime.name)
    runtime.app = app
    return app


def starlette_app(runtime: ServiceRuntime, routes: Sequence[BaseRoute] = ()) -> Starlette:
    app = Starlette(
        routes=[*ops_routes(runtime.readiness), *routes],
        lifespan=lifespan_for(runtime),
        middleware=[Middleware(MetricsMiddleware, service=runtime.name)],
        exception_handlers={StarletteHTTPException: _http_exception, Exception: _unexpected},
    )
    runtime.app = app
    return app
