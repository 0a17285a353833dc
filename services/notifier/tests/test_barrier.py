"""One behavioural suite for the read barrier, run against the fake the unit tests use and the
Kafka adapter on real brokers (Apache Kafka, and Tansu, `scanner-auth dev`'s): a wait is caught
up once the consumer group has applied (and committed) every event of the scanner published
before it began, not before; a broker that cannot be reached delays, never lets through."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete

from notifier.adapters.kafka import KafkaReadBarrier
from notifier.adapters.memory import MemoryReadBarrier
from notifier.adapters.ports import ReadBarrier
from scanner_auth_shared.infra import TansuBroker, free_port
from scanner_auth_shared.testing.kafka import create_topic

# Long enough for the broker's answers on a loaded machine; a wait that must fail takes it.
CAUGHT_UP = 10.0
NOT_CAUGHT_UP = 1.0


@dataclass
class Topic:
    """A topic and a consumer group on it, as the test drives them."""

    barrier: ReadBarrier
    publish: Callable[[str], Awaitable[None]]  # one event keyed by a scanner id
    apply: Callable[[], Awaitable[None]]  # the group applied everything published so far


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.unit),
        pytest.param("kafka", marks=pytest.mark.integration),
        pytest.param("tansu", marks=pytest.mark.integration),
    ]
)
async def topic(request: pytest.FixtureRequest) -> AsyncIterator[Topic]:
    if request.param == "memory":
        fake = MemoryReadBarrier()

        async def publish(scanner_id: str) -> None:
            fake.publish(scanner_id)

        async def apply() -> None:
            for scanner_id in list(fake.published):
                fake.apply(scanner_id)

        yield Topic(fake, publish, apply)
        return
    if request.param == "tansu":  # `scanner-auth dev`'s broker
        bootstrap = request.getfixturevalue("tansu").bootstrap
    else:
        bootstrap = request.getfixturevalue("kafka").bootstrap
    async with _kafka_topic(bootstrap) as made:
        yield made


@pytest.fixture(scope="module")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    broker = TansuBroker(tmp_path_factory.mktemp("tansu") / "tansu.log").start()
    try:
        yield broker
    finally:
        broker.stop()


@asynccontextmanager
async def _kafka_topic(bootstrap: str) -> AsyncIterator[Topic]:
    """A topic of this test's own with 3 partitions, a group that commits where told, and the
    adapter watching that group."""
    name, group = f"test-barrier-{uuid.uuid4().hex[:8]}", f"test-group-{uuid.uuid4().hex[:8]}"
    await create_topic(bootstrap, name, partitions=3)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    group_member = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await producer.start()
    await group_member.start()
    barrier = KafkaReadBarrier(
        topic=name, group_id=group, client_options={"bootstrap_servers": bootstrap}
    )

    async def publish(scanner_id: str) -> None:
        await producer.send_and_wait(name, b"{}", key=scanner_id.encode())

    async def apply() -> None:
        partitions = [TopicPartition(name, p) for p in range(3)]
        ends = await group_member.end_offsets(partitions)
        group_member.assign(partitions)
        await group_member.commit({tp: end for tp, end in ends.items()})

    try:
        yield Topic(barrier, publish, apply)
    finally:
        await barrier.close()
        await group_member.stop()
        await producer.stop()


async def test_nothing_published_is_caught_up_at_once(topic: Topic) -> None:
    assert await topic.barrier.wait_caught_up("scanner-1", CAUGHT_UP)


async def test_an_event_not_applied_yet_holds_the_wait(topic: Topic) -> None:
    await topic.publish("scanner-1")
    assert not await topic.barrier.wait_caught_up("scanner-1", NOT_CAUGHT_UP)
    await topic.apply()
    assert await topic.barrier.wait_caught_up("scanner-1", CAUGHT_UP)
    await topic.publish("scanner-1")  # a later event is waited for in a later wait
    assert not await topic.barrier.wait_caught_up("scanner-1", NOT_CAUGHT_UP)


async def test_a_wait_ends_as_soon_as_the_group_catches_up(topic: Topic) -> None:
    await topic.publish("scanner-1")
    waiting = asyncio.create_task(topic.barrier.wait_caught_up("scanner-1", 30))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await topic.apply()
    assert await asyncio.wait_for(waiting, CAUGHT_UP)


async def test_many_waits_at_once_each_get_their_answer(topic: Topic) -> None:
    applied = [f"scanner-{i}" for i in range(10)]
    for scanner in applied:
        await topic.publish(scanner)
    await topic.apply()
    assert all(await asyncio.gather(*(topic.barrier.wait_caught_up(s, CAUGHT_UP) for s in applied)))
    behind = [f"scanner-{i}" for i in range(10, 20)]
    for scanner in behind:
        await topic.publish(scanner)
    answers = await asyncio.gather(
        *(topic.barrier.wait_caught_up(s, NOT_CAUGHT_UP) for s in (*behind, *applied))
    )
    assert not any(answers[:10])


@pytest.mark.integration
async def test_a_broker_that_cannot_be_reached_never_lets_a_wait_through() -> None:
    barrier = KafkaReadBarrier(
        topic="myscanner.scanner-auth.v1",
        group_id="scanner-auth.notifier.token-states",
        client_options={"bootstrap_servers": f"127.0.0.1:{free_port()}"},
        request_timeout_ms=1000,
    )
    try:
        assert not await barrier.wait_caught_up("scanner-1", 2.0)
    finally:
        await barrier.close()


@pytest.mark.integration
async def test_records_deleted_before_the_group_read_them_are_not_waited_for(kafka: Any) -> None:
    """Retention (here DeleteRecords) removed records the group never committed past, and
    nothing came after them: the idle group will never commit again, yet no record it could
    still apply is missing. Caught up: the group stands at the log start offset."""
    name, group = f"test-barrier-{uuid.uuid4().hex[:8]}", f"test-group-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    member = AIOKafkaConsumer(
        bootstrap_servers=kafka.bootstrap, group_id=group, enable_auto_commit=False
    )
    barrier = KafkaReadBarrier(
        topic=name, group_id=group, client_options={"bootstrap_servers": kafka.bootstrap}
    )
    await producer.start()
    await member.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
        for _ in range(3):
            await producer.send_and_wait(name, b"{}", key=b"scanner-1")
        partition = TopicPartition(name, 0)
        member.assign([partition])
        await member.commit({partition: 1})  # the group read one of the three
        assert not await barrier.wait_caught_up("scanner-1", NOT_CAUGHT_UP)
        await admin.delete_records({partition: RecordsToDelete(3)}, timeout_ms=10_000)
        assert await barrier.wait_caught_up("scanner-1", CAUGHT_UP)
    finally:
        await barrier.close()
        await member.stop()
        await producer.stop()
        await admin.close()
