"""Building a service's HTTP app: FastAPI (documented APIs) or plain Starlette (hot paths), both
with RFC 9457 problem responses, /healthz, /readyz, /metrics and request metrics.

A FastAPI app serves (/openapi.json, /docs) the document `scanner-auth contracts` commits: every
422 described as the problem it is (`use_problems`), and the ops routes (`add_ops`)."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .http import (
    PROBLEM,
    MetricsMiddleware,
    ProblemResponse,
    declared_too_large,
    ops_routes,
    read_limited,
)
from .outages import is_infrastructure_error
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


# What FastAPI answers (400, undocumented) when reading or decoding a body fails other than as
# invalid JSON: a body that is not UTF-8 (UnicodeDecodeError), nested too deep (RecursionError).
_UNPARSEABLE_BODY = "There was an error parsing the body"


def _unparseable_body(exc: StarletteHTTPException) -> bool:
    return (
        not isinstance(exc, Problem)
        and exc.status_code == 400
        and exc.detail == _UNPARSEABLE_BODY
        and not isinstance(exc.__cause__, ClientDisconnect)  # nobody reads that answer
    )


async def _http_exception(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers) if exc.headers else None
    if isinstance(exc, Problem):
        return problem(
            exc.status_code, exc.detail, title=exc.title, headers=headers, **exc.extensions
        )
    if _unparseable_body(exc):
        # The same 422 problem as a body that is not JSON (_validation_error), as documented.
        error = {"loc": ["body"], "msg": "the body is not UTF-8 JSON", "type": "json_invalid"}
        return problem(422, "the request is malformed", errors=[error])
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


RETRY_AFTER_SECONDS = 5
UNAVAILABLE_DETAIL = "temporarily unavailable; try again shortly"


def unavailable() -> ProblemResponse:
    """The answer to a request that met an outage: 503, a problem, `Retry-After`."""
    return problem(503, UNAVAILABLE_DETAIL, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


class OutageMiddleware:
    """Every route of every service answers an outage (the database or Kafka unreachable,
    restarting, read-only, out of connections; a connection cut mid-transaction) with 503, a
    problem and `Retry-After`: never a 500. It sits inside Starlette's error middleware and
    outside every route and exception handler, so what a route lets escape is classified here
    (`outages.is_infrastructure_error`, which follows causes and exception groups); anything
    else goes on to the 500 handler. Not once the answer has started: then the connection is
    cut, as for any failure mid-answer.

    A request still running when a stopping replica's grace period ends is cancelled by
    uvicorn, which would answer its own plain-text 500: it gets a 503 problem here instead, with
    `Retry-After: 1` (another replica can take it at once), and the cancellation goes on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except asyncio.CancelledError:
            if not started:
                log.warning("request cut by shutdown", extra={"path": scope.get("path")})
                cut = problem(
                    503, "the service is restarting; try again", headers={"Retry-After": "1"}
                )
                await cut(scope, receive, send)
            raise
        except Exception as exc:
            if started or not is_infrastructure_error(exc):
                raise
            log.warning(
                "dependency unavailable",
                extra={"error": type(exc).__name__, "path": scope.get("path")},
            )
            await unavailable()(scope, receive, send)


DEFAULT_MAX_BODY_BYTES = 16384

_TOO_LARGE_DOC: dict[int | str, dict[str, Any]] = {
    413: {
        "description": "The body is larger than the service accepts (MAX_REQUEST_BODY_BYTES): "
        "refused before it is parsed or the caller authenticated; the connection is closed.",
        "content": {PROBLEM: {}},
    }
}


class BodyLimitMiddleware:
    """Every request's body is read here, up to `limit` bytes, before any route, dependency or
    authentication sees it: a declared Content-Length over the limit is answered 413 without
    reading a byte; a body without one (chunked) is read until it passes the limit, then
    answered 413 and the rest is never read (the connection is closed). Under the limit the body
    is handed on as one message, so a route reads it at once. So no one makes the service
    buffer, parse or validate more than `limit` bytes, nor verify a JWT for a body it would
    refuse anyway."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        content_length = next(
            (v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"content-length"),
            None,
        )
        if declared_too_large(content_length, self.limit):
            await self._too_large(scope, receive, send)
            return
        try:
            body = await read_limited(receive, self.limit)
        except ClientDisconnect:
            return  # nobody is there to read an answer
        if body is None:
            await self._too_large(scope, receive, send)
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # what comes after the body: http.disconnect

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = problem(
            413, f"the body must be at most {self.limit} bytes", headers={"Connection": "close"}
        )
        await answer(scope, receive, send)


async def _unexpected(_: Request, exc: Exception) -> Response:
    # Outages are answered by OutageMiddleware before they get here; this is our bug. The
    # answer says no more than that.
    if is_infrastructure_error(exc):
        return unavailable()
    log.error("unhandled error", exc_info=exc)
    return problem(500, "an unexpected error occurred")


class Refusal(Exception):
    """A request the rules refuse (a service's domain raises subclasses of it). Its message is
    safe to show: no secret, nothing of another organisation. Each service's api maps its
    refusals to HTTP statuses (`refusals(...)`): the domain knows nothing of HTTP."""

    headers: dict[str, str] | None = None


def refusals(statuses: dict[type[Refusal], int]) -> Any:
    """An exception handler answering each Refusal with the status of its class (the most
    specific listed), as an RFC 9457 problem."""

    async def answer(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, Refusal)
        status = next((s for cls, s in statuses.items() if isinstance(exc, cls)), 400)
        return problem(status, str(exc) or None, headers=exc.headers)

    return answer


# ------------------------------------------------------------------------------ the document


class FieldError(BaseModel):
    """One reason a request was malformed. Never echoes the input."""

    loc: list[str] = Field(description='Where: e.g. ["body", "serial_number"].')
    msg: str = Field(description="What is wrong.")
    type: str = Field(description="The kind of error, e.g. missing, string_too_long.")


class ProblemDetails(BaseModel):
    """An error, as RFC 9457 `application/problem+json`. Never carries a secret."""

    model_config = ConfigDict(extra="allow", title="Problem")

    type: str = Field(
        "about:blank", description="The problem type; about:blank: the status says it all."
    )
    title: str = Field(description="The HTTP reason phrase, e.g. Not Found.")
    status: int = Field(description="The HTTP status code.")
    detail: str | None = Field(None, description="What went wrong with this request.")
    errors: list[FieldError] | None = Field(
        None, description="On 422 for a malformed request: what was wrong, and where."
    )


def component_schemas(*models: type[BaseModel]) -> dict[str, Any]:
    """The models' JSON schemas (and those they use), as OpenAPI components, by title."""
    schemas: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[str(schema.get("title", model.__name__))] = schema
    return schemas


# The ops routes of every service (scanner_auth_shared.http.ops_routes), not in FastAPI's schema.
OPS_PATHS: dict[str, dict[str, Any]] = {
    "/healthz": {
        "get": {
            "tags": ["ops"],
            "summary": "Alive",
            "description": "200 while the process serves HTTP (Kubernetes liveness).",
            "operationId": "healthz",
            "responses": {
                "200": {
                    "description": "Alive.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {"status": {"const": "ok"}},
                                "required": ["status"],
                            }
                        }
                    },
                }
            },
        }
    },
    "/readyz": {
        "get": {
            "tags": ["ops"],
            "summary": "Ready",
            "description": "200 only when the database and Kafka are reachable, the consumers "
            "and background tasks are running and the service has started; else 503 "
            "(Kubernetes readiness). `checks` names each check and its result.",
            "operationId": "readyz",
            "responses": {
                status: {
                    "description": meaning,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "status": {"enum": ["ready", "not ready"]},
                                    "checks": {
                                        "type": "object",
                                        "additionalProperties": {"type": "boolean"},
                                    },
                                },
                                "required": ["status", "checks"],
                            }
                        }
                    },
                }
                for status, meaning in (("200", "Ready."), ("503", "Not ready."))
            },
        }
    },
    "/metrics": {
        "get": {
            "tags": ["ops"],
            "summary": "Metrics",
            "description": "Prometheus text exposition format.",
            "operationId": "metrics",
            "responses": {
                "200": {
                    "description": "The service's metrics.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    },
}


def routed_operations(app: Any) -> set[tuple[str, str]]:
    """(path, method) of every plain route of `app` (HEAD left out)."""
    routes: list[BaseRoute] = list(app.routes)
    return {
        (route.path, method.lower())
        for route in routes
        if isinstance(route, Route)
        for method in (route.methods or ())
        if method != "HEAD"
    }


def add_ops(document: dict[str, Any], app: Any) -> None:
    """Describe the ops routes (OPS_PATHS) in `document`; each must be routed by `app`."""
    routed = routed_operations(app)
    for path, operations in OPS_PATHS.items():
        for method in operations:
            if (path, method) not in routed:
                raise RuntimeError(f"{document['info']['title']}: no route for {method} {path}")
        document["paths"][path] = copy.deepcopy(operations)


def use_problems(document: dict[str, Any]) -> None:
    """Every problem response points at the one RFC 9457 schema. FastAPI documents a request it
    could not validate as application/json HTTPValidationError; ours answer a problem (with
    `errors`), _validation_error. In place; doing it twice changes nothing."""
    validation = "#/components/schemas/HTTPValidationError"
    for operations in document["paths"].values():
        for operation in operations.values():
            for response in operation.get("responses", {}).values():
                content = response.get("content", {})
                if content.get("application/json", {}).get("schema", {}).get("$ref") == validation:
                    response["description"] = "The request is malformed: see `errors`."
                    content.pop("application/json")
                    content[PROBLEM] = {}
                if PROBLEM in content:
                    content[PROBLEM] = {"schema": {"$ref": "#/components/schemas/Problem"}}
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    text = json.dumps(document["paths"])
    for unused in ("HTTPValidationError", "ValidationError"):
        if f"#/components/schemas/{unused}" not in text:
            schemas.pop(unused, None)
    schemas.update(component_schemas(ProblemDetails))
    document["components"]["schemas"] = dict(sorted(schemas.items()))


def _serve_the_document(app: FastAPI) -> None:
    """`app.openapi()` (what /openapi.json and /docs serve): FastAPI's document with the ops
    routes and the problems as they are answered, built once, the one `scanner-auth contracts`
    commits."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = copy.deepcopy(build())
            add_ops(document, app)
            use_problems(document)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def fastapi_app(
    runtime: ServiceRuntime,
    *,
    title: str,
    version: str = "1.0.0",
    description: str = "",
    routers: Sequence[Any] = (),
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """A documented API. Every request body is capped at `max_body_bytes` before anything else
    reads it (BodyLimitMiddleware); a route may accept less."""
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
        app.include_router(router, responses={**_TOO_LARGE_DOC, **_UNAVAILABLE_DOC})
    _serve_the_document(app)
    app.add_middleware(BodyLimitMiddleware, limit=max_body_bytes)
    app.add_middleware(OutageMiddleware)
    app.add_middleware(MetricsMiddleware, service=runtime.name)
    runtime.app = app
    return app


def starlette_app(runtime: ServiceRuntime, routes: Sequence[BaseRoute] = ()) -> Starlette:
    app = Starlette(
        routes=[*ops_routes(runtime.readiness), *routes],
        lifespan=lifespan_for(runtime),
        middleware=[
            Middleware(MetricsMiddleware, service=runtime.name),
            Middleware(OutageMiddleware),
        ],
        exception_handlers={StarletteHTTPException: _http_exception, Exception: _unexpected},
    )
    runtime.app = app
    return app
