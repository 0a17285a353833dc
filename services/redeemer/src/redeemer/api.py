"""HTTP routes of the redeemer (called by scanners, no user JWT). Thin: parse, call one
handler, answer. Refusals are the handlers' exceptions, answered by status (`STATUSES`); an
outage is answered 503 by the shared OutageMiddleware.

The redeem path parses its body by hand (orjson, no model): it is small, it must never echo
what was sent, and it stays cheap under a brute-force flood.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response

from scanner_auth_shared.api import Refusal, problem
from scanner_auth_shared.auth import bearer_token
from scanner_auth_shared.events import rfc3339
from scanner_auth_shared.http import (
    PROBLEM,
    FastJSONResponse,
    Network,
    client_address,
    declared_too_large,
    read_limited,
)

from . import domain, handlers, metrics
from .adapters.ports import UnitOfWork

# The one answer to every refused code (unknown, expired, used, revoked, wrong serial), byte for
# byte, so that a caller learns nothing about which it was: what `STATUSES` makes of CodeRefused.
UNIFORM_REFUSAL = orjson.dumps(
    {
        "type": "about:blank",
        "title": "Bad Request",
        "status": 400,
        "detail": domain.CODE_NOT_ACCEPTED,
    }
)
NO_STORE = {"Cache-Control": "no-store"}

BODY_SHAPE = "the body must be a JSON object with string fields code and serial_number"
CODE_SHAPE = f"code must be a string of at most {domain.CODE_MAX_LENGTH} characters"
SERIAL_SHAPE = f"serial_number must be a string of 1 to {domain.SERIAL_MAX_LENGTH} characters"

STATUSES: dict[type[Refusal], int] = {
    domain.CodeRefused: 400,
    domain.MalformedRequest: 422,
    domain.TypoInCode: 422,
    domain.RateLimited: 429,
    domain.NotAuthenticated: 401,
    domain.CannotRotate: 403,
    domain.RotationLimited: 429,
}


@dataclass(frozen=True)
class Services:
    """What the routes need (app.py puts it on `app.state.services`)."""

    unit_of_work: Callable[[], UnitOfWork]
    config: handlers.Config
    trusted_proxies: tuple[Network, ...] = ()
    max_body_bytes: int = 4096


async def get_services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


Deps = Annotated[Services, Depends(get_services)]


def _malformed(detail: str) -> domain.MalformedRequest:
    metrics.REDEMPTIONS.labels("malformed").inc()
    return domain.MalformedRequest(detail)


def _parse(body: bytes) -> tuple[str, str]:
    """(code as typed, trimmed serial number); MalformedRequest, which never echoes the input."""
    try:
        payload: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _malformed(BODY_SHAPE) from None
    if not isinstance(payload, dict):
        raise _malformed(BODY_SHAPE)
    code, serial = payload.get("code"), payload.get("serial_number")
    if not isinstance(code, str) or len(code) > domain.CODE_MAX_LENGTH:
        raise _malformed(CODE_SHAPE)
    if not isinstance(serial, str) or not 1 <= len(serial.strip()) <= domain.SERIAL_MAX_LENGTH:
        raise _malformed(SERIAL_SHAPE)
    return code, serial.strip()


async def _body(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is larger than `limit` bytes (not read further)."""
    if declared_too_large(request.headers.get("content-length"), limit):
        return None
    return await read_limited(request.receive, limit)


def _client(request: Request, trusted_proxies: tuple[Network, ...]) -> str:
    peer = request.client.host if request.client is not None else None
    return client_address(peer, request.headers.get("x-forwarded-for"), trusted_proxies)


_REDEEM_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["code", "serial_number"],
                    "properties": {
                        "code": {
                            "type": "string",
                            "maxLength": 64,
                            "example": "YD20-66YF-H255",
                            "description": "The code as typed: case, spaces and dashes ignored; "
                            "O reads as 0, I and L as 1.",
                        },
                        "serial_number": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 64,
                            "description": "The scanner's own serial number.",
                        },
                    },
                }
            }
        },
    },
}


class AuthorisationGranted(BaseModel):
    """What a scanner receives once, on redeeming its code (documentation of the 201)."""

    scanner_id: str = Field(description="The scanner the code was issued for.")
    credential_id: str = Field(description="Id of the credential (not secret).")
    credential: str = Field(
        description="The scanner's credential: an opaque string of at least "
        "256 random bits, shown once; send it as `Authorization: "
        "Bearer <credential>` to scan-ingest."
    )
    authorised_at: datetime = Field(description="When (RFC 3339, UTC).")


class CredentialIssued(BaseModel):
    """The new credential of a rotation (documentation of the 201)."""

    credential_id: str = Field(description="Id of the new credential.")
    credential: str = Field(description="The new credential, shown once.")
    previous_valid_until: datetime = Field(
        description="The credential presented keeps working until then (RFC 3339, UTC)."
    )


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again.",
        "schema": {"type": "integer"},
    }
}
_UNAVAILABLE = {
    "description": "The database is unreachable for a moment; `Retry-After` says "
    "when to try again.",
    "content": {PROBLEM: {}},
    "headers": _RETRY_AFTER,
}
_REDEEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {
        "description": "Authorised. The credential is shown once; only its digest is kept.",
        "model": AuthorisationGranted,
    },
    400: {
        "description": "The code was not accepted for this scanner (unknown, expired, used, "
        "revoked, or another scanner's): always the same body.",
        "content": {PROBLEM: {}},
    },
    413: {"description": "The body is too large.", "content": {PROBLEM: {}}},
    422: {
        "description": "A malformed body, or a code with a typo (not counted as an attempt).",
        "content": {PROBLEM: {}},
    },
    429: {
        "description": "Too many failed attempts for this serial number or from this address; "
        "`Retry-After` says when to try again.",
        "content": {PROBLEM: {}},
        "headers": _RETRY_AFTER,
    },
    503: _UNAVAILABLE,
}
_ROTATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {
        "description": "The new credential works at once, the old one until previous_valid_until.",
        "model": CredentialIssued,
    },
    401: {
        "description": "No credential, or not one this service issued.",
        "content": {PROBLEM: {}},
    },
    403: {
        "description": "The credential was replaced, revoked or already rotated.",
        "content": {PROBLEM: {}},
    },
    429: {
        "description": "The scanner rotated its credential too often (ROTATION_LIMIT_PER_HOUR "
        "within the last hour); `Retry-After` says when it may rotate again. The credential "
        "presented keeps working.",
        "content": {PROBLEM: {}},
        "headers": _RETRY_AFTER,
    },
    503: _UNAVAILABLE,
}


routes = APIRouter(tags=["scanners"])


@routes.post(
    "/v1/authorisations",
    status_code=201,
    openapi_extra=_REDEEM_DOC,
    responses=_REDEEM_RESPONSES,
    summary="Redeem a code for a scanner credential",
)
async def redeem(request: Request, services: Deps) -> Response:
    limit = services.max_body_bytes
    body = await _body(request, limit)
    if body is None:
        return problem(413, f"the body must be at most {limit} bytes")
    code, serial = _parse(body)
    client_ip = _client(request, services.trusted_proxies)
    authorised = await handlers.redeem_code(
        services.unit_of_work(), services.config, code, serial, client_ip
    )
    return FastJSONResponse(
        {
            "scanner_id": authorised.scanner_id,
            "credential_id": authorised.credential_id,
            "credential": authorised.credential,
            "authorised_at": rfc3339(authorised.authorised_at),
        },
        status_code=201,
        headers=NO_STORE,
    )


@routes.post(
    "/v1/credentials/rotate",
    status_code=201,
    responses=_ROTATE_RESPONSES,
    summary="Exchange the scanner's credential for a new one",
)
async def rotate(request: Request, services: Deps) -> Response:
    presented = bearer_token(request.headers.get("authorization"))
    rotated = await handlers.rotate_credential(services.unit_of_work(), services.config, presented)
    return FastJSONResponse(
        {
            "credential_id": rotated.credential_id,
            "credential": rotated.credential,
            "previous_valid_until": rfc3339(rotated.previous_valid_until),
        },
        status_code=201,
        headers=NO_STORE,
    )
