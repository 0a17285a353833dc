"""The redeemer's consumer groups, wired as app.py wires them, fed by faststream's
TestKafkaBroker, on the memory fakes: each event type reaches its handler, a redelivery has no
second effect, and the groups keep their names (the group ids deployed, the keys of the
processed-event rows)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker

from redeemer.adapters.memory import MemoryUnitOfWork
from redeemer.app import SOURCE
from redeemer.consumers import AUTHORISATION, CONSUMERS, DIRECTORY
from scanner_auth_shared.consumer import subscribe
from scanner_auth_shared.events import (
    DIRECTORY_TOPIC,
    PUBLIC_TOPIC,
    AuthorisationRejected,
    CloudEvent,
    EventData,
    ScannerDeauthorised,
    ScannerRegistered,
    ScannerRemoved,
    new_event,
)
from scanner_auth_shared.settings import ServiceSettings

from .conftest import ORG, World

pytestmark = pytest.mark.unit


def test_the_groups_keep_their_names():
    assert [(c.name, c.group_id, c.topic) for c in CONSUMERS] == [
        ("redeemer.authorisation", "scanner-auth.redeemer.authorisation", PUBLIC_TOPIC),
        ("redeemer.directory", "scanner-auth.redeemer.directory", DIRECTORY_TOPIC),
    ]
    assert set(AUTHORISATION.types) == {
        "TokenIssued",
        "TokenRevoked",
        "TokenExpired",
        "ScannerDeauthorised",
    }
    assert set(DIRECTORY.types) == {"ScannerRegistered", "ScannerRemoved"}


def _event(data: EventData) -> CloudEvent:
    return new_event(data, source="scanner-auth/token-issuer")


async def _deliver(world: World, topic: str, *events: CloudEvent) -> None:
    broker = KafkaBroker("test:9092")
    settings = ServiceSettings(kafka_bootstrap_servers="test:9092")
    for consumer in CONSUMERS:
        subscribe(broker, settings, consumer, lambda: MemoryUnitOfWork(world.store, source=SOURCE))
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish_batch(*(e.to_bytes() for e in events), topic=topic)


async def test_the_directorys_events_build_the_serial_number_view(world: World):
    registered = _event(ScannerRegistered(scanner_id="sc-1", org_id=ORG, serial_number="L-1"))
    removed = _event(ScannerRemoved(scanner_id="sc-2"))
    await _deliver(world, DIRECTORY_TOPIC, registered, removed, registered)
    assert world.store.scanners["sc-1"].serial_number == "L-1"
    assert world.store.scanners["sc-2"].removed is True
    assert ("redeemer.directory", registered.id) in world.store.processed
    # The directory corrects the serial number; then the first event is redelivered (a crash
    # before the offset commit): it has no second effect.
    corrected = _event(ScannerRegistered(scanner_id="sc-1", org_id=ORG, serial_number="L-1B"))
    await _deliver(world, DIRECTORY_TOPIC, corrected)
    await _deliver(world, DIRECTORY_TOPIC, registered)
    assert world.store.scanners["sc-1"].serial_number == "L-1B"


async def test_the_public_topics_events_build_the_token_view_and_revoke_credentials(
    world: World,
):
    await world.register("sc-1", "LVS-0001")
    authorised = await world.authorised()
    issued, data = world.token_issued("sc-1")
    world.store.advance(1)
    deauthorised = _event(
        ScannerDeauthorised(
            scanner_id="sc-1",
            org_id=ORG,
            credential_id=None,
            deauthorised_by="admin-1",
            reason="deauthorised",
            deauthorised_at=world.store.clock - timedelta(seconds=1),
        )
    )
    rejected = _event(
        AuthorisationRejected(
            serial_number="X",
            reason="invalid_code",
            client_ip="192.0.2.1",
            rejected_at=world.store.clock,
        )
    )
    token_issued = _event(data)

    await _deliver(world, PUBLIC_TOPIC, token_issued, rejected, deauthorised, token_issued)

    assert world.store.tokens[issued.token_id].status == "active"
    assert await world.standing(authorised.credential) == "ended"
    assert ("redeemer.authorisation", rejected.id) not in world.store.processed  # not ours
    assert ("redeemer.authorisation", token_issued.id) in world.store.processed
