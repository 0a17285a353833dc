"""The gate writer's use cases, in memory: what each authorisation event does to the gate's
table, what the replicas are told, that order, repetition and redelivery change nothing, and the
retention purge."""

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
from scan_ingest.handlers import admit, purge_ended
from scanner_auth_shared.consumer import subscribe
from scanner_auth_shared.crypto import credential_digest
from scanner_auth_shared.events import (
    PUBLIC_TOPIC,
    CredentialRotated,
    CredentialsRevoked,
    EventData,
    ScannerAuthorised,
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
        """Each event through the handler its type has (none: the consumer skips it)."""
        for data in datas:
            event = new_event(data, source=f"scanner-auth/{data.producer}")
            handler = GATE_WRITER.handlers.get(type(data))
            if handler is None:
                continue
            async with MemoryGateUnitOfWork(self.store) as uow:
                await handler(uow, event, data)
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


async def test_a_revocation_closes_exactly_the_credentials_it_names() -> None:
    writer, scanner = Writer(), Scanner()
    first, first_id, authorised = scanner.authorised(at(0))
    second, second_id, rotated = scanner.rotated(first_id, timedelta(hours=1), at(10))
    other_scanner = Scanner()
    elsewhere, elsewhere_id, other = other_scanner.authorised(at(0))
    await writer.apply(authorised, rotated, other)
    await writer.apply(scanner.revoked(first_id, second_id, elsewhere_id))
    assert await writer.answer(first, at(21)) == "revoked"
    assert await writer.answer(second, at(21)) == "revoked"
    # Another scanner's credential is not closed by this scanner's revocation.
    assert await writer.answer(elsewhere, at(21)) == "admitted"
    # Authorised again afterwards: the new credential works, the old ones stay revoked.
    third, _, again = scanner.authorised(at(30))
    await writer.apply(again)
    assert await writer.answer(third, at(31)) == "admitted"
    assert await writer.answer(first, at(31)) == "revoked"
    assert writer.store.notifications == [scanner.scanner_id] * 2 + [
        other_scanner.scanner_id,
        scanner.scanner_id,
        scanner.scanner_id,
    ]


@pytest.mark.parametrize("skew", [-10.0, 10.0, -86_400.0])
async def test_a_deauthorisation_by_a_skewed_clock_cannot_leave_a_credential_working(
    skew: float,
) -> None:
    """Issue 18: the token-issuer's clock `skew` seconds off. Before, the gate compared its
    `deauthorised_at` with the redeemer's `authorised_at`: 10 s behind, a redemption 1 s before
    the deauthorisation stayed admitted for ever. Now the ScannerDeauthorised closes nothing by
    time, and the redeemer's CredentialsRevoked closes the credential by id."""
    writer, scanner = Writer(), Scanner()
    credential, credential_id, authorised = scanner.authorised(at(0))
    await writer.apply(authorised, scanner.deauthorised(at(1 + skew), credential_id=None))
    assert writer.store.notifications == [scanner.scanner_id]  # the deauthorisation: nothing
    await writer.apply(scanner.revoked(credential_id, at=at(1.2)))
    assert await writer.answer(credential, at(2)) == "revoked"
    assert await writer.answer(credential, at(10**6)) == "revoked"


async def test_a_forged_authorisation_from_the_future_is_closed_by_the_next_revocation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A ScannerAuthorised the redeemer never issued (so it names nothing of it), stamped a day
    ahead: a time-based deauthorisation missed it; the revocation closes every credential the
    gate holds as working for the scanner, named or not."""
    writer, scanner = Writer(), Scanner()
    legit, legit_id, authorised = scanner.authorised(at(0))
    forged, forged_id, forgery = scanner.authorised(at(86_400))
    await writer.apply(authorised, forgery)
    assert await writer.answer(forged, at(1)) == "admitted"
    with caplog.at_level(logging.WARNING, logger="scanner_auth.scan_ingest"):
        await writer.apply(scanner.revoked(legit_id, at=at(5)))
    assert await writer.answer(forged, at(6)) == "revoked"
    assert await writer.answer(legit, at(6)) in ("revoked", "replaced")
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        warning.getMessage() == "credentials the redeemer did not name closed with its revocation"
    )
    assert warning.credential_ids == [forged_id]  # type: ignore[attr-defined]
    assert forged not in caplog.text


async def test_a_revocation_without_credentials_closes_whatever_the_gate_holds() -> None:
    writer, scanner = Writer(), Scanner()
    await writer.apply(scanner.revoked())
    assert writer.store.notifications == []  # nothing in any gate changed
    credential, _, authorised = scanner.authorised(at(0))
    await writer.apply(authorised, scanner.revoked())
    assert await writer.answer(credential, at(1)) == "revoked"


async def test_a_new_authorisation_replaces_the_scanners_earlier_credentials() -> None:
    writer, scanner = Writer(), Scanner()
    first, first_id, authorised = scanner.authorised(at(0))
    rotated_to, _, rotated = scanner.rotated(first_id, timedelta(hours=1), at(10))
    latest, _, again = scanner.authorised(at(20))
    await writer.apply(authorised, rotated, again)
    assert await writer.answer(first, at(21)) == "replaced"
    assert await writer.answer(rotated_to, at(21)) == "replaced"
    assert await writer.answer(latest, at(21)) == "admitted"


async def test_a_revocation_that_arrives_first_covers_the_credential_announced_later() -> None:
    """Should the topic ever deliver them out of order: a named id is revoked on arrival."""
    writer, scanner = Writer(), Scanner()
    credential, credential_id, authorised = scanner.authorised(at(0))
    await writer.apply(scanner.revoked(credential_id))
    assert writer.store.notifications == []  # nothing in any gate changed
    await writer.apply(authorised)
    assert await writer.answer(credential, at(1)) == "revoked"  # known (not 401), refused
    assert writer.store.notifications == [scanner.scanner_id]
    # A credential it did not name, announced after it, is not covered by it.
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
    # The revocation names what the redeemer had issued before it; d comes after it (the
    # redeemer's commit order, which the scanner's partition keeps).
    events: list[EventData] = [
        authorised_a,
        rotated_b,
        rotated_c,
        scanner.revoked(a_id, b_id, rotated_c.credential_id),
    ]
    credentials = (a, b, c, d)
    in_order = Writer()
    await in_order.apply(*events, authorised_d)
    expected = [in_order.standing(x) for x in credentials]
    assert [s.state for s in expected] == [CredentialState.REVOKED] * 3 + [CredentialState.ACTIVE]
    for order in itertools.permutations(events):
        writer = Writer()
        await writer.apply(*order, authorised_d)
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


async def test_a_revocation_repeated_changes_nothing_more() -> None:
    writer, scanner = Writer(), Scanner()
    credential, credential_id, authorised = scanner.authorised(at(15))
    await writer.apply(authorised, scanner.revoked(credential_id))
    assert writer.store.notifications == [scanner.scanner_id] * 2
    await writer.apply(scanner.revoked(credential_id))
    assert writer.store.notifications == [scanner.scanner_id] * 2
    assert await writer.answer(credential, at(30)) == "revoked"


# ------------------------------------------------------------------------------ retention


async def test_the_purge_forgets_credentials_past_any_use_and_nothing_else() -> None:
    writer, scanner = Writer(), Scanner()
    writer.store.clock = at(10)
    old, old_id, authorised = scanner.authorised(at(0))
    current, current_id, rotated = scanner.rotated(old_id, timedelta(seconds=60), at(10))
    await writer.apply(authorised, rotated)
    revoked_scanner = Scanner()
    dead, dead_id, gone = revoked_scanner.authorised(at(0))
    await writer.apply(gone, revoked_scanner.revoked(dead_id))
    writer.store.clock = at(69)

    async def purge(rotated_after: float = 0.0, ended_after: float = 86_400.0) -> int:
        return await purge_ended(
            MemoryGateUnitOfWork(writer.store), rotated_after=rotated_after, ended_after=ended_after
        )

    assert await purge() == 0  # the rotated-out one is in its grace (until at(70))
    writer.store.clock = at(70.5)
    assert await purge(rotated_after=1) == 0
    assert await purge() == 1
    assert await writer.answer(old, at(71)) == "unknown"  # forgotten: 401 from now on
    assert await writer.answer(current, at(71)) == "admitted"
    assert await writer.answer(dead, at(71)) == "revoked"  # ended, kept for `ended_after`
    writer.store.advance(86_400)
    assert await purge() == 1
    assert await writer.answer(dead, at(86_500)) == "unknown"
    assert writer.store.revocations == {}
    assert await writer.answer(current, at(86_500)) == "admitted"
    # A later event for the scanner re-derives from what is left: nothing comes back to life.
    await writer.apply(scanner.revoked(current_id))
    assert await writer.answer(current, at(86_501)) == "revoked"


# ------------------------------------------------------------------------------ the consumer


def test_the_gate_writer_keeps_its_group_and_reads_its_three_types_quickly() -> None:
    assert GATE_WRITER.group_id == "scanner-auth.scan-ingest.gate"
    assert GATE_WRITER.name == "scan-ingest.gate"  # the key of its existing processed_events rows
    assert GATE_WRITER.topic == PUBLIC_TOPIC
    assert set(GATE_WRITER.handlers) == {ScannerAuthorised, CredentialRotated, CredentialsRevoked}
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
