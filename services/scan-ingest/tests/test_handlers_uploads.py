"""Uploads, in memory: `POST /v1/scans` against the gate in memory and a fake publisher (the
route, `handlers.admit` and `handlers.ingest_scan`): every answer the contract gives."""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette

from scan_ingest import domain
from scan_ingest.adapters.gate import CredentialGate, GateBuilder, GateRow
from scan_ingest.api import ScanUploads
from scan_ingest.domain import (
    SOURCE,
    Admission,
    GateLoading,
    GracePeriodEnded,
    NoCredential,
    NotJson,
    ScanNotStored,
    UnknownCredential,
    UploadRefused,
)
from scan_ingest.handlers import admit, ingest_scan
from scanner_auth_shared.crypto import generate_credential
from scanner_auth_shared.events import CloudEvent, ScanIngested, parse_data
from scanner_auth_shared.http import parse_networks

pytestmark = pytest.mark.unit

LIMIT = 256
RETRY_AFTER = 7
CHUNK = 64


@dataclass
class FakePublisher:
    """The `ScanPublisher` port: records what it acknowledged, or fails as told."""

    published: list[tuple[bytes, bytes]] = field(default_factory=list)
    failure: BaseException | None = None

    async def publish(self, key: bytes, value: bytes) -> None:
        if self.failure is not None:
            raise self.failure
        self.published.append((key, value))


@dataclass
class Rig:
    gate: CredentialGate
    publisher: FakePublisher
    client: httpx.AsyncClient
    uploads: ScanUploads

    def credential(
        self, state: str = "active", valid_until: datetime | None = None, scanner_id: str = ""
    ) -> str:
        """A credential the gate knows, in this standing."""
        credential = generate_credential()
        digest = hashlib.sha256(credential.encode()).digest()
        scanner_id = scanner_id or f"sc-{uuid.uuid4().hex[:8]}"
        self.gate.upsert(
            [GateRow(digest, f"cred-{scanner_id}", scanner_id, "org-1", state, valid_until)]
        )
        return credential

    async def upload(self, credential: str | None, content: Any = b"{}", **headers: str) -> Any:
        if credential is not None:
            headers["Authorization"] = f"Bearer {credential}"
        return await self.client.post("/v1/scans", content=content, headers=headers)


class Feed:
    """A body produced on demand, counting what the server pulled."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.pulled = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.pulled < self.total:
            self.pulled += CHUNK
            yield b" " * CHUNK


def _uploads(gate: CredentialGate, publisher: FakePublisher) -> ScanUploads:
    return ScanUploads(
        gate=gate,
        publisher=publisher,
        max_body_bytes=LIMIT,
        retry_after_seconds=RETRY_AFTER,
        trusted_proxies=parse_networks("203.0.113.0/24"),
    )


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    gate, publisher = CredentialGate(), FakePublisher()
    gate.replace_all(GateBuilder())  # loaded, empty
    uploads = _uploads(gate, publisher)
    transport = httpx.ASGITransport(
        app=Starlette(routes=uploads.routes()), client=("203.0.113.7", 5000)
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield Rig(gate, publisher, client, uploads)


def _outcomes() -> dict[str, float]:
    return {
        outcome: REGISTRY.get_sample_value("scan_ingest_uploads_total", {"outcome": outcome}) or 0
        for outcome in ("accepted", "unauthorised", "forbidden", "too_large", "invalid")
    }


def _problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


# ------------------------------------------------------------------------------ 202


async def test_an_admitted_upload_is_published_and_answered_with_the_clients_scan_id(
    rig: Rig,
) -> None:
    credential = rig.credential(scanner_id="sc-1")
    body = b'{"scan_id": "scan-0001", "volume_m3": 12.5}'
    before = time.time()
    response = await rig.upload(credential, body)
    assert response.status_code == 202
    answer = response.json()
    assert answer["scan_id"] == "scan-0001"
    received = datetime.fromisoformat(answer["received_at"])
    assert answer["received_at"].endswith("Z") and received.timestamp() >= before - 1e-3
    [(key, value)] = rig.publisher.published
    assert key == b"sc-1"
    event = CloudEvent.from_bytes(value)
    assert (event.type, event.source, event.subject) == ("ScanIngested", SOURCE, "sc-1")
    data = parse_data(event)
    assert isinstance(data, ScanIngested)
    assert (data.scan_id, data.scanner_id, data.org_id, data.credential_id) == (
        "scan-0001",
        "sc-1",
        "org-1",
        "cred-sc-1",
    )
    assert data.scan == orjson.loads(body) and data.size_bytes == len(body)
    assert data.received_at == received
    assert credential.encode() not in value


async def test_without_a_scan_id_the_gateway_makes_one_up(rig: Rig) -> None:
    credential = rig.credential()
    first = await rig.upload(credential, b'{"volume_m3": 1}')
    second = await rig.upload(credential, b'{"volume_m3": 1}')
    assert first.status_code == second.status_code == 202
    assert uuid.UUID(first.json()["scan_id"]).version == 4
    assert first.json()["scan_id"] != second.json()["scan_id"]


async def test_a_rotated_credential_is_admitted_within_its_grace_period(rig: Rig) -> None:
    credential = rig.credential("rotating", datetime.now(UTC) + timedelta(minutes=5))
    assert (await rig.upload(credential)).status_code == 202


# ------------------------------------------------------------------------------ 401


@pytest.mark.parametrize(
    "authorization",
    [None, "Basic dTpw", "Bearer", "Bearer ", "bearer", "Token abc", "just-a-credential"],
)
async def test_no_credential_is_401_with_a_bearer_challenge(
    rig: Rig, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = await rig.client.post("/v1/scans", content=b"{}", headers=headers)
    _problem(response, 401)
    assert response.headers["www-authenticate"] == 'Bearer realm="scan-ingest"'
    assert rig.publisher.published == []


@pytest.mark.parametrize(
    "credential", ["x" * 513, "\xe9t\xe9", "unknown-" + "c" * 40, generate_credential()]
)
async def test_a_garbled_or_unknown_credential_is_401_invalid_token(
    rig: Rig, credential: str
) -> None:
    response = await rig.client.post(
        "/v1/scans",
        content=b"{}",
        headers={"Authorization": f"Bearer {credential}".encode("latin-1")},
    )
    body = _problem(response, 401)
    assert body["detail"] == "the credential is not valid"
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


# ------------------------------------------------------------------------------ 403


@pytest.mark.parametrize(
    ("state", "detail"),
    [
        ("revoked", "the scanner's authorisation was withdrawn"),
        ("replaced", "this credential was replaced: the scanner was authorised again"),
        ("rotating", "this credential was rotated and its grace period has ended"),
    ],
)
async def test_a_credential_that_no_longer_works_is_403_saying_why(
    rig: Rig, state: str, detail: str, caplog: pytest.LogCaptureFixture
) -> None:
    ended = datetime.now(UTC) - timedelta(seconds=1)
    credential = rig.credential(state, ended if state == "rotating" else None, "sc-dead")
    counted = _outcomes()["forbidden"]
    with caplog.at_level(logging.INFO, logger="scanner_auth.scan_ingest"):
        response = await rig.upload(
            credential, b'{"scan_id": "s"}', **{"X-Forwarded-For": "198.51.100.9"}
        )
    assert _problem(response, 403)["detail"] == detail
    assert rig.publisher.published == []
    assert _outcomes()["forbidden"] == counted + 1
    # Logged with the client's address (the peer is a trusted proxy: the forwarded one), and
    # never the credential.
    [refusal] = [r for r in caplog.records if r.getMessage().startswith("upload refused")]
    assert vars(refusal)["client_ip"] == "198.51.100.9"
    assert (vars(refusal)["state"], vars(refusal)["scanner_id"]) == (state, "sc-dead")
    assert credential not in caplog.text + "".join(str(vars(r)) for r in caplog.records)


# ------------------------------------------------------------------------------ 413, 400


async def test_a_declared_length_over_the_limit_is_413_before_a_byte_is_read(rig: Rig) -> None:
    credential = rig.credential()
    feed = Feed(100 * LIMIT)
    response = await rig.upload(credential, feed, **{"Content-Length": str(100 * LIMIT)})
    assert _problem(response, 413)["detail"] == f"the body exceeds {LIMIT} bytes"
    assert response.headers["connection"] == "close"
    assert feed.pulled == 0


async def test_a_streamed_body_is_413_once_past_the_limit_the_rest_never_read(rig: Rig) -> None:
    credential = rig.credential()
    feed = Feed(100 * LIMIT)
    response = await rig.upload(credential, feed)
    _problem(response, 413)
    assert response.headers["connection"] == "close"
    assert feed.pulled <= LIMIT + CHUNK
    exactly = orjson.dumps({"p": "y" * (LIMIT - 8)})
    assert len(exactly) == LIMIT
    assert (await rig.upload(credential, exactly)).status_code == 202
    assert (await rig.upload(credential, exactly + b" ")).status_code == 413
    assert len(rig.publisher.published) == 1


async def test_a_content_length_that_is_not_a_number_is_400(rig: Rig) -> None:
    response = await rig.upload(rig.credential(), b"{}", **{"Content-Length": "abc"})
    _problem(response, 400)
    assert response.headers["connection"] == "close"


async def test_a_client_that_leaves_mid_body_is_400(rig: Rig) -> None:
    credential = rig.credential()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/scans",
        "headers": [(b"authorization", f"Bearer {credential}".encode())],
        "client": ("203.0.113.7", 5000),
    }
    messages = [
        {"type": "http.request", "body": b'{"a": ', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await Starlette(routes=rig.uploads.routes())(scope, receive, send)
    assert sent[0]["status"] == 400
    assert orjson.loads(sent[1]["body"])["detail"] == "the client went away before the body ended"
    assert rig.publisher.published == []


# ------------------------------------------------------------------------------ 422


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b"", "the body is not JSON"),
        (b"not json", "the body is not JSON"),
        (b'{"a": NaN}', "the body is not JSON"),
        (b"[1, 2]", "the body must be a JSON object"),
        (b"null", "the body must be a JSON object"),
        (b'{"scan_id": 7}', "scan_id must be a string of 1 to 200 characters"),
        (b'{"scan_id": null}', "scan_id must be a string of 1 to 200 characters"),
        (b'{"scan_id": ""}', "scan_id must be a string of 1 to 200 characters"),
    ],
)
async def test_a_body_that_is_not_a_json_object_with_a_usable_scan_id_is_422(
    rig: Rig, content: bytes, detail: str
) -> None:
    response = await rig.upload(rig.credential(), content)
    assert _problem(response, 422)["detail"] == detail
    assert rig.publisher.published == []


# ------------------------------------------------------------------------------ 503


async def test_an_upload_kafka_did_not_acknowledge_is_503_with_retry_after(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    credential = rig.credential()
    rig.publisher.failure = TimeoutError("not acknowledged in time")
    with caplog.at_level(logging.WARNING, logger="scanner_auth.scan_ingest"):
        response = await rig.upload(credential, b'{"scan_id": "s-1"}')
    body = _problem(response, 503)
    assert body["detail"] == "the scan could not be stored; retry later with the same scan_id"
    assert response.headers["retry-after"] == str(RETRY_AFTER)
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert (vars(warning)["scan_id"], vars(warning)["error"]) == ("s-1", "TimeoutError")
    # Kafka back: the same upload is accepted.
    rig.publisher.failure = None
    assert (await rig.upload(credential, b'{"scan_id": "s-1"}')).status_code == 202


async def test_before_the_gate_is_loaded_an_upload_is_503_not_401() -> None:
    gate, publisher = CredentialGate(), FakePublisher()
    transport = httpx.ASGITransport(app=Starlette(routes=_uploads(gate, publisher).routes()))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        headers = {"Authorization": f"Bearer {generate_credential()}"}
        response = await client.post("/v1/scans", content=b"{}", headers=headers)
        assert _problem(response, 503)["detail"] == "the gate is still loading"
        assert response.headers["retry-after"] == "1"
        # Without any credential it is still 401: nothing to wait for.
        _problem(await client.post("/v1/scans", content=b"{}"), 401)


# ------------------------------------------------------------------------------ the handlers


def test_admit_refuses_in_order_cheapest_first() -> None:
    gate = CredentialGate()
    with pytest.raises(NoCredential):
        admit(gate, None, 0.0)
    with pytest.raises(UnknownCredential):
        admit(gate, "x" * 513, 0.0)  # not hashed, not even looked up
    with pytest.raises(GateLoading):
        admit(gate, "well-formed", 0.0)
    credential = "c" * 43
    digest = hashlib.sha256(credential.encode()).digest()
    deadline = datetime(2026, 3, 1, tzinfo=UTC)
    gate.replace_all(GateBuilder())
    gate.upsert([GateRow(digest, "cred-1", "sc-1", "org-1", "rotating", deadline)])
    assert admit(gate, credential, deadline.timestamp()) == Admission(
        "sc-1", "org-1", "cred-1", domain.CredentialState.ROTATING, True
    )
    with pytest.raises(GracePeriodEnded):
        admit(gate, credential, deadline.timestamp() + 0.001)


async def test_ingest_scan_refuses_before_publishing_and_wraps_a_failed_publish() -> None:
    publisher = FakePublisher()
    admission = Admission("sc-1", "org-1", "cred-1", 0, True)
    when = datetime(2026, 3, 1, 12, 0, 0, 1234, tzinfo=UTC)
    with pytest.raises(NotJson):
        await ingest_scan(publisher, admission, b"{", when)
    assert publisher.published == []
    accepted = await ingest_scan(publisher, admission, b'{"scan_id": "s"}', when)
    assert accepted == ("s", "2026-03-01T12:00:00.001234Z")
    publisher.failure = ConnectionError("the scan publisher stopped")
    with pytest.raises(ScanNotStored) as refused:
        await ingest_scan(publisher, admission, b"{}", when)
    assert isinstance(refused.value.__cause__, ConnectionError)


def test_every_refusal_has_its_answer(rig: Rig) -> None:
    refusals = {
        kind
        for kind in vars(domain).values()
        if isinstance(kind, type) and issubclass(kind, UploadRefused)
    }
    answered = set(rig.uploads.answers)
    assert refusals - {UploadRefused, domain.InvalidScan} <= answered
