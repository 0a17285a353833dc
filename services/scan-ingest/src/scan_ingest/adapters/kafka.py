"""The Kafka publisher of uploads: `ScanIngested` straight to Kafka (no outbox: an upload writes
nothing to a database that it would have to be atomic with), acknowledged before the 202.

`KafkaScanPublisher` (the `ports.ScanPublisher`) hands each record to `ScanBatches`, a group
commit over the aiokafka producer the broker holds, or to `broker.publish` while it holds none.
"""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import Awaitable
from typing import Any

from faststream.kafka import KafkaBroker

from scanner_auth_shared.events import SCANS_TOPIC, ScanIngested
from scanner_auth_shared.messaging import (
    aiokafka_producer,
    default_partition,
    kafka_headers,
    record_headers,
)

_KAFKA_HEADERS = kafka_headers(ScanIngested.event_type)
_RAW_HEADERS = record_headers(ScanIngested.event_type)


class KafkaScanPublisher:
    """`ScanIngested` records on SCANS_TOPIC, each acknowledged within `timeout` seconds of its
    batch's first upload (TimeoutError otherwise)."""

    def __init__(self, broker: KafkaBroker, *, timeout: float) -> None:
        self.broker = broker
        self.timeout = timeout
        self._batches: ScanBatches | None = None

    def publish(self, key: bytes, value: bytes) -> Awaitable[None]:
        # Not a coroutine of its own: it returns the one that publishes, so that an upload
        # awaits no more frames than it did before this port existed.
        producer = aiokafka_producer(self.broker)
        if producer is None:
            return self._publish_one(key, value)
        batches = self._batches
        if batches is None or batches.producer is not producer:  # the first, or a reconnection
            batches = self._batches = ScanBatches(
                producer, SCANS_TOPIC, _RAW_HEADERS, timeout=self.timeout
            )
        return batches.publish(key, value)

    async def _publish_one(self, key: bytes, value: bytes) -> None:
        """Through `broker.publish`, when the broker holds no aiokafka producer (its tests)."""
        async with asyncio.timeout(self.timeout):
            await self.broker.publish(value, SCANS_TOPIC, key=key, headers=_KAFKA_HEADERS)


class _Batch:
    """Uploads on their way to Kafka together, and the acknowledgement they all wait for."""

    __slots__ = ("acknowledged", "builder", "deadline")

    def __init__(self, builder: Any, acknowledged: asyncio.Future[None]) -> None:
        self.builder = builder
        self.acknowledged = acknowledged
        self.deadline: asyncio.TimerHandle | None = None


class ScanBatches:
    """Group commit of uploads to one topic: the uploads that arrive while a partition's
    previous batch is on its way join the next one, which is handed to the producer as one
    record batch (`AIOKafkaProducer.send_batch`); every upload then waits for its batch's
    acknowledgement.

    Why: aiokafka's per-message `send()` runs about 40 µs of Python per message (partitioner,
    accumulator, one future each), the largest part of an upload's CPU; appending to a batch
    builder is done in C, so a busy gateway pays that once per batch (bench/README.md).

    Same records as `send()`: same key, value, headers and timestamp (the producer's clock),
    the partition chosen as Kafka's default partitioner does (murmur2 of the key, as the Java
    client and aiokafka), records of one key in the order they were accepted. A batch is sent
    at once when nothing of its partition is in flight, else as soon as the producer has taken
    the previous one; the producer's own `linger_ms` and `max_batch_size` still apply (a full
    batch starts the next one; a record larger than a batch travels alone).

    `timeout`: a batch not acknowledged that long after its first upload fails with
    TimeoutError (one timer per batch, not one per upload: `asyncio.timeout` costs about as
    much as the rest of an upload's own work).
    """

    _MAX_CACHED_KEYS = 100_000

    def __init__(
        self, producer: Any, topic: str, headers: list[tuple[str, bytes]], *, timeout: float
    ) -> None:
        self.producer = producer
        self._topic = topic
        self._headers = headers
        self._timeout = timeout
        self._queues: dict[int, collections.deque[_Batch]] = {}
        self._flushers: dict[int, asyncio.Task[None]] = {}  # partition -> its sending task
        self._partition_of: dict[bytes, int] = {}
        self._partitions: list[int] = []

    async def publish(self, key: bytes, value: bytes) -> None:
        partition = self._partition_of.get(key)
        if partition is None:
            async with asyncio.timeout(self._timeout):  # only a key not seen yet
                partition = await self._partition(key)
        queue = self._queues.get(partition)
        if queue is None:
            queue = self._queues[partition] = collections.deque()
        batch = queue[-1] if queue else None
        if (
            batch is None
            or batch.builder.append(timestamp=None, key=key, value=value, headers=self._headers)
            is None
        ):
            batch = self._new_batch(partition, queue, key, value)
        # Shielded: an upload cancelled while it waits must not cancel its batch for the others.
        await asyncio.shield(batch.acknowledged)

    def _new_batch(
        self, partition: int, queue: collections.deque[_Batch], key: bytes, value: bytes
    ) -> _Batch:
        """A batch for `partition` holding this record, queued, its deadline set, and the
        partition's sending task started unless it runs."""
        loop = asyncio.get_running_loop()
        batch = _Batch(self.producer.create_batch(), loop.create_future())
        batch.builder.append(timestamp=None, key=key, value=value, headers=self._headers)
        batch.deadline = loop.call_later(
            self._timeout, _fail, batch.acknowledged, TimeoutError("not acknowledged in time")
        )
        queue.append(batch)
        if partition not in self._flushers:
            self._flushers[partition] = loop.create_task(self._flush(partition, queue))
        return batch

    async def _flush(self, partition: int, queue: collections.deque[_Batch]) -> None:
        try:
            while queue:
                batch = queue.popleft()
                batch.builder.close()
                try:
                    sent = await self.producer.send_batch(
                        batch.builder, self._topic, partition=partition
                    )
                except Exception as exc:
                    _settle_with(batch, exc)
                    continue
                sent.add_done_callback(functools.partial(_settle, batch))
        finally:
            del self._flushers[partition]
            for batch in queue:  # only if this task itself was cancelled (shutdown)
                _settle_with(batch, ConnectionError("the scan publisher stopped"))
            queue.clear()

    async def _partition(self, key: bytes) -> int:
        """Kafka's default partitioner for `key`, cached per key."""
        known = self.producer.client.cluster.partitions_for_topic(self._topic)
        if not known:
            known = await self.producer.partitions_for(self._topic)
        partitions = sorted(known)
        if partitions != self._partitions or len(self._partition_of) > self._MAX_CACHED_KEYS:
            self._partitions = partitions
            self._partition_of.clear()
        partition = default_partition(key, partitions)
        self._partition_of[key] = partition
        return partition


def _settle(batch: _Batch, sent: asyncio.Future[Any]) -> None:
    """The producer's answer for a batch, passed on to its uploads."""
    if sent.cancelled():
        _settle_with(batch, ConnectionError("the batch was cancelled"))
    else:
        _settle_with(batch, sent.exception())


def _settle_with(batch: _Batch, exc: BaseException | None) -> None:
    if batch.deadline is not None:
        batch.deadline.cancel()
    if exc is None:
        if not batch.acknowledged.done():
            batch.acknowledged.set_result(None)
    else:
        _fail(batch.acknowledged, exc)


def _fail(acknowledged: asyncio.Future[None], exc: BaseException) -> None:
    if not acknowledged.done():
        acknowledged.set_exception(exc)
        acknowledged.exception()  # retrieved: uploads that timed out no longer wait for it
