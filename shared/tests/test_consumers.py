"""Idempotent consumers and dead letters (`scanner_auth_shared.consumer`), on real PostgreSQL
and Apache Kafka."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from faststream.kafka import KafkaBroker

from scanner_auth_shared.consumer import Consumer, subscribe
from scanner_auth_shared.events import (
    DIRECTORY_TOPIC,
    CloudEvent,
    ScannerRegistered,
    dlq_topic,
    new_event,
)
from scanner_auth_shared.messaging import create_broker, start_broker
from scanner_auth_shared.outbox import MESSAGING_DDL
from scanner_auth_shared.postgres import Connection, Database, asyncpg_dsn
from scanner_auth_shared.settings import ServiceSettings
from scanner_auth_shared.testing.kafka import publish_events, publish_raw, read_topic
from scanner_auth_shared.testing.plugin import FAST_CONSUMERS
from scanner_auth_shared.uow import PostgresUnitOfWork

pytestmark = pytest.mark.integration


async def _setup(url: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        for ddl in MESSAGING_DDL:
            await conn.execute(ddl)
        await conn.execute(
            "CREATE TABLE effects (scanner_id TEXT, applied_at TIMESTAMPTZ DEFAULT now())"
        )
    finally:
        await conn.close()


def _registered(n: int, serial: str = "LVS-1") -> ScannerRegistered:
    return ScannerRegistered(
        scanner_id=f"sc-{n}", org_id="org", serial_number=serial, name="n", model="LVS"
    )


class _EffectsUnitOfWork(PostgresUnitOfWork):
    """A service of one table: what a consumer's handler changes."""

    def bind(self, conn: Connection) -> None:
        self.effects = conn


async def _consumer(
    url: str, bootstrap: str, fail_times: int = 0
) -> tuple[KafkaBroker, Database, list[str]]:
    settings = ServiceSettings(
        kafka_bootstrap_servers=bootstrap, consumer_max_attempts=3, **FAST_CONSUMERS
    )
    db = Database(url)
    await db.connect()
    broker = create_broker(settings, "test")
    failures = {"left": fail_times}
    seen: list[str] = []

    async def on_registered(
        uow: _EffectsUnitOfWork, event: CloudEvent, data: ScannerRegistered
    ) -> None:
        seen.append(event.id)
        if data.serial_number == "BOOM" and failures["left"] > 0:
            failures["left"] -= 1
            raise RuntimeError("a bug that does not go away")
        await uow.effects.execute("INSERT INTO effects (scanner_id) VALUES ($1)", data.scanner_id)

    subscribe(
        broker,
        settings,
        Consumer(
            name="test",
            topic=DIRECTORY_TOPIC,
            handlers={ScannerRegistered: on_registered},
            description="test effects",
        ),
        lambda: _EffectsUnitOfWork(db, source="scanner-auth/test"),
    )
    await start_broker(broker)
    return broker, db, seen


async def _effects(url: str) -> list[str]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return [
            r[0] for r in await conn.fetch("SELECT scanner_id FROM effects ORDER BY applied_at")
        ]
    finally:
        await conn.close()


async def _eventually(check, timeout: float = 15.0):  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if result := await check():
            return result
        await asyncio.sleep(0.1)
    return await check()


async def test_a_redelivered_event_has_no_second_effect(database_url, kafka):
    await _setup(database_url)
    broker, db, seen = await _consumer(database_url, kafka.bootstrap)
    try:
        event = new_event(_registered(1), source="myscanner/directory")
        await publish_events(kafka.bootstrap, DIRECTORY_TOPIC, event, event)
        await publish_events(kafka.bootstrap, DIRECTORY_TOPIC, _registered(2))
        assert await _eventually(lambda: _has(database_url, "sc-2"))
        # The inbox, not the handler, absorbs the repeat: the handler ran once.
        assert seen.count(event.id) == 1
        assert sorted(await _effects(database_url)) == ["sc-1", "sc-2"]
    finally:
        await broker.stop()
        await db.dispose()


async def _has(url: str, scanner: str) -> bool:
    return scanner in await _effects(url)


async def test_poison_messages_reach_the_dlq_and_the_consumer_carries_on(database_url, kafka):
    await _setup(database_url)
    broker, db, _ = await _consumer(database_url, kafka.bootstrap, fail_times=99)
    try:
        await publish_raw(kafka.bootstrap, DIRECTORY_TOPIC, "x", b"not json at all")
        bad_data = CloudEvent(
            type="ScannerRegistered", source="s", subject="x", data={"scanner_id": 5}
        )
        await publish_raw(kafka.bootstrap, DIRECTORY_TOPIC, "x", bad_data.to_bytes())
        await publish_events(kafka.bootstrap, DIRECTORY_TOPIC, _registered(3, serial="BOOM"))
        await publish_events(kafka.bootstrap, DIRECTORY_TOPIC, _registered(4))
        assert await _eventually(lambda: _has(database_url, "sc-4"))
        dead = await _eventually(lambda: _at_least(kafka.bootstrap, 3))
        assert dead[0].value == b"not json at all"
        headers = [dict(r.headers) for r in dead]
        assert [h["x-dlq-reason"] for h in headers] == [b"unparseable", b"unparseable", b"failed"]
        assert all(h["x-dlq-consumer"] == b"test" and h["x-dlq-failed-at"] for h in headers)
        assert headers[2]["x-dlq-attempts"] == b"3"
        assert "sc-3" not in await _effects(database_url)
    finally:
        await broker.stop()
        await db.dispose()


async def _at_least(bootstrap: str, n: int):  # type: ignore[no-untyped-def]
    records = await read_topic(bootstrap, dlq_topic(DIRECTORY_TOPIC))
    return sorted(records, key=lambda r: r.timestamp) if len(records) >= n else None


async def test_an_unknown_event_type_is_skipped_not_dead_lettered(database_url, kafka):
    await _setup(database_url)
    broker, db, _ = await _consumer(database_url, kafka.bootstrap)
    try:
        await publish_raw(
            kafka.bootstrap,
            DIRECTORY_TOPIC,
            "x",
            CloudEvent(type="ScannerRenamed", source="s", data={}).to_bytes(),
        )
        await publish_events(kafka.bootstrap, DIRECTORY_TOPIC, _registered(5))
        assert await _eventually(lambda: _has(database_url, "sc-5"))
        assert await read_topic(kafka.bootstrap, dlq_topic(DIRECTORY_TOPIC)) == []
    finally:
        await broker.stop()
        await db.dispose()
