"""The broker a service builds: its producer options and its subscribers' fetch wait, as the
started aiokafka clients hold them, on Apache Kafka; and the idempotence switch (KAFKA_IDEMPOTENCE)
against a broker that hands out producer ids (Kafka) and one that does not (Tansu)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from aiokafka.errors import UnknownError

from scanner_auth_shared import metrics
from scanner_auth_shared.consumer import Consumer, subscribe
from scanner_auth_shared.events import PUBLIC_TOPIC, CloudEvent, EventData, ScannerDeauthorised
from scanner_auth_shared.infra import TansuBroker
from scanner_auth_shared.messaging import (
    aiokafka_producer,
    create_broker,
    producer_options,
    start_broker,
)
from scanner_auth_shared.settings import ServiceSettings
from scanner_auth_shared.testing.kafka import read_topic
from scanner_auth_shared.testing.plugin import FAST_CONSUMERS
from scanner_auth_shared.uow import MemoryStore, MemoryUnitOfWork

pytestmark = pytest.mark.integration


async def _ignore(uow: MemoryUnitOfWork, event: CloudEvent, data: EventData) -> None:
    return None


async def test_a_service_overrides_producer_defaults_and_subscribers_fetch_wait(kafka: Any) -> None:
    settings = ServiceSettings(kafka_bootstrap_servers=kafka.bootstrap, **FAST_CONSUMERS)
    # Before: `linger_ms` passed by a service collided with create_broker's own (TypeError).
    broker = create_broker(settings, "t", linger_ms=0, max_batch_size=256 * 1024)
    store = MemoryStore()

    def consumer(name: str, **wait: int) -> Any:
        return subscribe(
            broker,
            settings,
            Consumer(
                name=name,
                topic=PUBLIC_TOPIC,
                handlers={ScannerDeauthorised: _ignore},
                description=name,
                **wait,
            ),
            lambda: MemoryUnitOfWork(store, source="t"),
        )

    shared, quick = consumer("t.a"), consumer("t.b", wait_ms=20)
    await start_broker(broker)
    try:
        producer = aiokafka_producer(broker)
        assert producer is not None
        accumulator = producer._message_accumulator
        assert accumulator._linger_time == 0
        assert accumulator._batch_size == 256 * 1024
        # Not aiokafka's 500 ms default: an idle consumer's hop waits up to about twice this.
        assert shared.consumer._fetch_max_wait_ms == 100
        assert quick.consumer._fetch_max_wait_ms == 20
    finally:
        await asyncio.wait_for(broker.stop(), 10)


async def test_the_defaults_stand_when_a_service_passes_nothing(kafka: Any) -> None:
    settings = ServiceSettings(kafka_bootstrap_servers=kafka.bootstrap, **FAST_CONSUMERS)
    broker = create_broker(settings, "t")
    await broker.connect()
    try:
        producer = aiokafka_producer(broker)
        assert producer is not None
        assert producer._message_accumulator._linger_time == 0.002
        assert producer._sender._acks == -1  # acks="all": 202 only after every replica has it
    finally:
        await asyncio.wait_for(broker.stop(), 10)


def _idempotent(producer: Any) -> bool:
    """Whether the started aiokafka producer runs as an idempotent producer with a producer id
    from the broker (private aiokafka state, read only: a library change fails this test)."""
    manager = producer._txn_manager
    return manager is not None and manager.producer_id >= 0


async def test_producers_are_idempotent_on_apache_kafka(kafka: Any) -> None:
    """The production default (KAFKA_IDEMPOTENCE=auto): Kafka hands out a producer id, and the
    producer that the relay and scan-ingest send record batches with uses it."""
    settings = ServiceSettings(kafka_bootstrap_servers=kafka.bootstrap, **FAST_CONSUMERS)
    assert settings.kafka_idempotence == "auto"
    broker = create_broker(settings, "t")
    await start_broker(broker, settings.kafka_idempotence)
    try:
        producer = aiokafka_producer(broker)
        assert producer is not None
        batch = producer.create_batch()
        batch.append(key=b"k", value=b"v", timestamp=None)
        await (await producer.send_batch(batch, "idempotence-test", partition=0))
        assert _idempotent(producer)
        assert producer._sender._acks == -1
        assert metrics.KAFKA_IDEMPOTENT._value.get() == 1
        assert [r.value for r in await read_topic(kafka.bootstrap, "idempotence-test")] == [b"v"]
    finally:
        await asyncio.wait_for(broker.stop(), 10)


@pytest.fixture
def tansu(tmp_path: Any) -> Any:
    broker = TansuBroker(tmp_path / "tansu.log").start()
    try:
        yield broker
    finally:
        broker.stop()


async def test_auto_falls_back_on_a_broker_without_producer_ids(tansu: Any) -> None:
    """Tansu (the dev stack's default, and the acceptance checks' broker) answers InitProducerId
    with UNKNOWN_SERVER_ERROR: `auto` then produces without idempotence (acks=all still), and
    says so in the gauge."""
    settings = ServiceSettings(kafka_bootstrap_servers=tansu.bootstrap, **FAST_CONSUMERS)
    broker = create_broker(settings, "t")
    await start_broker(broker, "auto")
    try:
        assert producer_options(broker)["enable_idempotence"] is False
        await asyncio.wait_for(broker.publish(b"v", "fallback-test", key=b"k"), 10)
        assert metrics.KAFKA_IDEMPOTENT._value.get() == 0
    finally:
        await asyncio.wait_for(broker.stop(), 10)


async def test_required_refuses_to_start_without_producer_ids(tansu: Any) -> None:
    """KAFKA_IDEMPOTENCE=required never falls back: the producer cannot start, so neither does
    the service (Kubernetes restarts it and says why)."""
    settings = ServiceSettings(
        kafka_bootstrap_servers=tansu.bootstrap, kafka_idempotence="required", **FAST_CONSUMERS
    )
    broker = create_broker(settings, "t")
    try:
        with pytest.raises(UnknownError):
            await asyncio.wait_for(start_broker(broker, "required"), 30)
        assert producer_options(broker)["enable_idempotence"] is True
    finally:
        await asyncio.wait_for(broker.stop(), 10)


def test_off_turns_idempotence_off() -> None:
    settings = ServiceSettings(kafka_bootstrap_servers="127.0.0.1:9", kafka_idempotence="off")
    assert producer_options(create_broker(settings, "t"))["enable_idempotence"] is False


async def test_a_producer_that_stopped_for_good_is_renewed(tmp_path: Any) -> None:
    """aiokafka 0.14's idempotent producer stops for good when a batch fails after it got a
    sequence number (here: the only broker killed for longer than the request timeout).
    `renew_producer` replaces it, and sending works again without restarting the service."""
    from scanner_auth_shared.kafka_broker import ApacheKafka
    from scanner_auth_shared.messaging import producer_stopped, renew_producer

    cluster = ApacheKafka(tmp_path / "kafka").start()
    settings = ServiceSettings(kafka_bootstrap_servers=cluster.bootstrap, **FAST_CONSUMERS)
    broker = create_broker(settings, "t", request_timeout_ms=2000)
    try:
        await start_broker(broker, "auto")
        assert not await renew_producer(broker)  # a healthy producer is left alone
        await asyncio.wait_for(broker.publish(b"1", PUBLIC_TOPIC, key=b"k"), 15)
        cluster.kill_node(1)
        for _ in range(20):  # until aiokafka gives up on the batch it already numbered
            with contextlib.suppress(Exception):  # failing is the point here
                await asyncio.wait_for(broker.publish(b"2", PUBLIC_TOPIC, key=b"k"), 5)
            producer = aiokafka_producer(broker)
            if producer is None or producer_stopped(producer):
                break
        cluster.start_node(1)
        stopped = producer_stopped(aiokafka_producer(broker))
        renewed = await renew_producer(broker)
        assert renewed == stopped
        published = False
        for _ in range(60):
            try:
                await asyncio.wait_for(broker.publish(b"3", PUBLIC_TOPIC, key=b"k"), 5)
                published = True
                break
            except Exception:
                await renew_producer(broker)
                await asyncio.sleep(0.5)
        assert published, "sending never worked again"
        values = [r.value for r in await read_topic(cluster.bootstrap, PUBLIC_TOPIC)]
        assert b"1" in values and b"3" in values
    finally:
        await asyncio.wait_for(broker.stop(), 10)
        cluster.remove()
