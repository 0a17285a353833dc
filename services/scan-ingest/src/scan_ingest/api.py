"""`POST /v1/scans`: the upload hot path (plain Starlette, no validation framework).

In order, each step cheaper than the next: bearer credential → SHA-256 → the gate in memory
(401/403) → declared Content-Length (413 without reading) → the body, read as a stream and
abandoned at the limit (413) → orjson (422 unless a JSON object) → `ScanIngested` published
to Kafka, awaited under a timeout → 202 only once Kafka acknowledged it, else 503.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from datetime import UTC, datetime

import orjson
from faststream.kafka import KafkaBroker
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from scanner_auth_shared.api import problem
from scanner_auth_shared.auth import bearer_token
from scanner_auth_shared.events import SCANS_TOPIC, ScanIngested
from scanner_auth_shared.http import FastJSONResponse, Network, client_address

from . import metrics
from .domain import CredentialState, rfc3339, scan_id_for, scan_ingested_bytes
from .gate import CredentialGate

log = logging.getLogger("scanner_auth.scan_ingest.api")

# A credential is about 50 ASCII characters; anything far longer is not one (and is not hashed).
MAX_CREDENTIAL_LENGTH = 512
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="scan-ingest"'}
_INVALID_TOKEN = {"WWW-Authenticate": 'Bearer realm="scan-ingest", error="invalid_token"'}
_KAFKA_HEADERS = {
    "content-type": "application/cloudevents+json",
    "ce-type": ScanIngested.event_type,
}
_REFUSED_DETAIL: dict[int, str] = {
    CredentialState.REVOKED: "the scanner's authorisation was withdrawn",
    CredentialState.REPLACED: "this credential was replaced: the scanner was authorised again",
    CredentialState.ROTATING: "this credential was rotated and its grace period has ended",
}


class ScanUploads:
    def __init__(
        self,
        *,
        gate: CredentialGate,
        broker: KafkaBroker,
        max_body_bytes: int,
        publish_timeout_seconds: float,
        retry_after_seconds: int,
        trusted_proxies: tuple[Network, ...] = (),
    ) -> None:
        self.gate = gate
        self.broker = broker
        self.max_body_bytes = max_body_bytes
        self.publish_timeout = publish_timeout_seconds
        self.retry_after = {"Retry-After": str(retry_after_seconds)}
        self.trusted_proxies = trusted_proxies

    def routes(self) -> list[Route]:
        return [Route("/v1/scans", self.upload, methods=["POST"])]

    async def upload(self, request: Request) -> Response:
        headers = request.headers
        credential = bearer_token(headers.get("authorization"))
        if credential is None:
            metrics.UNAUTHORISED.inc()
            return problem(
                401,
                "a scanner credential is required: Authorization: Bearer <credential>",
                headers=_CHALLENGE,
            )
        if len(credential) > MAX_CREDENTIAL_LENGTH or not credential.isascii():
            metrics.UNAUTHORISED.inc()
            return problem(401, "the credential is not valid", headers=_INVALID_TOKEN)
        if not self.gate.loaded:
            metrics.UNAVAILABLE.inc()
            return problem(503, "the gate is still loading", headers={"Retry-After": "1"})
        admission = self.gate.lookup(hashlib.sha256(credential.encode()).digest(), time.time())
        if admission is None:
            metrics.UNAUTHORISED.inc()
            return problem(401, "the credential is not valid", headers=_INVALID_TOKEN)
        if not admission.admitted:
            metrics.FORBIDDEN.inc()
            log.info(
                "upload refused: credential no longer works",
                extra={
                    "scanner_id": admission.scanner_id,
                    "credential_id": admission.credential_id,
                    "state": CredentialState(admission.state).label,
                    "client_ip": self._client(request),
                },
            )
            return problem(
                403, _REFUSED_DETAIL.get(admission.state, "this credential does not work")
            )

        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                metrics.BAD_REQUEST.inc()
                return problem(
                    400, "Content-Length is not a number", headers={"Connection": "close"}
                )
            if int(declared) > self.max_body_bytes:
                return self._too_large()
        try:
            body = await self._read_body(request)
        except ClientDisconnect:
            metrics.BAD_REQUEST.inc()
            return problem(400, "the client went away before the body ended")
        if body is None:
            return self._too_large()
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            metrics.INVALID.inc()
            return problem(422, "the body is not JSON")
        if not isinstance(document, dict):
            metrics.INVALID.inc()
            return problem(422, "the body must be a JSON object")

        scan_id = scan_id_for(document)
        received_at = rfc3339(datetime.now(UTC))
        scanner_id = admission.scanner_id
        payload = scan_ingested_bytes(
            scan_id=scan_id,
            scanner_id=scanner_id,
            org_id=admission.org_id,
            credential_id=admission.credential_id,
            received_at=received_at,
            body=body,
        )
        try:
            async with asyncio.timeout(self.publish_timeout):
                await self.broker.publish(
                    payload, SCANS_TOPIC, key=scanner_id.encode(), headers=_KAFKA_HEADERS
                )
        except Exception as exc:
            # Not acknowledged: the scanner must retry (with the same scan_id). A timed-out send
            # may still land later; consumers drop repeats by scan_id.
            metrics.UNAVAILABLE.inc()
            log.warning(
                "upload not stored: Kafka did not acknowledge it",
                extra={"scanner_id": scanner_id, "scan_id": scan_id, "error": type(exc).__name__},
            )
            return problem(
                503,
                "the scan could not be stored; retry later with the same scan_id",
                headers=self.retry_after,
            )
        metrics.ACCEPTED.inc()
        metrics.ACCEPTED_BYTES.inc(len(body))
        return FastJSONResponse({"scan_id": scan_id, "received_at": received_at}, status_code=202)

    async def _read_body(self, request: Request) -> bytes | None:
        """The body, or None as soon as it exceeds the limit (the rest is never read)."""
        limit = self.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self) -> Response:
        metrics.TOO_LARGE.inc()
        # The client may still be sending: close the connection rather than drain it.
        return problem(
            413, f"the body exceeds {self.max_body_bytes} bytes", headers={"Connection": "close"}
        )

    def _client(self, request: Request) -> str:
        peer = request.client.host if request.client else None
        return client_address(peer, request.headers.get("x-forwarded-for"), self.trusted_proxies)
