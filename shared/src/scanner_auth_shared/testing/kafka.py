"""Reading and writing topics directly, as another MyScanner service would (tests only).

Each helper takes aiokafka client options as keywords (`**client`) for a secured broker: SASL
credentials and TLS (`testing.acls.SecuredKafka.security`)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from ..events import EVENT_TYPES, CloudEvent, EventData, PoisonMessage, new_event
from .signing import signer


async def publish_raw(
    bootstrap: str,
    topic: str,
    key: str | None,
    value: bytes,
    headers: list[tuple[str, bytes]] | None = None,
    **client: Any,
) -> None:
    """`value` as it is: unsigned, unparsed (poison, forgeries)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **client)
    await producer.start()
    try:
        await producer.send_and_wait(
            topic, value, key=key.encode() if key else None, headers=headers
        )
    finally:
        await producer.stop()


def default_source(data: EventData) -> str:
    """The CloudEvents source its producer writes: `scanner-auth/<service>`, or the
    directory's."""
    return (
        "myscanner/directory" if data.producer == "directory" else f"scanner-auth/{data.producer}"
    )


async def publish_events(
    bootstrap: str,
    topic: str,
    *datas: EventData | CloudEvent,
    source: str | None = None,
    **client: Any,
) -> list[CloudEvent]:
    """Publish events as their producers would: the source each producer writes (unless
    `source` says otherwise), keyed by subject, signed with the producer's test key
    (`testing.signing`) when the event's type names its producer."""
    events = [
        d if isinstance(d, CloudEvent) else new_event(d, source=source or default_source(d))
        for d in datas
    ]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **client)
    await producer.start()
    try:
        for event in events:
            key = (event.subject or "").encode() or None
            value = event.to_bytes()
            model = EVENT_TYPES.get(event.type)
            headers = [signer(model.producer).header(topic, key, value)] if model else []
            await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()
    return events


async def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    """A topic of a test's own, made before its first record (not left to auto-creation,
    which can outlast a test's first wait on a fresh broker)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


async def topic_partitions(
    consumer: AIOKafkaConsumer, topic: str, timeout: float = 15.0
) -> set[int]:
    """The partitions of `topic` (empty if it does not exist), asking the broker again while
    the started consumer's metadata does not know it, or knows no broker (a broker that is
    recovering from a pause answers metadata without brokers for a moment)."""
    deadline = time.monotonic() + timeout
    for attempt in range(100):
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return set(partitions)
        knows_brokers = bool(consumer._client.cluster.brokers())
        if (attempt >= 2 and knows_brokers) or time.monotonic() > deadline:
            return set()
        await consumer._client.force_metadata_update()
        if attempt:
            await asyncio.sleep(0.2)
    return set()


async def read_topic(bootstrap: str, topic: str, timeout: float = 15.0, **client: Any) -> list[Any]:
    """Every record now on `topic` (aiokafka ConsumerRecord), from the start of each partition
    to its end offset at the time of the call. TimeoutError rather than a partial answer when
    the records cannot all be fetched within `timeout` (a broker that is still recovering)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **client,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await topic_partitions(consumer, topic)]
        if not tps:
            return []
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)  # past records deleted (truncation)
        wanted = {tp: end for tp, end in ends.items() if end > starts.get(tp, 0)}
        if not wanted:
            return []
        consumer.assign(list(wanted))
        await consumer.seek_to_beginning(*wanted)
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        done: set[TopicPartition] = set()
        while len(done) < len(wanted):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"read {len(out)} records of {topic}; {len(wanted) - len(done)} of "
                    f"{len(wanted)} partitions not read to their end within {timeout}s"
                )
            batch = await consumer.getmany(timeout_ms=200)
            for tp, records in batch.items():
                out.extend(r for r in records if r.offset < wanted[tp])
                if records and records[-1].offset + 1 >= wanted[tp]:
                    done.add(tp)
        return sorted(out, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()


async def events_on(
    bootstrap: str, topic: str, type_: str | None = None, **client: Any
) -> list[CloudEvent]:
    found = []
    for record in await read_topic(bootstrap, topic, **client):
        try:
            event = CloudEvent.from_bytes(record.value)
        except PoisonMessage:
            continue  # tests also put garbage on topics; it is not an event
        if type_ is None or event.type == type_:
            found.append(event)
    return found


async def wait_for_events(
    bootstrap: str,
    topic: str,
    type_: str,
    count: int = 1,
    timeout: float = 15.0,
    match: Any = None,
    **client: Any,
) -> list[CloudEvent]:
    deadline = time.monotonic() + timeout
    found: list[CloudEvent] = []
    while time.monotonic() < deadline:
        try:
            on_topic = await events_on(bootstrap, topic, type_, **client)
        except TimeoutError:
            on_topic = []  # the broker is still recovering: look again
        found = [e for e in on_topic if match is None or match(e)]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{count} {type_} on {topic}: saw {len(found)} within {timeout}s")
