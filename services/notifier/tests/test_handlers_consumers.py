"""The consumers' use cases against the in-memory fakes: recording a request once, following a
token's life (the first end wins), cancelling the emails of a token that ended."""

from __future__ import annotations

from typing import Any

import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker

from notifier.adapters.memory import MemoryNotifierUnitOfWork
from notifier.consumers import CONSUMERS, EMAIL_REQUESTS, TOKEN_STATES
from notifier.domain import Status, TokenState
from scanner_auth_shared.consumer import subscribe
from scanner_auth_shared.events import (
    NOTIFICATIONS_TOPIC,
    PUBLIC_TOPIC,
    ScannerDeauthorised,
    new_event,
    utcnow,
)
from scanner_auth_shared.settings import ServiceSettings

from .conftest import Rig, ended, issued

pytestmark = pytest.mark.unit


async def test_a_request_becomes_one_pending_notification_due_now(rig: Rig) -> None:
    request, _ = rig.request(recipient="ada@example.test")
    await rig.consume(request)
    row = rig.row(request.notification_id)
    assert row.status is Status.PENDING and row.attempts == 0
    assert row.next_attempt_at == rig.clock()
    assert row.sealed_code == request.sealed_code  # as received: never opened at rest
    assert row.request.recipient_email == "ada@example.test"
    assert rig.store.published == []  # recording sends nothing and tells no one
    assert rig.mailer.attempts == []


async def test_a_request_delivered_again_or_in_a_new_envelope_changes_nothing(rig: Rig) -> None:
    request, _ = rig.request()
    event = new_event(request, source="scanner-auth/token-issuer")
    await rig.consume(event)
    rig.row(request.notification_id).attempts = 1  # it has moved on meanwhile
    await rig.consume(event, new_event(request, source="scanner-auth/token-issuer"))
    assert len(rig.store.notifications) == 1
    assert rig.row(request.notification_id).attempts == 1


async def test_a_token_is_active_once_issued(rig: Rig) -> None:
    await rig.consume(issued("tok-1"))
    assert await _state(rig, "tok-1") is TokenState.ACTIVE


@pytest.mark.parametrize(
    ("how", "state"),
    [
        ("revoked", TokenState.REVOKED),
        ("expired", TokenState.EXPIRED),
        ("redeemed", TokenState.REDEEMED),
    ],
)
async def test_the_first_end_wins_and_nothing_goes_back_to_active(
    rig: Rig, how: str, state: TokenState
) -> None:
    await rig.consume(issued("tok-1"), ended(how, "tok-1"))
    assert await _state(rig, "tok-1") is state
    other = "expired" if how != "expired" else "revoked"
    await rig.consume(ended(other, "tok-1"), issued("tok-1"))  # a later end, a late issue
    assert await _state(rig, "tok-1") is state
    # An end heard of before the token was: the token is ended all the same.
    await rig.consume(ended(how, "tok-2"), issued("tok-2"))
    assert await _state(rig, "tok-2") is state


@pytest.mark.parametrize("how", ["revoked", "expired", "redeemed"])
async def test_a_token_that_ends_cancels_its_pending_emails(rig: Rig, how: str) -> None:
    mine, _ = rig.request(token_id="tok-1")
    other, _ = rig.request(token_id="tok-2")
    await rig.consume(issued("tok-1"), mine, other)
    rig.row(mine.notification_id).attempts = 2  # waiting for a retry
    await rig.consume(ended(how, "tok-1"))
    row = rig.row(mine.notification_id)
    assert row.status is Status.CANCELLED and row.sealed_code is None
    assert [(f.notification_id, f.permanent, f.attempts, f.error) for f in rig.failed()] == [
        (mine.notification_id, True, 2, "the code is no longer active")
    ]
    assert rig.store.events()[0].subject == "scanner-1"
    assert rig.row(other.notification_id).status is Status.PENDING


async def test_an_email_being_delivered_is_left_to_its_sender(rig: Rig) -> None:
    request, _ = rig.request(token_id="tok-1")
    await rig.consume(issued("tok-1"), request)
    [claimed] = await _claim(rig)
    await rig.consume(ended("revoked", "tok-1"))
    assert rig.row(request.notification_id).status is Status.SENDING
    assert rig.failed() == []  # the sender finds the token revoked at its turn
    assert claimed.claim_id == rig.row(request.notification_id).claim_id


def test_each_consumer_keeps_its_name_topic_and_types() -> None:
    # The names are the group ids in deploy/ and the keys of existing processed_events rows.
    assert [(c.group_id, c.topic, sorted(c.types)) for c in CONSUMERS] == [
        ("scanner-auth.notifier.email-requests", NOTIFICATIONS_TOPIC, ["TokenEmailRequested"]),
        (
            "scanner-auth.notifier.token-states",
            PUBLIC_TOPIC,
            ["ScannerAuthorised", "TokenExpired", "TokenIssued", "TokenRevoked"],
        ),
    ]


async def test_through_the_consumer_runner_each_event_applies_once(rig: Rig) -> None:
    """The consumers as the runtime subscribes them (faststream's test broker, the runner's
    inbox): a redelivered event has no second effect; other public types are skipped."""
    broker = KafkaBroker("test:9092")
    settings = ServiceSettings(kafka_bootstrap_servers="test:9092")
    for consumer in (EMAIL_REQUESTS, TOKEN_STATES):
        subscribe(broker, settings, consumer, rig.uow)
    request, _ = rig.request(token_id="tok-1")
    revoked = new_event(ended("revoked", "tok-1"), source="scanner-auth/token-issuer")
    async with TestKafkaBroker(broker) as test_broker:
        await test_broker.publish_batch(
            new_event(request, source="t").to_bytes(), topic=NOTIFICATIONS_TOPIC
        )
        other = new_event(_deauthorised(), source="t")
        await test_broker.publish_batch(
            other.to_bytes(), revoked.to_bytes(), revoked.to_bytes(), topic=PUBLIC_TOPIC
        )
        await test_broker.publish_batch(revoked.to_bytes(), topic=PUBLIC_TOPIC)
    assert rig.row(request.notification_id).status is Status.CANCELLED
    assert len(rig.failed()) == 1
    assert ("notifier.token-states", revoked.id) in rig.store.processed


def _deauthorised() -> ScannerDeauthorised:
    return ScannerDeauthorised(
        scanner_id="scanner-1",
        org_id="org-1",
        credential_id="cred-1",
        deauthorised_by="user-admin",
        reason="lost",
        deauthorised_at=utcnow(),
    )


async def _state(rig: Rig, token_id: str) -> TokenState | None:
    async with MemoryNotifierUnitOfWork(rig.store, clock=rig.clock) as uow:
        return await uow.tokens.state_of(token_id)


async def _claim(rig: Rig) -> list[Any]:
    async with rig.uow() as uow:
        claimed = await uow.notifications.claim_due(10, 60)
        await uow.commit()
    return claimed
