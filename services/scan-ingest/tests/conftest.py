"""What scan-ingest's integration tests share: the service started in-process on real PostgreSQL
and a real broker, scanners authorised the way the redeemer announces them, and polling."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from scan_ingest.app import build
from scan_ingest.settings import Settings
from scanner_auth_shared.crypto import credential_digest, generate_credential
from scanner_auth_shared.events import (
    PUBLIC_TOPIC,
    CredentialRotated,
    CredentialsRevoked,
    EventData,
    ScannerAuthorised,
    ScannerDeauthorised,
)
from scanner_auth_shared.runtime import ServiceRuntime
from scanner_auth_shared.testing.kafka import publish_events
from scanner_auth_shared.testing.plugin import FAST_CONSUMERS
from scanner_auth_shared.testing.waiting import eventually


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Scanner:
    """A scanner and the credentials the redeemer gave it."""

    scanner_id: str = field(default_factory=lambda: f"sc-{uuid.uuid4().hex[:12]}")
    org_id: str = "org-loadscan"
    serial_number: str = field(default_factory=lambda: f"LVS-{uuid.uuid4().hex[:6]}")

    def authorised(self, at: datetime | None = None) -> tuple[str, str, ScannerAuthorised]:
        """(credential, credential_id, the event announcing it)."""
        credential, credential_id = generate_credential(), f"cred-{uuid.uuid4().hex[:12]}"
        return (
            credential,
            credential_id,
            ScannerAuthorised(
                scanner_id=self.scanner_id,
                org_id=self.org_id,
                token_id=f"tok-{uuid.uuid4().hex[:8]}",
                serial_number=self.serial_number,
                credential_id=credential_id,
                credential_digest=credential_digest(credential),
                authorised_at=at or now(),
            ),
        )

    def rotated(
        self, previous_credential_id: str, valid_for: timedelta, at: datetime | None = None
    ) -> tuple[str, str, CredentialRotated]:
        credential, credential_id = generate_credential(), f"cred-{uuid.uuid4().hex[:12]}"
        moment = at or now()
        return (
            credential,
            credential_id,
            CredentialRotated(
                scanner_id=self.scanner_id,
                org_id=self.org_id,
                credential_id=credential_id,
                credential_digest=credential_digest(credential),
                previous_credential_id=previous_credential_id,
                previous_valid_until=moment + valid_for,
                rotated_at=moment,
            ),
        )

    def revoked(self, *credential_ids: str, at: datetime | None = None) -> CredentialsRevoked:
        """What the redeemer announces when it applied a deauthorisation."""
        return CredentialsRevoked(
            scanner_id=self.scanner_id,
            org_id=self.org_id,
            credential_ids=list(credential_ids),
            reason="deauthorised",
            revoked_at=at or now(),
            cause_event_id=str(uuid.uuid4()),
        )

    def deauthorised(
        self, at: datetime | None = None, credential_id: str | None = None
    ) -> ScannerDeauthorised:
        """What the token-issuer announces (the gate no longer acts on it: issue 18)."""
        return ScannerDeauthorised(
            scanner_id=self.scanner_id,
            org_id=self.org_id,
            credential_id=credential_id,
            deauthorised_by="u-admin",
            reason="deauthorised",
            deauthorised_at=at or now(),
        )


@dataclass
class Ingest:
    """One running scan-ingest replica and an HTTP client on it."""

    runtime: ServiceRuntime
    client: httpx.AsyncClient

    async def upload(
        self, credential: str | None, body: Any = None, **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if credential is not None:
            headers["Authorization"] = f"Bearer {credential}"
        if body is not None:
            kwargs["json"] = body
        return await self.client.post("/v1/scans", headers=headers, **kwargs)

    async def status(self, credential: str, body: Any = None) -> int:
        response = await self.upload(credential, body if body is not None else {"probe": True})
        return response.status_code

    async def until_status(self, credential: str, status: int, timeout: float = 20.0) -> float:
        """Seconds until an upload with `credential` answers `status` (AssertionError if never)."""
        started = time.monotonic()
        seen = await eventually(lambda: self._is(credential, status), timeout)
        assert seen, f"no {status} within {timeout}s"
        return time.monotonic() - started

    async def _is(self, credential: str, status: int) -> bool:
        return await self.status(credential) == status

    async def ready(self) -> bool:
        return (await self.client.get("/readyz")).status_code == 200


@dataclass
class World:
    database_url: str
    bootstrap: str

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": self.database_url,
            "kafka_bootstrap_servers": self.bootstrap,
            **FAST_CONSUMERS,
        }
        values.update(overrides)
        return Settings(**values)

    @contextlib.asynccontextmanager
    async def ingest(self, *, wait_ready: bool = True, **overrides: Any) -> AsyncIterator[Ingest]:
        runtime = build(self.settings(**overrides))
        assert runtime.app is not None
        transport = httpx.ASGITransport(app=runtime.app, client=("203.0.113.7", 5000))
        async with (
            runtime.running(),
            httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client,
        ):
            service = Ingest(runtime, client)
            if wait_ready:
                assert await eventually(service.ready, 30, every=0.05), (
                    "scan-ingest never became ready"
                )
            yield service

    async def announce(self, *datas: EventData) -> None:
        """Publish as their producers would (the redeemer's, the token-issuer's events)."""
        await publish_events(self.bootstrap, PUBLIC_TOPIC, *datas)


@pytest.fixture
def world(database_url: str, kafka: Any) -> World:
    return World(database_url, kafka.bootstrap)
