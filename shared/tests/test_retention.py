"""The processed-event table stops growing (`outbox.purge_processed_events`) without ever
letting a redelivered event take effect twice."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
import yaml

from scanner_auth_shared.consumer import Consumer, ConsumerRunner
from scanner_auth_shared.events import (
    DIRECTORY_TOPIC,
    NOTIFICATIONS_TOPIC,
    PUBLIC_TOPIC,
    CloudEvent,
    ScannerRegistered,
    new_event,
)
from scanner_auth_shared.outbox import (
    MESSAGING_DDL,
    MESSAGING_RETENTION_DDL,
    purge_processed_events,
)
from scanner_auth_shared.postgres import Connection, Database, asyncpg_dsn
from scanner_auth_shared.settings import DatabaseSettings
from scanner_auth_shared.uow import PostgresUnitOfWork

TOPICS = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "topics" / "topics.yaml"


@pytest.mark.unit
def test_the_retention_outlives_every_consumed_topic() -> None:
    """A redelivery can only bring back what is still on a topic: the default retention must
    be longer than the longest retention of any topic a service consumes."""
    retention_ms = {
        doc["spec"]["topicName"]: int(doc["spec"]["config"]["retention.ms"])
        for doc in yaml.safe_load_all(TOPICS.read_text())
        if doc and doc.get("kind") == "KafkaTopic"
    }
    consumed = [PUBLIC_TOPIC, NOTIFICATIONS_TOPIC]  # the directory's topic is not ours
    longest = max(retention_ms[t] for t in consumed)
    default = DatabaseSettings.model_fields["processed_event_retention_days"].default
    assert timedelta(days=default) > timedelta(milliseconds=longest)


class _Effects(PostgresUnitOfWork):
    def bind(self, conn: Connection) -> None:
        self.effects = conn


@pytest.mark.integration
async def test_purging_forgets_only_what_no_redelivery_can_bring_back(database_url: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    for ddl in (*MESSAGING_DDL, *MESSAGING_RETENTION_DDL):
        await conn.execute(ddl)
    await conn.execute("CREATE TABLE effects (scanner_id TEXT)")
    database = Database(database_url)
    await database.connect()

    async def on_registered(uow: _Effects, event: CloudEvent, data: ScannerRegistered) -> None:
        await uow.effects.execute("INSERT INTO effects VALUES ($1)", data.scanner_id)

    runner = ConsumerRunner(
        Consumer(
            name="t",
            topic=DIRECTORY_TOPIC,
            handlers={ScannerRegistered: on_registered},
            description="t",
        ),
        lambda: _Effects(database, source="scanner-auth/test"),
        broker=None,  # type: ignore[arg-type]  # nothing is dead-lettered here
        max_attempts=1,
    )

    class Record:
        def __init__(self, event: CloudEvent) -> None:
            self.topic, self.partition, self.offset, self.key = DIRECTORY_TOPIC, 0, 0, None
            self.value, self.headers = event.to_bytes(), []

    old = new_event(
        ScannerRegistered(scanner_id="sc-old", org_id="o", serial_number="s"),
        source="myscanner/directory",
    )
    recent = new_event(
        ScannerRegistered(scanner_id="sc-new", org_id="o", serial_number="s"),
        source="myscanner/directory",
    )
    try:
        await runner.handle_batch([Record(old), Record(recent)])
        # 3,000 more rows, 40 days old: the purge goes in batches.
        await conn.execute(
            "INSERT INTO processed_events (consumer, event_id, processed_at) "
            "SELECT 'bulk', 'e' || n, now() - interval '40 days' FROM generate_series(1, 3000) n"
        )
        await conn.execute(
            "UPDATE processed_events SET processed_at = now() - interval '40 days' "
            "WHERE event_id = $1",
            old.id,
        )
        removed = await purge_processed_events(database, timedelta(days=35), batch=1000)
        assert removed == 3001
        remaining = {
            r["event_id"] for r in await conn.fetch("SELECT event_id FROM processed_events")
        }
        assert remaining == {recent.id}
        # The recent event comes back (a redelivery): no second effect.
        await runner.handle_batch([Record(recent)])
        effects = [r["scanner_id"] for r in await conn.fetch("SELECT scanner_id FROM effects")]
        assert sorted(effects) == ["sc-new", "sc-old"]
    finally:
        await database.dispose()
        await conn.close()
