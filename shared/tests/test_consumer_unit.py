"""The consumer every service uses (`scanner_auth_shared.consumer`), in memory: faststream's
TestKafkaBroker delivers the batches, a MemoryUnitOfWork is the database. What it must do with
each kind of record, in seconds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from faststream.kafka import KafkaBroker, KafkaMessage, TestKafkaBroker

from scanner_auth_shared.consumer import Consumer, subscribe
from scanner_auth_shared.events import (
    DIRECTORY_TOPIC,
    CloudEvent,
    PoisonMessage,
    ScannerRegistered,
    ScannerRemoved,
    TokenExpired,
    dlq_topic,
    new_event,
    utcnow,
)
from scanner_auth_shared.settings import ServiceSettings
from scanner_auth_shared.uow import MemoryStore, MemoryUnitOfWork

pytestmark = pytest.mark.unit


@dataclass
class Store(MemoryStore):
    scanners: list[str] = field(default_factory=list)


class UnitOfWork(MemoryUnitOfWork):
    store: Store


@dataclass
class Rig:
    broker: KafkaBroker
    store: Store
    dead: list[tuple[bytes, dict[str, Any]]]
    calls: list[str]
    fail: dict[str, Any]


def _rig(max_attempts: int = 3) -> Rig:
    settings = ServiceSettings(
        kafka_bootstrap_servers="test:9092", consumer_max_attempts=max_attempts
    )
    broker = KafkaBroker("test:9092")
    store = Store()
    rig = Rig(broker, store, [], [], {"bug": 0, "outage": 0, "poison": False})

    async def on_registered(uow: UnitOfWork, event: CloudEvent, data: ScannerRegistered) -> None:
        rig.calls.append(data.scanner_id)
        if data.serial_number == "BUG" and rig.fail["bug"] > 0:
            rig.fail["bug"] -= 1
            raise RuntimeError("a bug")
        if data.serial_number == "OUTAGE" and rig.fail["outage"] > 0:
            rig.fail["outage"] -= 1
            raise ConnectionResetError("the database went away")
        if data.serial_number == "NEVER":
            raise PoisonMessage("this scanner can never be registered")
        uow.store.scanners.append(data.scanner_id)
        uow.emit(
            TokenExpired(token_id="t", scanner_id=data.scanner_id, org_id="o", expired_at=utcnow())
        )

    async def on_removed(uow: UnitOfWork, event: CloudEvent, data: ScannerRemoved) -> None:
        uow.store.scanners.remove(data.scanner_id)

    subscribe(
        broker,
        settings,
        Consumer(
            name="test.directory",
            topic=DIRECTORY_TOPIC,
            handlers={ScannerRegistered: on_registered, ScannerRemoved: on_removed},
            description="a test consumer",
        ),
        lambda: UnitOfWork(store, source="scanner-auth/test"),
    )

    @broker.subscriber(dlq_topic(DIRECTORY_TOPIC))
    async def dead_letters(body: Any, msg: KafkaMessage) -> None:
        rig.dead.append((msg.body, dict(msg.headers)))  # the raw bytes, as parked

    return rig


def _registered(scanner: str, serial: str = "LVS-1") -> CloudEvent:
    data = ScannerRegistered(scanner_id=scanner, org_id="o", serial_number=serial)
    return new_event(data, source="myscanner/directory")


async def _deliver(rig: Rig, *records: bytes) -> None:
    async with TestKafkaBroker(rig.broker) as broker:
        await broker.publish_batch(*records, topic=DIRECTORY_TOPIC)


async def test_a_batch_is_applied_in_one_commit_and_its_events_published() -> None:
    rig = _rig()
    await _deliver(rig, *(_registered(f"sc-{i}").to_bytes() for i in range(5)))
    assert rig.store.scanners == [f"sc-{i}" for i in range(5)]
    assert rig.store.commits == 1
    assert [e.subject for e in rig.store.events(TokenExpired)] == rig.store.scanners
    assert rig.dead == []


async def test_a_repeated_event_has_no_second_effect_in_a_batch_or_later() -> None:
    rig = _rig()
    event = _registered("sc-1")
    await _deliver(rig, event.to_bytes(), event.to_bytes())
    await _deliver(rig, event.to_bytes())
    assert rig.store.scanners == ["sc-1"]
    assert rig.calls == ["sc-1"]
    assert ("test.directory", event.id) in rig.store.processed


async def test_unparseable_records_go_to_the_dlq_and_the_rest_is_applied() -> None:
    rig = _rig()
    bad_data = CloudEvent(type="ScannerRegistered", source="s", data={"scanner_id": 5})
    await _deliver(rig, b"not json", bad_data.to_bytes(), b"", _registered("sc-2").to_bytes())
    assert rig.store.scanners == ["sc-2"]
    assert [body for body, _ in rig.dead] == [b"not json", bad_data.to_bytes(), b""]
    headers = rig.dead[1][1]
    assert headers["x-dlq-consumer"] == "test.directory"
    assert headers["x-dlq-reason"] == "unparseable"
    assert headers["x-dlq-original-topic"] == DIRECTORY_TOPIC
    assert "scanner_id" in headers["x-dlq-error"] and "5" not in headers["x-dlq-error"]


async def test_an_unknown_type_is_skipped_not_dead_lettered() -> None:
    rig = _rig()
    renamed = CloudEvent(type="ScannerRenamed", source="s", data={"scanner_id": "sc-1"})
    await _deliver(rig, renamed.to_bytes(), _registered("sc-3").to_bytes())
    assert rig.store.scanners == ["sc-3"]
    assert rig.dead == []


async def test_a_bug_is_retried_alone_then_dead_lettered_and_the_others_take_effect() -> None:
    rig = _rig(max_attempts=3)
    rig.fail["bug"] = 99
    boom = _registered("sc-boom", serial="BUG")
    await _deliver(
        rig, _registered("sc-a").to_bytes(), boom.to_bytes(), _registered("sc-b").to_bytes()
    )
    assert rig.store.scanners == ["sc-a", "sc-b"]
    assert [body for body, _ in rig.dead] == [boom.to_bytes()]
    assert rig.dead[0][1]["x-dlq-reason"] == "failed"
    assert rig.dead[0][1]["x-dlq-attempts"] == "3"
    assert ("test.directory", boom.id) not in rig.store.processed  # the rollback undid it
    assert [e.subject for e in rig.store.events(TokenExpired)] == ["sc-a", "sc-b"]


async def test_a_bug_that_goes_away_is_applied_once() -> None:
    rig = _rig(max_attempts=3)
    rig.fail["bug"] = 2  # the batch, then the first attempt alone
    await _deliver(rig, _registered("sc-x", serial="BUG").to_bytes())
    assert rig.store.scanners == ["sc-x"]
    assert rig.dead == []


async def test_an_outage_is_retried_until_it_ends_never_dead_lettered() -> None:
    rig = _rig(max_attempts=1)
    rig.fail["outage"] = 3  # more than max_attempts: an outage does not count
    await _deliver(rig, _registered("sc-o", serial="OUTAGE").to_bytes())
    assert rig.store.scanners == ["sc-o"]
    assert rig.dead == []
    assert len(rig.store.events(TokenExpired)) == 1  # the rolled back tries published nothing


async def test_a_poison_message_from_a_handler_is_dead_lettered_at_once() -> None:
    rig = _rig(max_attempts=5)
    never = _registered("sc-never", serial="NEVER")
    await _deliver(rig, never.to_bytes(), _registered("sc-ok").to_bytes())
    assert rig.store.scanners == ["sc-ok"]
    assert [(body, h["x-dlq-reason"], h["x-dlq-attempts"]) for body, h in rig.dead] == [
        (never.to_bytes(), "rejected", "1")
    ]
