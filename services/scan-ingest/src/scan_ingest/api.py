"""`POST /v1/scans`: the upload hot path (plain Starlette, no validation framework).

In order, each step cheaper than the next: the bearer credential, its SHA-256 against the gate
in memory (`handlers.admit`: 401/403) → the declared Content-Length (413 without reading) →
the body, read as a stream and abandoned at the limit (413) → the document and its event,
published and acknowledged (`handlers.ingest_scan`: 422, 503) → 202.

Every refusal is a `Refusal` (domain.py), answered here by its class: each answer is built once
(`_Constant`), so that a flood of bad credentials costs no rendering (bench/README.md), and
the map from class to status is this module's table (`_answers`), rather than
`scanner_auth_shared.api.refusals`, which renders a problem per request behind Starlette's
exception middleware.

The route is a method of `ScanUploads`, which holds its dependencies (given once by app.py),
rather than reading `request.app.state.services` per request: Starlette's `State.__getattr__`
costs 1-2 µs on every upload (measured), for nothing that changes.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

from prometheus_client import Counter
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from scanner_auth_shared.api import Refusal, problem
from scanner_auth_shared.auth import bearer_token
from scanner_auth_shared.http import FastJSONResponse, Network, client_address, read_limited

from . import metrics
from .adapters.ports import Gate, ScanPublisher
from .domain import (
    BodyTooLarge,
    CredentialRefused,
    CredentialReplaced,
    CredentialRevoked,
    GateLoading,
    GracePeriodEnded,
    InvalidScanId,
    NoCredential,
    NotAnObject,
    NotJson,
    ScanNotStored,
    UnknownCredential,
    UploadRefused,
)
from .handlers import admit, ingest_scan

log = logging.getLogger("scanner_auth.scan_ingest.api")

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="scan-ingest"'}
_INVALID_TOKEN = {"WWW-Authenticate": 'Bearer realm="scan-ingest", error="invalid_token"'}
# The client may still be sending: close the connection rather than drain it.
_CLOSE = {"Connection": "close"}


class _MalformedLength(UploadRefused):
    """HTTP framing, the route's own refusal (not a rule of the domain)."""

    detail = "Content-Length is not a number"


class _ClientGone(UploadRefused):
    detail = "the client went away before the body ended"


class _Constant(Response):
    """A response answered as is to every request of its kind, built once. Each answer gets its
    own header list."""

    @classmethod
    def of(cls, built: Response) -> _Constant:
        constant = cls.__new__(cls)
        constant.__dict__.update(built.__dict__)
        return constant

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": self.status_code,
                "headers": list(self.raw_headers),
            }
        )
        await send({"type": "http.response.body", "body": self.body})


Answers = dict[type[Refusal], tuple[Counter, _Constant]]


def _answers(max_body_bytes: int, retry_after_seconds: int) -> Answers:
    """Each refusal's answer and the outcome it counts as."""
    retry = {"Retry-After": str(retry_after_seconds)}
    table: dict[type[Refusal], tuple[Counter, Response]] = {
        NoCredential: (metrics.UNAUTHORISED, problem(401, NoCredential.detail, headers=_CHALLENGE)),
        UnknownCredential: (
            metrics.UNAUTHORISED,
            problem(401, UnknownCredential.detail, headers=_INVALID_TOKEN),
        ),
        GateLoading: (
            metrics.UNAVAILABLE,
            problem(503, GateLoading.detail, headers={"Retry-After": "1"}),
        ),
        CredentialRevoked: (metrics.FORBIDDEN, problem(403, CredentialRevoked.detail)),
        CredentialReplaced: (metrics.FORBIDDEN, problem(403, CredentialReplaced.detail)),
        GracePeriodEnded: (metrics.FORBIDDEN, problem(403, GracePeriodEnded.detail)),
        CredentialRefused: (metrics.FORBIDDEN, problem(403, CredentialRefused.detail)),
        _MalformedLength: (
            metrics.BAD_REQUEST,
            problem(400, _MalformedLength.detail, headers=_CLOSE),
        ),
        _ClientGone: (
            metrics.BAD_REQUEST,
            problem(400, _ClientGone.detail),
        ),
        BodyTooLarge: (
            metrics.TOO_LARGE,
            problem(413, f"the body exceeds {max_body_bytes} bytes", headers=_CLOSE),
        ),
        NotJson: (metrics.INVALID, problem(422, NotJson.detail)),
        NotAnObject: (metrics.INVALID, problem(422, NotAnObject.detail)),
        InvalidScanId: (metrics.INVALID, problem(422, InvalidScanId.detail)),
        ScanNotStored: (metrics.UNAVAILABLE, problem(503, ScanNotStored.detail, headers=retry)),
    }
    return {kind: (counter, _Constant.of(answer)) for kind, (counter, answer) in table.items()}


def _credential_and_length(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """The bearer credential and the declared Content-Length, in one pass over the raw headers
    (names are lower case in ASGI; the first of a repeated header wins, as with Starlette's
    `Headers`)."""
    authorization = declared = None
    for name, value in headers:
        if name == b"authorization":
            if authorization is None:
                authorization = value.decode("latin-1")
        elif name == b"content-length" and declared is None:
            declared = value.decode("latin-1")
    return bearer_token(authorization), declared


class ScanUploads:
    def __init__(
        self,
        *,
        gate: Gate,
        publisher: ScanPublisher,
        max_body_bytes: int,
        retry_after_seconds: int,
        trusted_proxies: tuple[Network, ...] = (),
    ) -> None:
        self.gate = gate
        self.publisher = publisher
        self.max_body_bytes = max_body_bytes
        self.trusted_proxies = trusted_proxies
        self.answers = _answers(max_body_bytes, retry_after_seconds)

    def routes(self) -> list[Route]:
        return [Route("/v1/scans", self.upload, methods=["POST"])]

    async def upload(self, request: Request) -> Response:
        try:
            credential, declared = _credential_and_length(request.scope["headers"])
            admission = admit(self.gate, credential, time.time())
            self._check_declared(declared)
            body = await read_limited(request.receive, self.max_body_bytes)
            if body is None:
                raise BodyTooLarge()
            scan_id, received_at = await ingest_scan(
                self.publisher, admission, body, datetime.now(UTC)
            )
        except Refusal as refusal:
            return self._refused(refusal, request)
        except ClientDisconnect:
            return self._refused(_ClientGone(), request)
        metrics.ACCEPTED.inc()
        metrics.ACCEPTED_BYTES.inc(len(body))
        return FastJSONResponse({"scan_id": scan_id, "received_at": received_at}, status_code=202)

    def _check_declared(self, declared: str | None) -> None:
        """A declared Content-Length over the limit is refused before a byte is read."""
        if declared is not None:
            if not declared.isdigit():
                raise _MalformedLength()
            if int(declared) > self.max_body_bytes:
                raise BodyTooLarge()

    def _refused(self, refusal: Refusal, request: Request) -> Response:
        counter, answer = self.answers[type(refusal)]
        counter.inc()
        if isinstance(refusal, CredentialRefused):
            admission = refusal.admission
            log.info(
                "upload refused: credential no longer works",
                extra={
                    "scanner_id": admission.scanner_id,
                    "credential_id": admission.credential_id,
                    "state": refusal.state.label,
                    "client_ip": self._client(request),
                },
            )
        return answer

    def _client(self, request: Request) -> str:
        peer = request.client.host if request.client else None
        return client_address(peer, request.headers.get("x-forwarded-for"), self.trusted_proxies)
