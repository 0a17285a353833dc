"""The gate writer's use cases, in memory: what each authorisation event does to the gate's
table, what the replicas are told, and that order, repetition and redelivery change nothing."""

from __future__ import annotations

import itertools
import logging
from datetime import UTC, datetime, timedelta

import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker

from scan_ingest.adapters.gate import CredentialGate, GateBuilder
from scan_ingest.adapters.memory import GateStore, MemoryGateCredentials, MemoryGateUnitOfWork
from scan_ingest.consumers import GATE_WRITER
from scan_ingest.domain import CredentialRefused, CredentialState, Standing, UnknownCredential
from scan_ingest.handlers import admit
from scanner_auth_shared.consumer import subscribe
from scanner_auth_shared.crypto import credential_digest
from scanner_auth_shared.events import (
    PUBLIC_TOPIC,
    CredentialRotated,
    EventData,
    ScannerAuthorised,
    ScannerDeauthorised,
    new_event,
)
from scanner_auth_shared.settings import ServiceSettings

from .conftest import Scanner

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class Writer:
    """The gate writer's handlers on a memory store, each event in its own unit of work."""

    def __init__(self) -> None:
        self.store = GateStore()

    async def apply(self, *datas: EventData) -> None:
        for data in datas:
            event = new_event(data, source="scanner-auth/redeemer")
            async with MemoryGateUnitOfWork(self.store) as uow:
                await GATE_WRITER.handlers[type(data)](uow, event, data)
                await uow.commit()

    async def answer(self, credential: str, when: datetime) -> str:
        """What the gate, loaded from the table now, says of `credential` at `when`:
        `admitted`, the standing that refuses it, or `unknown`."""
        builder = GateBuilder()
        await MemoryGateCredentials(self.store).load_all(builder.add, chunk_rows=100)
        gate = CredentialGate()
        gate.replace_all(builder)
        try:
            admit(gate, credential, when.timestamp())
        except CredentialRefused as refusal:
            return refusal.state.label
        except UnknownCredential:
            return "unknown"
        return "admitted"

    def standing(self, credential: str) -> Standing:
        return self.store.credentials[bytes.fromhex(credential_digest(credential))].standing


async def test_an_authorised_credential_is_admitted_and_every_replica_told() -> None:
    writer, scanner = Writer(), Scanner()
    credential, credential_id, authorised = scanner.authorised(at(0))
    await writer.apply(authorised)
    assert await writer.answer(credential, at(1)) == "admitted"
    [stored] = writer.store.credentials.values()
    assert (stored.scanner_id, stored.org_id, stored.fact.credential_id) == (
        scanner.scanner_id,
        scanner.org_id,
        credential_id,
    )
    assert stored.fact.issued_at == at(0) and stored.fact.previous_credential_id is None
    assert writer.store.notifications == [scanner.scanner_id]
    assert await writer.answer("not-a-credential", at(1)) == "unknown"


async def test_a_rotated_credential_works_until_its_grace_period_ends() -> None:
    writer, scanner = Writer(), Scanner()
    old, old_id, authorised = scanner.authorised(at(0))
    new, _, rotated = scanner.rotated(old_id, timedelta(seconds=60), at(10))
    await writer.apply(authorised, rotated)
    assert writer.standing(old) == Standing(CredentialState.ROTATING, at(70))
    assert await writer.answer(old, at(70)) == "admitted"
    assert await writer.answer(old, at(70.001)) == "rotating"
    assert await writer.answer(new, at(1000)) == "admitted"
    assert writer.store.notifications == [scanner.scanner_id] * 2


async def test_a_deauthorisation_revokes_every_credential_issued_up_to_it() -> None:
    writer, scanner = Writer(), Scanner()
    first, first_id, authorised = scanner.authorised(at(0))
    second, _, rotated = scanner.rotated(first_id, timedelta(hours=1), at(10))
    await writer.apply(authorised, rotated, scanner.deauthorised(at(20), first_id))
    assert await writer.answer(first, at(21)) == "revoked"
    assert await writer.answer(second, at(21)) == "revoked"
    # Authorised again afterwards: the new credential works, the old ones stay revoked.
    third, _, again = scanner.authorised(at(30))
    await writer.apply(again)
    assert await writer.answer(third, at(31)) == "admitted"
    assert await writer.answer(first, at(31)) == "revoked"
    assert writer.store.notifications == [scanner.scanner_id] * 4


async def test_a_new_authorisation_replaces_the_scanners_earlier_credentials() -> None:
    writer, scanner = Writer(), Scanner()
    first, first_id, authorised = scanner.authorised(at(0))
    rotated_to, _, rotated = scanner.rotated(first_id, timedelta(hours=1), at(10))
    latest, _, again = scanner.authorised(at(20))
    await writer.apply(authorised, rotated, again)
    assert await writer.answer(first, at(21)) == "replaced"
    assert await writer.answer(rotated_to, at(21)) == "replaced"
    assert await writer.answer(latest, at(21)) == "admitted"


async def test_a_deauthorisation_that_arrives_first_covers_the_credential_announced_later() -> None:
    """The token-issuer's and the redeemer's events may arrive in either order."""
    writer, scanner = Writer(), Scanner()
    credential, _, authorised = scanner.authorised(at(0))
    await writer.apply(scanner.deauthorised(at(0.005)))
    assert writer.store.notifications == []  # nothing in any gate changed
    await writer.apply(authorised)
    assert await writer.answer(credential, at(1)) == "revoked"  # known (not 401), refused
    assert writer.store.notifications == [scanner.scanner_id]
    # A credential issued after the deauthorisation is not covered by it.
    later, _, again = scanner.authorised(at(5))
    await writer.apply(again)
    assert await writer.answer(later, at(6)) == "admitted"


async def test_a_rotation_announced_before_the_credential_it_rotates() -> None:
    writer, scanner = Writer(), Scanner()
    first, first_id, authorised = scanner.authorised(at(0))
    second, _, rotation = scanner.rotated(first_id, timedelta(hours=1), at(10))
    await writer.apply(rotation)
    assert await writer.answer(second, at(11)) == "admitted"
    await writer.apply(authorised)
    assert await writer.answer(first, at(11)) == "admitted"  # in its grace period
    assert writer.standing(first) == Standing(CredentialState.ROTATING, at(3610))


async def test_events_in_any_order_end_where_they_end_in_order() -> None:
    scanner = Scanner()
    a, a_id, authorised_a = scanner.authorised(at(0))
    b, b_id, rotated_b = scanner.rotated(a_id, timedelta(seconds=60), at(5))
    c, _, rotated_c = scanner.rotated(b_id, timedelta(seconds=60), at(8))
    d, _, authorised_d = scanner.authorised(at(20))
    events: list[EventData] = [
        authorised_a,
        rotated_b,
        rotated_c,
        scanner.deauthorised(at(9)),
        authorised_d,
    ]
    credentials = (a, b, c, d)
    in_order = Writer()
    await in_order.apply(*events)
    expected = [in_order.standing(x) for x in credentials]
    assert [s.state for s in expected] == [CredentialState.REVOKED] * 3 + [CredentialState.ACTIVE]
    for order in itertools.permutations(events):
        writer = Writer()
        await writer.apply(*order)
        assert [writer.standing(x) for x in credentials] == expected, order


async def test_the_same_credential_announced_twice_keeps_the_first_announcement(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Under two event ids (a producer's retry that made a new event)."""
    writer, scanner = Writer(), Scanner()
    credential, credential_id, authorised = scanner.authorised(at(0))
    retried = authorised.model_copy(update={"credential_id": "cred-other", "authorised_at": at(9)})
    await writer.apply(authorised)
    with caplog.at_level(logging.WARNING, logger="scanner_auth.scan_ingest"):
        await writer.apply(retried)
    [stored] = writer.store.credentials.values()
    assert (stored.fact.credential_id, stored.fact.issued_at) == (credential_id, at(0))
    assert await writer.answer(credential, at(10)) == "admitted"
    assert writer.store.notifications == [scanner.scanner_id]  # the second changed nothing
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage() == "credential already known; announcement ignored"
    assert credential not in caplog.text


async def test_an_earlier_deauthorisation_than_the_one_known_changes_nothing() -> None:
    writer, scanner = Writer(), Scanner()
    credential, _, authorised = scanner.authorised(at(15))
    await writer.apply(scanner.deauthorised(at(20)), authorised)
    assert writer.store.notifications == [scanner.scanner_id]
    await writer.apply(scanner.deauthorised(at(10)))
    assert writer.store.deauthorisations[scanner.scanner_id] == at(20)
    assert writer.store.notifications == [scanner.scanner_id]
    assert await writer.answer(credential, at(30)) == "revoked"


# ------------------------------------------------------------------------------ the consumer


def test_the_gate_writer_keeps_its_group_and_reads_the_three_types_quickly() -> None:
    assert GATE_WRITER.group_id == "scanner-auth.scan-ingest.gate"
    assert GATE_WRITER.name == "scan-ingest.gate"  # the key of its existing processed_events rows
    assert GATE_WRITER.topic == PUBLIC_TOPIC
    assert set(GATE_WRITER.handlers) == {ScannerAuthorised, CredentialRotated, ScannerDeauthorised}
    assert GATE_WRITER.wait_ms == 50


async def test_a_redelivered_event_is_applied_once() -> None:
    """Through the consumer every service uses: a batch with the event twice, then again."""
    store = GateStore()
    broker = KafkaBroker("test:9092")
    settings = ServiceSettings(kafka_bootstrap_servers="test:9092")
    subscribe(broker, settings, GATE_WRITER, lambda: MemoryGateUnitOfWork(store))
    scanner = Scanner()
    authorised = scanner.authorised(at(0))[2]
    event = new_event(authorised, source="scanner-auth/redeemer").to_bytes()
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish_batch(event, event, topic=PUBLIC_TOPIC)
        await test_broker.publish_batch(event, topic=PUBLIC_TOPIC)
    assert len(store.credentials) == 1
    assert store.notifications == [scanner.scanner_id]
    assert [consumer for consumer, _ in store.processed] == ["scan-ingest.gate"]
