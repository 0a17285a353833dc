"""HTTP routes of the redeemer (called by scanners, no user JWT). Thin: parse, call, answer.

The redeem path parses its body by hand (orjson, no model): it is small, it must never echo
what was sent, and it stays cheap under a brute-force flood.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import Response

from scanner_auth_shared.api import problem
from scanner_auth_shared.auth import bearer_token
from scanner_auth_shared.crypto import CodeTypo, MalformedCode, normalise_code
from scanner_auth_shared.db import is_infrastructure_error
from scanner_auth_shared.http import PROBLEM, FastJSONResponse, Network, client_address

from . import domain, metrics
from .handlers import (
    Authorised,
    Forbidden,
    RateLimited,
    Redeemer,
    Refused,
    Rotated,
    Unauthenticated,
)

log = logging.getLogger("scanner_auth.redeemer.api")

# The one answer to every refused code (unknown, expired, used, revoked, wrong serial), byte for
# byte, so that a caller learns nothing about which it was.
UNIFORM_REFUSAL = orjson.dumps(
    {
        "type": "about:blank",
        "title": "Bad Request",
        "status": 400,
        "detail": "the code was not accepted for this scanner",
    }
)
NO_STORE = {"Cache-Control": "no-store"}

BODY_SHAPE = "the body must be a JSON object with string fields code and serial_number"
CODE_SHAPE = f"code must be a string of at most {domain.CODE_MAX_LENGTH} characters"
SERIAL_SHAPE = f"serial_number must be a string of 1 to {domain.SERIAL_MAX_LENGTH} characters"
CODE_MALFORMED = (
    "the code is malformed: a code is 12 characters of 0-9 and A-Z "
    "(without I, L, O, U), usually written XXXX-XXXX-XXXX"
)
CODE_TYPO = (
    "the code contains a typo: its last character does not match the others; "
    "check the code and enter it again"
)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is larger than `limit` bytes (not read further)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _malformed(detail: str) -> Response:
    metrics.REDEMPTIONS.labels("malformed").inc()
    return problem(422, detail)


def _parse(body: bytes) -> tuple[str, str] | Response:
    """(code as typed, trimmed serial number), or the 422 answer. Never echoes the input."""
    try:
        payload: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _malformed(BODY_SHAPE)
    if not isinstance(payload, dict):
        return _malformed(BODY_SHAPE)
    code, serial = payload.get("code"), payload.get("serial_number")
    if not isinstance(code, str) or len(code) > domain.CODE_MAX_LENGTH:
        return _malformed(CODE_SHAPE)
    if not isinstance(serial, str) or not 1 <= len(serial.strip()) <= domain.SERIAL_MAX_LENGTH:
        return _malformed(SERIAL_SHAPE)
    return code, serial.strip()


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
    503: _UNAVAILABLE,
}


def router(redeemer: Redeemer, trusted_proxies: tuple[Network, ...]) -> APIRouter:
    routes = APIRouter(tags=["scanners"])
    limit = redeemer.settings.max_request_body_bytes

    def client_of(request: Request) -> str:
        peer = request.client.host if request.client is not None else None
        return client_address(peer, request.headers.get("x-forwarded-for"), trusted_proxies)

    @routes.post(
        "/v1/authorisations",
        status_code=201,
        openapi_extra=_REDEEM_DOC,
        responses=_REDEEM_RESPONSES,
        summary="Redeem a code for a scanner credential",
    )
    async def redeem(request: Request) -> Response:
        body = await _read_body(request, limit)
        if body is None:
            return problem(413, f"the body must be at most {limit} bytes")
        parsed = _parse(body)
        if isinstance(parsed, Response):
            return parsed
        typed, serial = parsed
        try:
            flat = normalise_code(typed)
        except CodeTypo:
            metrics.REDEMPTIONS.labels("typo").inc()
            return problem(422, CODE_TYPO)
        except MalformedCode:
            return _malformed(CODE_MALFORMED)
        try:
            outcome = await redeemer.redeem(flat, serial, client_of(request))
        except Exception as exc:
            return _unavailable(exc)
        if isinstance(outcome, Authorised):
            return FastJSONResponse(
                {
                    "scanner_id": outcome.scanner_id,
                    "credential_id": outcome.credential_id,
                    "credential": outcome.credential,
                    "authorised_at": rfc3339(outcome.authorised_at),
                },
                status_code=201,
                headers=NO_STORE,
            )
        if isinstance(outcome, Refused):
            return Response(UNIFORM_REFUSAL, status_code=400, media_type=PROBLEM)
        assert isinstance(outcome, RateLimited)
        return problem(
            429,
            "too many failed attempts; try again later",
            headers={"Retry-After": str(outcome.retry_after)},
        )

    @routes.post(
        "/v1/credentials/rotate",
        status_code=201,
        responses=_ROTATE_RESPONSES,
        summary="Exchange the scanner's credential for a new one",
    )
    async def rotate(request: Request) -> Response:
        presented = bearer_token(request.headers.get("authorization"))
        try:
            outcome = await redeemer.rotate(presented)
        except Exception as exc:
            return _unavailable(exc)
        if isinstance(outcome, Rotated):
            return FastJSONResponse(
                {
                    "credential_id": outcome.credential_id,
                    "credential": outcome.credential,
                    "previous_valid_until": rfc3339(outcome.previous_valid_until),
                },
                status_code=201,
                headers=NO_STORE,
            )
        if isinstance(outcome, Unauthenticated):
            return problem(
                401,
                "a valid scanner credential is required",
                headers={"WWW-Authenticate": "Bearer"},
            )
        assert isinstance(outcome, Forbidden)
        return problem(403, "this credential can no longer be rotated")

    return routes


def _unavailable(exc: Exception) -> Response:
    if not is_infrastructure_error(exc):
        raise exc
    log.warning("database unavailable", extra={"error": type(exc).__name__})
    return problem(503, "temporarily unavailable; try again shortly", headers={"Retry-After": "5"})
