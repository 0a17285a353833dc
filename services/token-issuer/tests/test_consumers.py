"""The two consumer groups as consumers.py wires them, through the shared runner, in memory
(faststream's TestKafkaBroker delivers the batches): their names, what reaches which handler,
a redelivery absorbed by the inbox."""

from __future__ import annotations

import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker
from memory_world import FakeClock
from token_issuer_support import A1, SCANNERS, USER_A, directory_of_two_orgs

from scanner_auth_shared.consumer import subscribe
from scanner_auth_shared.events import (
    DIRECTORY_TOPIC,
    PUBLIC_TOPIC,
    ScannerAuthorised,
    ScannerDeauthorised,
    ScannerRemoved,
    TokenIssued,
    new_event,
)
from scanner_auth_shared.settings import ServiceSettings
from token_issuer import consumers
from token_issuer.adapters.memory import MemoryUnitOfWork, Store

pytestmark = pytest.mark.unit


def test_the_group_names_do_not_change() -> None:
    """They are the consumer groups in deploy/ and the keys of existing processed_events rows."""
    clock = FakeClock()
    assert consumers.directory(clock).group_id == "scanner-auth.token-issuer.directory"
    assert consumers.authorisations(clock).group_id == "scanner-auth.token-issuer.authorisations"
    assert consumers.directory(clock).topic == DIRECTORY_TOPIC
    assert consumers.authorisations(clock).topic == PUBLIC_TOPIC
    assert set(consumers.directory(clock).types) == {
        "ScannerRegistered", "ScannerRemoved", "UserUpserted", "ScannerAccessGranted",
        "ScannerAccessRevoked",
    }  # fmt: skip
    assert set(consumers.authorisations(clock).types) == {"ScannerAuthorised", "CredentialRotated"}


async def test_both_groups_apply_their_batches_once() -> None:
    clock = FakeClock()
    store = Store()
    broker = KafkaBroker("test:9092")
    settings = ServiceSettings(kafka_bootstrap_servers="test:9092")
    for consumer in (consumers.directory(clock), consumers.authorisations(clock)):
        subscribe(broker, settings, consumer, lambda: MemoryUnitOfWork(store))

    directory = [new_event(d, source="myscanner/directory") for d in directory_of_two_orgs()]
    authorised = new_event(
        ScannerAuthorised(
            scanner_id=A1,
            org_id="org-a",
            token_id="t-1",
            serial_number="LVS-A1-0001",
            credential_id="cred-1",
            credential_digest="0" * 64,
            authorised_at=clock(),
        ),
        source="scanner-auth/redeemer",
    )
    issued_elsewhere = new_event(  # on the public topic, not for this group: skipped
        TokenIssued(
            token_id="t-2",
            scanner_id=A1,
            org_id="org-a",
            issued_by="u",
            issued_at=clock(),
            expires_at=clock(),
            code_digest="0" * 64,
        ),
        source="scanner-auth/token-issuer",
    )
    async with TestKafkaBroker(broker) as test_broker:
        records = [e.to_bytes() for e in directory]
        await test_broker.publish_batch(*records, records[0], topic=DIRECTORY_TOPIC)
        await test_broker.publish_batch(
            authorised.to_bytes(), issued_elsewhere.to_bytes(), topic=PUBLIC_TOPIC
        )
        await test_broker.publish_batch(*records, topic=DIRECTORY_TOPIC)  # redelivered
        removed = new_event(ScannerRemoved(scanner_id=A1), source="myscanner/directory")
        await test_broker.publish_batch(removed.to_bytes(), topic=DIRECTORY_TOPIC)

    assert set(store.scanners) == set(SCANNERS)
    assert (A1, USER_A.sub) in store.grants
    assert store.commits == 4  # one unit of work per batch
    assert {(c, e) for c, e in store.processed} == {
        *(("token-issuer.directory", e.id) for e in [*directory, removed]),
        ("token-issuer.authorisations", authorised.id),
    }
    (deauthorised,) = store.data(ScannerDeauthorised)
    assert (deauthorised.credential_id, deauthorised.reason) == ("cred-1", "scanner_removed")
