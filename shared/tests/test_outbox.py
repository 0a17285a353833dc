"""The transactional outbox and its relay, on real PostgreSQL and a real Kafka-protocol broker."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import pytest
from faststream.kafka import KafkaBroker

from scanner_auth_shared.events import CloudEvent, TokenExpired, new_event, utcnow
from scanner_auth_shared.messaging import aiokafka_producer, create_broker
from scanner_auth_shared.outbox import MESSAGING_DDL, OutboxRelay
from scanner_auth_shared.postgres import Connection, Database, asyncpg_dsn
from scanner_auth_shared.runtime import ServiceRuntime
from scanner_auth_shared.settings import DatabaseSettings
from scanner_auth_shared.signing import EventSigner, TrustPolicy, Unverified, new_private_key_text
from scanner_auth_shared.testing.kafka import create_topic, read_topic
from scanner_auth_shared.testing.plugin import FAST_CONSUMERS
from scanner_auth_shared.uow import Outgoing, write_outbox

pytestmark = pytest.mark.integration
TOPIC = "outbox.test.v1"


async def _schema(url: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        for ddl in MESSAGING_DDL:
            await conn.execute(ddl)
    finally:
        await conn.close()


async def _enqueue(conn: Connection, event: CloudEvent) -> None:
    """The outbox row of `event` (test topic, keyed by its subject) in `conn`'s transaction."""
    await write_outbox(conn, [Outgoing(event, TOPIC, event.subject)])


def _event(key: str, n: int) -> CloudEvent:
    data = TokenExpired(token_id=f"t{n}", scanner_id=key, org_id="o", expired_at=utcnow())
    return new_event(data, source="scanner-auth/token-issuer")


@contextlib.asynccontextmanager
async def _relay(
    url: str, bootstrap: str, name: str = "test", *, batched: bool = False, **kw: Any
) -> Any:
    """A relay on its own broker: one publish per row, or (`batched`) record batches through
    the broker's aiokafka producer, as `ServiceRuntime.use_outbox_relay()` wires it."""
    broker = KafkaBroker(bootstrap, enable_idempotence=False, acks="all", request_timeout_ms=5000)
    await broker.connect()

    async def send(topic: str, key: bytes | None, payload: bytes, headers: dict[str, str]) -> Any:
        if batched:
            raise AssertionError("the batched relay fell back to one publish per row")
        return await broker.publish(payload, topic, key=key, headers=headers, no_confirm=True)

    if batched:
        assert aiokafka_producer(broker) is not None
        kw["producer"] = lambda: aiokafka_producer(broker)
    relay = OutboxRelay(Database(url), send, service=name, poll_interval=0.2, **kw)
    task = asyncio.create_task(relay.run())
    try:
        yield relay
    finally:
        await relay.stop()
        try:
            await asyncio.wait_for(task, 10)
        except TimeoutError:
            task.cancel()
        await broker.stop()


async def _published(bootstrap: str) -> list[str]:
    return [
        CloudEvent.from_bytes(r.value).data["token_id"] for r in await read_topic(bootstrap, TOPIC)
    ]


async def _until(check: Any, timeout: float = 10.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result or asyncio.get_running_loop().time() > deadline:
            return result
        await asyncio.sleep(0.1)


async def test_an_event_is_published_only_after_its_transaction_commits(database_url, kafka):
    await _schema(database_url)
    db = Database(database_url)
    await db.connect()
    async with _relay(database_url, kafka.bootstrap):
        async with db.connection() as conn:
            transaction = conn.transaction()
            await transaction.start()
            await _enqueue(conn, _event("k", 1))
            # Written, not committed: the relay (polling every 0.2 s, woken by NOTIFY at commit)
            # has had five polls to see the row, were it visible.
            await asyncio.sleep(1.0)
            assert await _published(kafka.bootstrap) == []
            await transaction.commit()
        assert await _until(lambda: _published(kafka.bootstrap)) == ["t1"]
    await db.dispose()


async def test_a_rolled_back_transaction_publishes_nothing(database_url, kafka):
    await _schema(database_url)
    db = Database(database_url)
    await db.connect()
    async with _relay(database_url, kafka.bootstrap):
        with contextlib.suppress(RuntimeError):
            async with db.transaction() as conn:
                await _enqueue(conn, _event("k", 1))
                raise RuntimeError("the state change failed")
        async with db.transaction() as conn:
            await _enqueue(conn, _event("k", 2))
        assert await _until(lambda: _published(kafka.bootstrap)) == ["t2"]
        await asyncio.sleep(0.5)
        assert await _published(kafka.bootstrap) == ["t2"]
    await db.dispose()


@pytest.mark.parametrize("batched", [False, True], ids=["per-row", "batched"])
async def test_relay_restarts_lose_nothing_and_keep_per_key_order(database_url, kafka, batched):
    await _schema(database_url)
    db = Database(database_url)
    await db.connect()
    n = 600
    for start in range(0, n, 100):
        async with db.transaction() as conn:
            for i in range(start, start + 100):
                await _enqueue(conn, _event(f"key-{i % 3}", i))
    # Three short-lived relays, each stopped (or cancelled) mid-stream, then one to finish.
    for _ in range(3):
        async with _relay(database_url, kafka.bootstrap, batched=batched, batch_size=50):
            await asyncio.sleep(0.05)
    async with _relay(database_url, kafka.bootstrap, batched=batched, batch_size=50):
        await _until(lambda: _count_ge(kafka.bootstrap, n), 20)
    records = await read_topic(kafka.bootstrap, TOPIC)
    by_key: dict[bytes, list[int]] = {}
    for r in records:
        by_key.setdefault(r.key, []).append(
            int(CloudEvent.from_bytes(r.value).data["token_id"][1:])
        )
    seen_all: set[int] = set()
    for key, numbers in by_key.items():
        first_seen: list[int] = []
        for x in numbers:
            if x not in first_seen:
                first_seen.append(x)
        assert first_seen == sorted(first_seen), f"order broken for {key!r}"
        seen_all.update(first_seen)
    assert seen_all == set(range(n))
    await db.dispose()


async def _count_ge(bootstrap: str, n: int) -> bool:
    return len(set(await _published(bootstrap))) >= n


async def test_only_one_of_several_relays_publishes_at_a_time(database_url, kafka):
    await _schema(database_url)
    db = Database(database_url)
    await db.connect()
    async with (
        _relay(database_url, kafka.bootstrap) as a,
        _relay(database_url, kafka.bootstrap) as b,
    ):
        await asyncio.sleep(0.5)
        assert [a.active, b.active].count(True) == 1
        for i in range(50):
            async with db.transaction() as conn:
                await _enqueue(conn, _event("same-key", i))
        await _until(lambda: _count_ge(kafka.bootstrap, 50))
    assert await _published(kafka.bootstrap) == [f"t{i}" for i in range(50)]
    await db.dispose()


@pytest.mark.parametrize("batched", [False, True], ids=["per-row", "batched"])
async def test_a_broker_outage_delays_events_without_losing_or_reordering_them(
    database_url, private_kafka, batched
):
    kafka = private_kafka  # a broker of its own, to pause
    await _schema(database_url)
    # The topic made before the first publish: on a fresh broker, auto-creation on a loaded
    # machine could outlast the first wait, and the pause would then freeze a topic-less broker.
    await create_topic(kafka.bootstrap, TOPIC)
    db = Database(database_url)
    await db.connect()
    async with _relay(database_url, kafka.bootstrap, batched=batched) as relay:
        async with db.transaction() as conn:
            await _enqueue(conn, _event("k", 0))
        assert await _until(lambda: _count_ge(kafka.bootstrap, 1), 30), "t0 before the pause"
        kafka.pause()
        try:
            for i in range(1, 20):
                async with db.transaction() as conn:
                    await _enqueue(conn, _event("k", i))
            await asyncio.sleep(6)  # longer than the producer's request timeout
        finally:
            kafka.resume()
        await _until(lambda: _count_ge(kafka.bootstrap, 20), 40)
        assert relay.active
    published = await _published(kafka.bootstrap)
    first = list(dict.fromkeys(published))
    assert first == [f"t{i}" for i in range(20)]
    await db.dispose()


async def test_the_services_relay_sends_record_batches_in_order_per_key(database_url, kafka):
    """`ServiceRuntime.use_outbox_relay()` hands the relay the started broker's aiokafka
    producer: every row goes out in a record batch (never through the per-row `send`, which
    this test makes fail), in commit order per key."""
    await _schema(database_url)
    settings = DatabaseSettings(
        database_url=database_url, kafka_bootstrap_servers=kafka.bootstrap, **FAST_CONSUMERS
    )
    runtime = ServiceRuntime(
        name="relay-test", settings=settings, broker=create_broker(settings, "relay-test")
    )
    relay = runtime.use_outbox_relay()
    per_row: list[str] = []

    async def send(topic: str, key: bytes | None, payload: bytes, headers: dict[str, str]) -> Any:
        per_row.append(topic)
        raise AssertionError("the service's relay fell back to one publish per row")

    relay.send = send
    db = Database(database_url)
    await db.connect()
    n = 300
    async with runtime.running():
        assert relay.producer is not None
        assert relay.producer() is aiokafka_producer(runtime.broker) is not None
        for start in range(0, n, 30):
            async with db.transaction() as conn:
                for i in range(start, start + 30):
                    await _enqueue(conn, _event(f"key-{i % 4}", i))
        assert await _until(lambda: _count_ge(kafka.bootstrap, n), 20)
    await db.dispose()
    assert per_row == []
    by_key: dict[bytes, list[int]] = {}
    for r in await read_topic(kafka.bootstrap, TOPIC):
        by_key.setdefault(r.key, []).append(
            int(CloudEvent.from_bytes(r.value).data["token_id"][1:])
        )
    assert sorted(by_key) == [f"key-{k}".encode() for k in range(4)]
    for key, numbers in by_key.items():
        assert numbers == sorted(numbers) == [i for i in range(n) if f"key-{i % 4}".encode() == key]


@pytest.mark.parametrize("batched", [False, True], ids=["per-row", "batched"])
async def test_the_relay_signs_every_record_it_publishes(database_url, kafka, batched):
    """With EVENT_SIGNING_KEY, each record carries its producer's signature over topic, key and
    value, which a consumer trusting that key verifies (scanner_auth_shared.signing)."""
    signer = EventSigner.from_text("token-issuer", new_private_key_text())
    trust = TrustPolicy.from_text(f"token-issuer={signer.public_key}")
    await _schema(database_url)
    db = Database(database_url)
    await db.connect()
    async with _relay(database_url, kafka.bootstrap, batched=batched, signer=signer):
        for i in range(5):
            async with db.transaction() as conn:
                await _enqueue(conn, _event(f"key-{i}", i))
        assert await _until(lambda: _count_ge(kafka.bootstrap, 5))
    await db.dispose()
    records = await read_topic(kafka.bootstrap, TOPIC)
    assert len(records) == 5
    for record in records:
        trust.verify(
            producer="token-issuer",
            source="scanner-auth/token-issuer",
            topic=TOPIC,
            key=record.key,
            value=record.value,
            headers=record.headers,
        )
    with pytest.raises(Unverified):  # and the signature binds the topic
        trust.verify(
            producer="token-issuer",
            source="scanner-auth/token-issuer",
            topic="another.topic",
            key=records[0].key,
            value=records[0].value,
            headers=records[0].headers,
        )
