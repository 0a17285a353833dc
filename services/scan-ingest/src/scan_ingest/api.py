"""`POST /v1/scans`: the upload hot path (plain Starlette, no validation framework).

In order, each step cheaper than the next: bearer credential → SHA-256 → the gate in memory
(401/403) → declared Content-Length (413 without reading) → the body, read as a stream and
abandoned at the limit (413) → orjson (422 unless a JSON object) → `ScanIngested` published
to Kafka, awaited under a timeout → 202 only once Kafka acknowledged it, else 503.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from faststream.kafka import KafkaBroker
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from scanner_auth_shared.api import problem
from scanner_auth_shared.auth import bearer_token
from scanner_auth_shared.events import SCANS_TOPIC, ScanIngested
from scanner_auth_shared.http import FastJSONResponse, Network, client_address
from scanner_auth_shared.messaging import (
    aiokafka_producer,
    default_partition,
    kafka_headers,
    record_headers,
)

from . import metrics
from .domain import (
    INVALID_SCAN_ID,
    CredentialState,
    rfc3339,
    scan_id_for,
    scan_ingested_bytes,
)
from .gate import CredentialGate

log = logging.getLogger("scanner_auth.scan_ingest.api")

# A credential is about 50 ASCII characters; anything far longer is not one (and is not hashed).
MAX_CREDENTIAL_LENGTH = 512
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="scan-ingest"'}
_INVALID_TOKEN = {"WWW-Authenticate": 'Bearer realm="scan-ingest", error="invalid_token"'}
_KAFKA_HEADERS = kafka_headers(ScanIngested.event_type)
_RAW_HEADERS = record_headers(ScanIngested.event_type)
_REFUSED_DETAIL: dict[int, str] = {
    CredentialState.REVOKED: "the scanner's authorisation was withdrawn",
    CredentialState.REPLACED: "this credential was replaced: the scanner was authorised again",
    CredentialState.ROTATING: "this credential was rotated and its grace period has ended",
}


class _Constant(Response):
    """A response answered as is to every request of its kind, built once: a flood of bad
    credentials costs no rendering (bench/README.md). Each answer gets its own header list."""

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


_NO_CREDENTIAL = _Constant.of(
    problem(
        401,
        "a scanner credential is required: Authorization: Bearer <credential>",
        headers=_CHALLENGE,
    )
)
_INVALID_CREDENTIAL = _Constant.of(
    problem(401, "the credential is not valid", headers=_INVALID_TOKEN)
)


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
        self._batches: ScanBatches | None = None

    def routes(self) -> list[Route]:
        return [Route("/v1/scans", self.upload, methods=["POST"])]

    async def upload(self, request: Request) -> Response:
        # The two headers this needs, in one pass over the raw list (names are lower case in
        # ASGI; the first of a repeated header wins, as with Starlette's `Headers`).
        authorization = declared = None
        for name, value in request.scope["headers"]:
            if name == b"authorization":
                if authorization is None:
                    authorization = value.decode("latin-1")
            elif name == b"content-length" and declared is None:
                declared = value.decode("latin-1")
        credential = bearer_token(authorization)
        if credential is None:
            metrics.UNAUTHORISED.inc()
            return _NO_CREDENTIAL
        if len(credential) > MAX_CREDENTIAL_LENGTH or not credential.isascii():
            metrics.UNAUTHORISED.inc()
            return _INVALID_CREDENTIAL
        if not self.gate.loaded:
            metrics.UNAVAILABLE.inc()
            return problem(503, "the gate is still loading", headers={"Retry-After": "1"})
        admission = self.gate.lookup(hashlib.sha256(credential.encode()).digest(), time.time())
        if admission is None:
            metrics.UNAUTHORISED.inc()
            return _INVALID_CREDENTIAL
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
        if scan_id is None:
            metrics.INVALID.inc()
            return problem(422, INVALID_SCAN_ID)
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
            await self._publish(payload, scanner_id.encode())
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

    async def _publish(self, payload: bytes, key: bytes) -> None:
        """Send `ScanIngested` and wait for Kafka's acknowledgement, at most
        PUBLISH_TIMEOUT_SECONDS (TimeoutError).

        Through `ScanBatches` on the aiokafka producer the broker holds (its settings, topic,
        key and CloudEvents headers); through `broker.publish` if it holds none."""
        producer = aiokafka_producer(self.broker)
        if producer is None:
            async with asyncio.timeout(self.publish_timeout):
                await self.broker.publish(payload, SCANS_TOPIC, key=key, headers=_KAFKA_HEADERS)
            return
        if self._batches is None or self._batches.producer is not producer:  # a reconnection
            self._batches = ScanBatches(
                producer, SCANS_TOPIC, _RAW_HEADERS, timeout=self.publish_timeout
            )
        await self._batches.publish(key, payload)

    async def _read_body(self, request: Request) -> bytes | None:
        """The body, or None as soon as it exceeds the limit (the rest is never read).

        ASGI messages read directly (what `request.stream()` does, without an async generator
        on the hot path)."""
        limit = self.max_body_bytes
        receive = request.receive
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

    def _too_large(self) -> Response:
        metrics.TOO_LARGE.inc()
        # The client may still be sending: close the connection rather than drain it.
        return problem(
            413, f"the body exceeds {self.max_body_bytes} bytes", headers={"Connection": "close"}
        )

    def _client(self, request: Request) -> str:
        peer = request.client.host if request.client else None
        return client_address(peer, request.headers.get("x-forwarded-for"), self.trusted_proxies)


class _Batch:
    """Uploads on their way to Kafka together, and the acknowledgement they all wait for."""

    __slots__ = ("acknowledged", "builder", "deadline")

    def __init__(self, builder: Any, acknowledged: asyncio.Future[None]) -> None:
        self.builder = builder
        self.acknowledged = acknowledged
        self.deadline: asyncio.TimerHandle | None = None


class ScanBatches:
    """Group commit of uploads to one topic: the uploads that arrive while a partition's
    previous batch is on its way join the next one, which is handed to the producer as one
    record batch (`AIOKafkaProducer.send_batch`); every upload then waits for its batch's
    acknowledgement.

    Why: aiokafka's per-message `send()` runs about 40 µs of Python per message (partitioner,
    accumulator, one future each), the largest part of an upload's CPU; appending to a batch
    builder is done in C, so a busy gateway pays that once per batch (bench/README.md).

    Same records as `send()`: same key, value, headers and timestamp (the producer's clock),
    the partition chosen as Kafka's default partitioner does (murmur2 of the key, as the Java
    client and aiokafka), records of one key in the order they were accepted. A batch is sent
    at once when nothing of its partition is in flight, else as soon as the producer has taken
    the previous one; the producer's own `linger_ms` and `max_batch_size` still apply (a full
    batch starts the next one; a record larger than a batch travels alone).

    `timeout`: a batch not acknowledged that long after its first upload fails with
    TimeoutError (one timer per batch, not one per upload: `asyncio.timeout` costs about as
    much as the rest of an upload's own work).
    """

    _MAX_CACHED_KEYS = 100_000

    def __init__(
        self, producer: Any, topic: str, headers: list[tuple[str, bytes]], *, timeout: float
    ) -> None:
        self.producer = producer
        self._topic = topic
        self._headers = headers
        self._timeout = timeout
        self._queues: dict[int, collections.deque[_Batch]] = {}
        self._flushers: dict[int, asyncio.Task[None]] = {}  # partition -> its sending task
        self._partition_of: dict[bytes, int] = {}
        self._partitions: list[int] = []

    async def publish(self, key: bytes, value: bytes) -> None:
        partition = self._partition_of.get(key)
        if partition is None:
            async with asyncio.timeout(self._timeout):  # only a key not seen yet
                partition = await self._partition(key)
        queue = self._queues.get(partition)
        if queue is None:
            queue = self._queues[partition] = collections.deque()
        headers = self._headers
        batch = queue[-1] if queue else None
        if (
            batch is None
            or batch.builder.append(timestamp=None, key=key, value=value, headers=headers) is None
        ):
            loop = asyncio.get_running_loop()
            batch = _Batch(self.producer.create_batch(), loop.create_future())
            batch.builder.append(timestamp=None, key=key, value=value, headers=headers)
            batch.deadline = loop.call_later(
                self._timeout, _fail, batch.acknowledged, TimeoutError("not acknowledged in time")
            )
            queue.append(batch)
            if partition not in self._flushers:
                self._flushers[partition] = loop.create_task(self._flush(partition, queue))
        # Shielded: an upload cancelled while it waits must not cancel its batch for the others.
        await asyncio.shield(batch.acknowledged)

    async def _flush(self, partition: int, queue: collections.deque[_Batch]) -> None:
        try:
            while queue:
                batch = queue.popleft()
                batch.builder.close()
                try:
                    sent = await self.producer.send_batch(
                        batch.builder, self._topic, partition=partition
                    )
                except Exception as exc:
                    _settle_with(batch, exc)
                    continue
                sent.add_done_callback(functools.partial(_settle, batch))
        finally:
            del self._flushers[partition]
            for batch in queue:  # only if this task itself was cancelled (shutdown)
                _settle_with(batch, ConnectionError("the scan publisher stopped"))
            queue.clear()

    async def _partition(self, key: bytes) -> int:
        """Kafka's default partitioner for `key`, cached per key."""
        known = self.producer.client.cluster.partitions_for_topic(self._topic)
        if not known:
            known = await self.producer.partitions_for(self._topic)
        partitions = sorted(known)
        if partitions != self._partitions or len(self._partition_of) > self._MAX_CACHED_KEYS:
            self._partitions = partitions
            self._partition_of.clear()
        partition = default_partition(key, partitions)
        self._partition_of[key] = partition
        return partition


def _settle(batch: _Batch, sent: asyncio.Future[Any]) -> None:
    """The producer's answer for a batch, passed on to its uploads."""
    if sent.cancelled():
        _settle_with(batch, ConnectionError("the batch was cancelled"))
    else:
        _settle_with(batch, sent.exception())


def _settle_with(batch: _Batch, exc: BaseException | None) -> None:
    if batch.deadline is not None:
        batch.deadline.cancel()
    if exc is None:
        if not batch.acknowledged.done():
            batch.acknowledged.set_result(None)
    else:
        _fail(batch.acknowledged, exc)


def _fail(acknowledged: asyncio.Future[None], exc: BaseException) -> None:
    if not acknowledged.done():
        acknowledged.set_exception(exc)
        acknowledged.exception()  # retrieved: uploads that timed out no longer wait for it
