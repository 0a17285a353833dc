"""The redeemer started in-process on real PostgreSQL and the real broker, and what its tests
need around it: the directory's and the token-issuer's events, HTTP clients, a look at its
database."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from redeemer.app import build
from redeemer.handlers import Redeemer
from redeemer.settings import Settings
from scanner_auth_shared.crypto import code_digest, generate_code, normalise_code
from scanner_auth_shared.db import asyncpg_dsn
from scanner_auth_shared.events import (
    DIRECTORY_TOPIC,
    PUBLIC_TOPIC,
    CloudEvent,
    EventData,
    ScannerDeauthorised,
    ScannerRegistered,
    ScannerRemoved,
    TokenExpired,
    TokenIssued,
    TokenRevoked,
)
from scanner_auth_shared.testing.kafka import events_on, publish_events
from scanner_auth_shared.testing.plugin import FAST_CONSUMERS

CLIENT_IP = "203.0.113.7"
ORG = "org-1"


@dataclass(frozen=True)
class Issued:
    token_id: str
    scanner_id: str
    code: str  # as a person reads it: XXXX-XXXX-XXXX


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float = 20.0, interval: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(interval)


class Harness:
    def __init__(self, settings: Settings, bootstrap: str, pepper: str) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.pepper = pepper
        self.runtime = build(settings)
        assert self.runtime.app is not None
        self.app: Any = self.runtime.app
        self.redeemer: Redeemer = self.app.state.redeemer
        self._clients: list[httpx.AsyncClient] = []

    # ------------------------------------------------------------------ HTTP

    def client(self, host: str = CLIENT_IP) -> httpx.AsyncClient:
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, client=(host, 5000)),
            base_url="http://test",
            timeout=60,
        )
        self._clients.append(client)
        return client

    async def redeem(
        self, code: str, serial: str, client: httpx.AsyncClient | None = None, **headers: str
    ) -> httpx.Response:
        client = client or self.client()
        return await client.post(
            "/v1/authorisations", json={"code": code, "serial_number": serial}, headers=headers
        )

    async def rotate(self, credential: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {credential}"} if credential is not None else {}
        return await self.client().post("/v1/credentials/rotate", headers=headers)

    # ------------------------------------------------------------------ the world's events

    async def publish(
        self, topic: str, *datas: EventData | CloudEvent, source: str = "scanner-auth/token-issuer"
    ) -> list[CloudEvent]:
        return await publish_events(self.bootstrap, topic, *datas, source=source)

    async def register(self, scanner_id: str, serial: str, *, wait: bool = True) -> CloudEvent:
        [event] = await self.publish(
            DIRECTORY_TOPIC,
            ScannerRegistered(
                scanner_id=scanner_id, org_id=ORG, serial_number=serial, name="Scanner", model="LVS"
            ),
            source="myscanner/directory",
        )
        if wait:
            assert await eventually(
                lambda: self.scalar(
                    "SELECT serial_number = $2 FROM scanners WHERE scanner_id = $1",
                    scanner_id,
                    serial,
                )
            )
        return event

    async def remove(self, scanner_id: str) -> None:
        await self.publish(
            DIRECTORY_TOPIC, ScannerRemoved(scanner_id=scanner_id), source="myscanner/directory"
        )
        assert await eventually(
            lambda: self.scalar("SELECT removed FROM scanners WHERE scanner_id = $1", scanner_id)
        )

    def token_issued(
        self, scanner_id: str, *, ttl: float = 259200.0, token_id: str | None = None
    ) -> tuple[Issued, TokenIssued]:
        code = generate_code()
        now = datetime.now(UTC)
        issued = Issued(token_id or str(uuid.uuid4()), scanner_id, code)
        data = TokenIssued(
            token_id=issued.token_id,
            scanner_id=scanner_id,
            org_id=ORG,
            issued_by="admin-1",
            issued_at=now,
            expires_at=now + timedelta(seconds=ttl),
            code_digest=code_digest(self.pepper.encode(), normalise_code(code)),
        )
        return issued, data

    async def issue(self, scanner_id: str, *, ttl: float = 259200.0) -> Issued:
        issued, data = self.token_issued(scanner_id, ttl=ttl)
        await self.publish(PUBLIC_TOPIC, data)
        await self.wait_token(issued.token_id, "active")
        return issued

    async def revoke(
        self, issued: Issued, reason: str = "revoked", wait: str | None = "revoked"
    ) -> None:
        await self.publish(
            PUBLIC_TOPIC,
            TokenRevoked(
                token_id=issued.token_id,
                scanner_id=issued.scanner_id,
                org_id=ORG,
                revoked_by="admin-1",
                reason=reason,
                revoked_at=datetime.now(UTC),
            ),
        )  # type: ignore[arg-type]
        if wait:
            await self.wait_token(issued.token_id, wait)

    async def expire(self, issued: Issued) -> None:
        await self.publish(
            PUBLIC_TOPIC,
            TokenExpired(
                token_id=issued.token_id,
                scanner_id=issued.scanner_id,
                org_id=ORG,
                expired_at=datetime.now(UTC),
            ),
        )

    async def deauthorise(
        self, scanner_id: str, *, at: datetime | None = None, credential_id: str | None = None
    ) -> CloudEvent:
        [event] = await self.publish(
            PUBLIC_TOPIC,
            ScannerDeauthorised(
                scanner_id=scanner_id,
                org_id=ORG,
                credential_id=credential_id,
                deauthorised_by="admin-1",
                reason="deauthorised",
                deauthorised_at=at or datetime.now(UTC),
            ),
        )
        return event

    async def wait_processed(self, event: CloudEvent) -> None:
        assert await eventually(
            lambda: self.scalar(
                "SELECT count(*) = 1 FROM processed_events WHERE event_id = $1", event.id
            )
        )

    # ------------------------------------------------------------------ looking inside

    async def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(asyncpg_dsn(self.settings.database_url))
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    async def scalar(self, sql: str, *args: Any) -> Any:
        rows = await self.query(sql, *args)
        return rows[0][0] if rows else None

    async def wait_token(self, token_id: str, status: str) -> None:
        assert await eventually(
            lambda: self.scalar(
                "SELECT status = $2 FROM tokens WHERE token_id = $1", token_id, status
            )
        ), f"token {token_id} never became {status}"

    async def events(self, type_: str) -> list[CloudEvent]:
        return await events_on(self.bootstrap, PUBLIC_TOPIC, type_)

    async def wait_events(self, type_: str, count: int, timeout: float = 20.0) -> list[CloudEvent]:
        async def enough() -> list[CloudEvent] | None:
            found = await self.events(type_)
            return found if len(found) >= count else None

        found = await eventually(enough, timeout, interval=0.2)
        assert found is not None, f"fewer than {count} {type_} within {timeout}s"
        return list(found)

    async def outbox_empty(self) -> bool:
        return await self.scalar("SELECT count(*) = 0 FROM outbox") is True

    async def close(self) -> None:
        for client in self._clients:
            await client.aclose()


Start = Callable[..., contextlib.AbstractAsyncContextManager[Harness]]


@pytest.fixture
def start(database_url: str, kafka: Any, test_secrets: Any) -> Start:
    """`async with start(**setting_overrides) as h:` the redeemer, running."""

    @contextlib.asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[Harness]:
        values: dict[str, Any] = {
            "database_url": database_url,
            "kafka_bootstrap_servers": kafka.bootstrap,
            "token_pepper": test_secrets.pepper,
            **FAST_CONSUMERS,
        }
        values.update(overrides)
        harness = Harness(Settings(**values), kafka.bootstrap, test_secrets.pepper)
        async with harness.runtime.running():
            try:
                yield harness
            finally:
                await harness.close()

    return run
