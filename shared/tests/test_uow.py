"""One behavioural suite for the unit of work's ports, run against both implementations: the
fake every unit test uses (in memory) and PostgreSQL. The fake is only worth having if it
behaves as the real one does."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import pytest

from scanner_auth_shared.events import CloudEvent, TokenExpired, utcnow
from scanner_auth_shared.outbox import MESSAGING_DDL
from scanner_auth_shared.postgres import Database, asyncpg_dsn
from scanner_auth_shared.uow import MemoryStore, MemoryUnitOfWork, PostgresUnitOfWork, UnitOfWork


@dataclass
class Ports:
    """A way to make units of work, and to see what committed ones left behind."""

    new: Callable[[], UnitOfWork]
    published: Callable[[], Awaitable[list[tuple[str, str | None, CloudEvent]]]]


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.unit),
        pytest.param("postgres", marks=pytest.mark.integration),
    ]
)
async def ports(request: pytest.FixtureRequest) -> AsyncIterator[Ports]:
    if request.param == "memory":
        store = MemoryStore()

        async def in_memory() -> list[tuple[str, str | None, CloudEvent]]:
            return [(o.topic, o.key, o.event) for o in store.published]

        yield Ports(lambda: MemoryUnitOfWork(store, source="scanner-auth/test"), in_memory)
        return
    url = request.getfixturevalue("database_url")
    conn = await asyncpg.connect(asyncpg_dsn(url))
    for ddl in MESSAGING_DDL:
        await conn.execute(ddl)
    database = Database(url)
    await database.connect()

    async def in_outbox() -> list[tuple[str, str | None, CloudEvent]]:
        rows = await conn.fetch("SELECT topic, key, payload FROM outbox ORDER BY id")
        return [(r["topic"], r["key"], CloudEvent.from_bytes(bytes(r["payload"]))) for r in rows]

    try:
        yield Ports(lambda: PostgresUnitOfWork(database, source="scanner-auth/test"), in_outbox)
    finally:
        await database.dispose()
        await conn.close()


def _expired(scanner: str) -> TokenExpired:
    return TokenExpired(
        token_id=f"t-{scanner}", scanner_id=scanner, org_id="o", expired_at=utcnow()
    )


async def test_events_are_published_in_order_when_the_unit_commits(ports: Ports) -> None:
    async with ports.new() as uow:
        first = uow.emit(_expired("sc-1"))
        second = uow.emit(_expired("sc-2"), key="custom-key")
        assert await ports.published() == []  # not before the commit
        await uow.commit()
    published = await ports.published()
    assert [(t, k, e.id) for t, k, e in published] == [
        ("myscanner.scanner-auth.v1", "sc-1", first.id),
        ("myscanner.scanner-auth.v1", "custom-key", second.id),
    ]
    assert published[0][2].source == "scanner-auth/test"
    assert published[0][2].subject == "sc-1"
    assert published[0][2].data["token_id"] == "t-sc-1"


async def test_a_unit_left_without_commit_publishes_and_records_nothing(ports: Ports) -> None:
    async with ports.new() as uow:
        uow.emit(_expired("sc-1"))
        assert await uow.inbox.claim("c", ["e1"]) == {"e1"}
    with pytest.raises(RuntimeError):
        async with ports.new() as uow:
            uow.emit(_expired("sc-2"))
            raise RuntimeError("the use case failed")
    assert await ports.published() == []
    async with ports.new() as uow:
        assert await uow.inbox.claim("c", ["e1"]) == {"e1"}  # the claim was rolled back too


async def test_the_inbox_claims_each_event_once_per_consumer(ports: Ports) -> None:
    async with ports.new() as uow:
        assert await uow.inbox.claim("a", ["e1", "e2", "e1"]) == {"e1", "e2"}
        await uow.commit()
    async with ports.new() as uow:
        assert await uow.inbox.claim("a", ["e2", "e3"]) == {"e3"}
        assert await uow.inbox.claim("b", ["e1"]) == {"e1"}  # another consumer's own record
        assert await uow.inbox.claim("a", []) == set()
        await uow.commit()


async def test_each_unit_starts_with_nothing_pending(ports: Ports) -> None:
    uow = ports.new()
    async with uow:
        uow.emit(_expired("sc-1"))
    async with uow:  # the same object again: the first one's event is gone with its rollback
        uow.emit(_expired("sc-2"))
        await uow.commit()
    assert [e.subject for _, _, e in await ports.published()] == ["sc-2"]
