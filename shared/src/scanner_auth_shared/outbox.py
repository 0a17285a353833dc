"""Transactional outbox, its relay, and the processed-event table of idempotent consumers.

- `uow.emit` (the unit of work, `uow.py`) writes an event in the unit's transaction: it is
  published if and only if that transaction commits.
- `OutboxRelay` publishes committed rows to Kafka, at least once, in id order. One relay per
  service is active at a time (a PostgreSQL advisory lock held by its connection); the others
  wait as hot standbys. It wakes on commit (LISTEN/NOTIFY, fired by a trigger) and also polls.
  A row is deleted only after the broker acknowledged it; on any failure the same rows are
  retried from the oldest, so a broker outage delays events but neither loses nor reorders them.
- Per-key order: outbox ids follow commit order for one key as long as every transaction that
  writes events for a key first locks that key's row (each service's handlers do), so the
  relay's id order is commit order per key.
- The inbox (`uow.inbox.claim`, called by the shared consumer) records (consumer, event id) in
  the handler's transaction: a redelivered event finds its row and has no second effect.
  `purge_processed_events` forgets rows once their events can no longer come back.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

from . import metrics
from .listen import Listener
from .messaging import default_partition, kafka_headers, record_headers
from .outages import is_infrastructure_error
from .postgres import Connection, Database
from .signing import SIGNATURE_HEADER, EventSigner

log = logging.getLogger("scanner_auth.outbox")

NOTIFY_CHANNEL = "scanner_auth_outbox"

# DDL shared by every service's first migration.
MESSAGING_DDL = (
    """
    CREATE TABLE IF NOT EXISTS outbox (
        id BIGSERIAL PRIMARY KEY,
        event_id TEXT NOT NULL,
        event_type TEXT NOT NULL,
        topic TEXT NOT NULL,
        key TEXT,
        payload BYTEA NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
    )
    """,
    f"""
    CREATE OR REPLACE FUNCTION scanner_auth_outbox_notify() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('{NOTIFY_CHANNEL}', '');
        RETURN NULL;
    END $$
    """,
    "DROP TRIGGER IF EXISTS outbox_notify ON outbox",
    """
    CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION scanner_auth_outbox_notify()
    """,
    """
    CREATE TABLE IF NOT EXISTS processed_events (
        consumer TEXT NOT NULL,
        event_id TEXT NOT NULL,
        processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (consumer, event_id)
    )
    """,
)

# DDL of the messaging tables' retention, run by each service's migration after MESSAGING_DDL
# (idempotent): an index that makes purging the processed-event table cheap, and autovacuum
# tuned for the outbox, whose every row is deleted within moments of its insert (a queue table:
# vacuumed after a fixed number of dead rows, not a fraction of a table that is nearly empty).
MESSAGING_RETENTION_DDL = (
    "CREATE INDEX IF NOT EXISTS processed_events_age ON processed_events (processed_at)",
    """
    ALTER TABLE outbox SET (
        autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000,
        autovacuum_vacuum_insert_scale_factor = 0, autovacuum_vacuum_insert_threshold = 1000
    )
    """,
)
# What undoes it (migration 0002's downgrade).
MESSAGING_RETENTION_UNDO_DDL = (
    "DROP INDEX IF EXISTS processed_events_age",
    """
    ALTER TABLE outbox RESET (
        autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,
        autovacuum_vacuum_insert_scale_factor, autovacuum_vacuum_insert_threshold
    )
    """,
)

_PURGE_PROCESSED = """
    DELETE FROM processed_events
    WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM processed_events WHERE processed_at < now() - $1::interval LIMIT $2
    ))
"""


async def purge_processed_events(
    database: Database, retention: timedelta, *, batch: int = 10_000
) -> int:
    """Forget processed-event rows older than `retention`, in batches (short transactions, no
    long lock). The number of rows removed.

    Safe once `retention` exceeds how long an event can come back: Kafka redelivers only what
    is still on its topic, so a retention longer than every consumed topic's (30 days for the
    public topic, 7 for the notifications topic: deploy/k8s/topics) means a row is forgotten
    only after its event left the topic. Redeliveries after a crash come back within seconds;
    a group whose offsets expired, or was reset, replays at most the topic's retention."""
    removed = 0
    while True:
        async with database.transaction() as conn:
            status = await conn.execute(_PURGE_PROCESSED, retention, batch)
        count = int(status.rsplit(" ", 1)[-1])
        removed += count
        metrics.PROCESSED_EVENTS_PURGED.inc(count)
        if count < batch:
            return removed


# (topic, key, payload, headers) -> a future that resolves when the broker acknowledged
Send = Callable[[str, bytes | None, bytes, dict[str, str]], Awaitable[asyncio.Future[Any]]]

_BATCH = "SELECT id, topic, key, payload, event_type FROM outbox ORDER BY id LIMIT $1"
_DELETE = "DELETE FROM outbox WHERE id = ANY($1::bigint[])"


class OutboxRelay:
    """Publishes a service's committed outbox rows, oldest first; one replica at a time."""

    def __init__(
        self,
        database: Database,
        send: Send,
        *,
        service: str,
        poll_interval: float = 1.0,
        batch_size: int = 1000,
        producer: Callable[[], Any] | None = None,
        signer: EventSigner | None = None,
        renew: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        """`producer`, when given, returns the started aiokafka producer (or None): the relay
        then hands Kafka whole record batches (`send_batch`) instead of calling `send` once per
        row: about three times the events per second (bench/README.md). `signer`: each record
        then carries its producer's signature (scanner_auth_shared.signing). `renew`: called
        after a failed drain, replaces a producer that stopped for good
        (messaging.renew_producer)."""
        self.database = database
        self.send = send
        self.producer = producer
        self.signer = signer
        self.renew = renew
        self.service = service
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.lock_key = zlib.crc32(f"scanner-auth-outbox:{service}".encode())
        self.active = False  # holds the lock and is publishing
        self.healthy = True  # false while it cannot reach the database or the broker
        self._stopping = asyncio.Event()
        self.listener = Listener(
            database, {NOTIFY_CHANNEL: self._on_notify}, name=f"{service}-outbox-relay"
        )

    async def run(self) -> None:
        try:
            await self.listener.run(self._session)
        finally:
            self.active = False

    async def stop(self, *, drain_timeout: float = 5.0) -> None:
        """Stop after publishing what is committed now (the runtime bounds the wait)."""
        self._stopping.set()
        self.listener.wake()

    async def _session(self, conn: Connection) -> None:
        """On the listener's connection: become the active relay, then pump until stopped."""
        try:
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.lock_key):
                self.healthy = True  # a standby is healthy
                if self._stopping.is_set():
                    return
                await self.listener.idle(self.poll_interval)
            self.active = True
            self.healthy = True
            log.info("outbox relay active", extra={"relay": self.service})
            while True:
                published = await self._drain(conn)
                if self._stopping.is_set() and published == 0:
                    return
                if published >= self.batch_size or self._stopping.is_set():
                    continue
                await self.listener.idle(self.poll_interval)
        except Exception:
            self.healthy = False
            raise
        finally:
            self.active = False

    async def _drain(self, conn: Connection) -> int:
        try:
            published = await self.drain_once(conn)
        except Exception as exc:
            renewed = self.renew is not None and await self.renew()
            if not (renewed or is_infrastructure_error(exc)):
                raise
            # The broker is unreachable (or the database went away): the same rows again, from
            # the oldest, after a pause; a dead database connection fails the next statement.
            self.healthy = False
            log.warning(
                "outbox relay could not publish; retrying",
                extra={"relay": self.service, "error": type(exc).__name__},
            )
            await self.listener.idle(min(self.poll_interval, 1.0))
            return 0
        self.healthy = True
        return published

    async def drain_once(self, conn: Connection) -> int:
        """Publish the oldest batch of committed rows; delete them once acknowledged."""
        rows: Sequence[Any] = await conn.fetch(_BATCH, self.batch_size)
        metrics.OUTBOX_PENDING.labels(self.service).set(len(rows))
        if not rows:
            return 0
        producer = self.producer() if self.producer is not None else None
        if producer is not None:
            await asyncio.gather(*await _send_batches(producer, rows, self.signer))
        else:
            futures = []
            for row in rows:
                key = row["key"].encode() if row["key"] is not None else None
                value = bytes(row["payload"])
                headers = kafka_headers(row["event_type"])
                if self.signer is not None:
                    headers[SIGNATURE_HEADER] = self.signer.sign(row["topic"], key, value).decode()
                futures.append(await self.send(row["topic"], key, value, headers))
            await asyncio.gather(*futures)
        await conn.execute(_DELETE, [r["id"] for r in rows])
        metrics.OUTBOX_PUBLISHED.labels(self.service).inc(len(rows))
        return len(rows)

    def _on_notify(self, _payload: str) -> None:
        """A commit wrote outbox rows (the trigger's NOTIFY): `idle` wakes."""


async def _send_batches(
    producer: Any, rows: Sequence[Any], signer: EventSigner | None = None
) -> list[Any]:
    """Hand `rows` to Kafka as record batches, one per topic partition at a time, in id order
    within each partition; the futures of their acknowledgements.

    The same records as one `send()` per row: key, value, the CloudEvents headers, the
    producer's timestamp, and the partition Kafka's default partitioner chooses for the key
    (murmur2, as the Java client and aiokafka; a row without a key goes to partition 0)."""
    batches: dict[tuple[str, int], Any] = {}
    futures: list[Any] = []
    partitions: dict[str, list[int]] = {}
    for row in rows:
        topic = row["topic"]
        known = partitions.get(topic)
        if known is None:
            known = partitions[topic] = sorted(await producer.partitions_for(topic))
        key = row["key"].encode() if row["key"] is not None else None
        partition = default_partition(key, known)
        value = bytes(row["payload"])
        headers = record_headers(row["event_type"])
        if signer is not None:
            headers.append(signer.header(topic, key, value))
        batch = batches.get((topic, partition))
        if (
            batch is None
            or batch.append(timestamp=None, key=key, value=value, headers=headers) is None
        ):
            if batch is not None:  # full: send it, start the next one
                futures.append(await producer.send_batch(batch, topic, partition=partition))
            batch = batches[(topic, partition)] = producer.create_batch()
            batch.append(timestamp=None, key=key, value=value, headers=headers)
    for (topic, partition), batch in batches.items():
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures
