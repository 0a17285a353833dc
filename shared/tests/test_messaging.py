"""The broker a service builds: its producer options and its subscribers' fetch wait, as the
started aiokafka clients hold them (a real Kafka-protocol broker)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from scanner_auth_shared.events import PUBLIC_TOPIC, CloudEvent, EventData
from scanner_auth_shared.messaging import (
    FETCH_MAX_WAIT_MS,
    aiokafka_producer,
    create_broker,
    start_broker,
    subscribe_events,
)
from scanner_auth_shared.settings import ServiceSettings
from scanner_auth_shared.testing.plugin import FAST_CONSUMERS

pytestmark = pytest.mark.integration


async def _ignore(_event: CloudEvent, _data: EventData) -> None:
    return None


async def test_a_service_overrides_producer_defaults_and_subscribers_fetch_wait(kafka: Any) -> None:
    settings = ServiceSettings(kafka_bootstrap_servers=kafka.bootstrap, **FAST_CONSUMERS)
    # Before: `linger_ms` passed by a service collided with create_broker's own (TypeError).
    broker = create_broker(settings, "t", linger_ms=0, max_batch_size=256 * 1024)
    shared = subscribe_events(
        broker, settings, topic=PUBLIC_TOPIC, consumer="a", group_id="t.a", handler=_ignore
    )
    quick = subscribe_events(
        broker,
        settings,
        topic=PUBLIC_TOPIC,
        consumer="b",
        group_id="t.b",
        handler=_ignore,
        fetch_max_wait_ms=20,
    )
    await start_broker(broker)
    try:
        producer = aiokafka_producer(broker)
        assert producer is not None
        accumulator = producer._message_accumulator
        assert accumulator._linger_time == 0
        assert accumulator._batch_size == 256 * 1024
        # Not aiokafka's 500 ms default: on Tansu an event hop waits up to this long.
        assert FETCH_MAX_WAIT_MS < 500
        assert shared.consumer._fetch_max_wait_ms == FETCH_MAX_WAIT_MS
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
