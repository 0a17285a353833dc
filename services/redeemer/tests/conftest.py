"""What the redeemer's tests need.

- Unit tests (adapters/memory.py): a `Store`, units of work over it (`uow()`), the use cases'
  `Config`, and the world's events applied through the consumers' handlers (`World`).
- Integration tests: the redeemer started in-process on real PostgreSQL and the real broker
  (`start`), the directory's and the token-issuer's events, HTTP clients, a look at its
  database.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from redeemer import domain, handlers
from redeemer.adapters.memory import MemoryUnitOfWork, Store
from redeemer.api import Services
from redeemer.app import SOURCE, build
from redeemer.domain import Standing
from redeemer.handlers import Authorised, Config, Rotated
from redeemer.settings import Settings
from scanner_auth_shared.crypto import code_digest, generate_code, normalise_code
from scanner_auth_shared.events import (
    DIRECTORY_TOPIC,
    PUBLIC_TOPIC,
    AuthorisationRejected,
    CloudEvent,
    EventData,
    ScannerDeauthorised,
    ScannerRegistered,
    ScannerRemoved,
    TokenExpired,
    TokenIssued,
    TokenRevoked,
    new_event,
)
from scanner_auth_shared.postgres import asyncpg_dsn
from scanner_auth_shared.testing.kafka import events_on, publish_events
from scanner_auth_shared.testing.plugin import FAST_CONSUMERS
from scanner_auth_shared.testing.waiting import eventually

CLIENT_IP = "203.0.113.7"
ORG = "org-1"
PEPPER = b"a-unit-test-pepper-of-at-least-32-bytes"


@dataclass(frozen=True)
class Issued:
    token_id: str
    scanner_id: str
    code: str  # as a person reads it: XXXX-XXXX-XXXX


# ------------------------------------------------------------------------------------ unit tests


class World:
    """The redeemer on its memory fakes (adapters/memory.py): its use cases, and the events the
    rest of the world sends it, applied by the consumers' handlers as the consumer does (one unit
    of work, committed). `store.clock` is the database's clock: `store.advance(seconds)`."""

    def __init__(self, config: Config | None = None, store: Store | None = None) -> None:
        self.store = store or Store()
        self.config = config or Config(pepper=PEPPER)

    def uow(self) -> MemoryUnitOfWork:
        return MemoryUnitOfWork(self.store, source=SOURCE)

    async def apply(self, handler: Callable[..., Awaitable[None]], data: EventData) -> CloudEvent:
        event = new_event(data, source="scanner-auth/token-issuer")
        async with self.uow() as uow:
            await handler(uow, event, data)
            await uow.commit()
        return event

    # ------------------------------------------------------------------ the world's events

    async def register(self, scanner_id: str, serial: str) -> None:
        await self.apply(
            handlers.on_scanner_registered,
            ScannerRegistered(scanner_id=scanner_id, org_id=ORG, serial_number=serial),
        )

    async def remove(self, scanner_id: str) -> None:
        await self.apply(handlers.on_scanner_removed, ScannerRemoved(scanner_id=scanner_id))

    def token_issued(self, scanner_id: str, *, ttl: float = 259200.0) -> tuple[Issued, TokenIssued]:
        code = generate_code()
        now = self.store.clock
        issued = Issued(str(uuid.uuid4()), scanner_id, code)
        data = TokenIssued(
            token_id=issued.token_id,
            scanner_id=scanner_id,
            org_id=ORG,
            issued_by="admin-1",
            issued_at=now,
            expires_at=now + timedelta(seconds=ttl),
            code_digest=code_digest(self.config.pepper, normalise_code(code)),
        )
        return issued, data

    async def issue(self, scanner_id: str, *, ttl: float = 259200.0) -> Issued:
        issued, data = self.token_issued(scanner_id, ttl=ttl)
        await self.apply(handlers.on_token_issued, data)
        return issued

    async def revoke(self, issued: Issued, reason: str = "revoked") -> None:
        await self.apply(
            handlers.on_token_revoked,
            TokenRevoked(
                token_id=issued.token_id,
                scanner_id=issued.scanner_id,
                org_id=ORG,
                revoked_by="admin-1",
                reason=reason,  # type: ignore[arg-type]
                revoked_at=self.store.clock,
            ),
        )

    async def expire(self, issued: Issued) -> None:
        await self.apply(
            handlers.on_token_expired,
            TokenExpired(
                token_id=issued.token_id,
                scanner_id=issued.scanner_id,
                org_id=ORG,
                expired_at=self.store.clock,
            ),
        )

    async def deauthorise(
        self, scanner_id: str, *, at: datetime | None = None, credential_id: str | None = None
    ) -> CloudEvent:
        return await self.apply(
            handlers.on_scanner_deauthorised,
            ScannerDeauthorised(
                scanner_id=scanner_id,
                org_id=ORG,
                credential_id=credential_id,
                deauthorised_by="admin-1",
                reason="deauthorised",
                deauthorised_at=at or self.store.clock,
            ),
        )

    # ------------------------------------------------------------------ the use cases

    async def redeem(self, code: str, serial: str, client_ip: str = CLIENT_IP) -> Authorised:
        return await handlers.redeem_code(self.uow(), self.config, code, serial, client_ip)

    async def refused(
        self, code: str, serial: str, client_ip: str = CLIENT_IP
    ) -> domain.RedemptionRefused:
        """The refusal of this attempt (it must be refused)."""
        with pytest.raises(domain.RedemptionRefused) as caught:
            await self.redeem(code, serial, client_ip)
        return caught.value

    async def authorised(self, scanner_id: str = "sc-1", serial: str = "LVS-0001") -> Authorised:
        """A fresh token for the scanner, redeemed."""
        return await self.redeem((await self.issue(scanner_id)).code, serial)

    async def rotate(self, credential: str | None) -> Rotated:
        return await handlers.rotate_credential(self.uow(), self.config, credential)

    async def standing(self, credential: str) -> Standing:
        return await handlers.credential_standing(self.uow(), credential)

    def rejections(self) -> list[tuple[str, str | None, str, str]]:
        """(reason, subject, serial_number, client_ip) of each AuthorisationRejected, in order."""
        return [
            (e.data["reason"], e.subject, e.data["serial_number"], e.data["client_ip"])
            for e in self.store.events(AuthorisationRejected)
        ]


@pytest.fixture
def world() -> World:
    return World()


# ------------------------------------------------------------------------------------ integration


class Harness:
    def __init__(self, settings: Settings, bootstrap: str, pepper: str) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.pepper = pepper
        self.runtime = build(settings)
        assert self.runtime.app is not None
        self.app: Any = self.runtime.app
        self.services: Services = self.app.state.services
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

    async def standing(self, credential: str) -> Standing:
        return await handlers.credential_standing(self.services.unit_of_work(), credential)

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

        found = await eventually(enough, timeout, f"{count} {type_}", every=0.2)
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
