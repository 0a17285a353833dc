"""The sender's use cases against the in-memory fakes: a notification's turn (the read barrier),
one email per notification, transient failures retried with backoff until the code expires,
permanent ones not, leases and their reaping, and what is recorded for each outcome."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

import pytest

from notifier import handlers
from notifier.adapters.memory import MemoryNotifierUnitOfWork
from notifier.domain import (
    OutcomeUnknown,
    PermanentFailure,
    Status,
    TransientFailure,
)
from scanner_auth_shared.crypto import SecretBox

from .conftest import Rig, ended, issued

pytestmark = pytest.mark.unit

NO_LONGER_ACTIVE = "the code is no longer active"


async def _requested(rig: Rig, **options: object) -> str:
    request, _ = rig.request(**options)  # type: ignore[arg-type]
    await rig.consume(request)
    return request.notification_id


# ------------------------------------------------------------------------------ one email


async def test_an_active_code_is_emailed_once_and_the_outcome_recorded(rig: Rig) -> None:
    await rig.consume(issued("tok-1"))
    request, code = rig.request(recipient="ada@example.test", token_id="tok-1")
    await rig.consume(request)
    await rig.turn()
    [mail] = rig.mailer.delivered
    assert code in mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert mail["Message-ID"] == f"<{request.notification_id}@scanner-auth.myscanner>"
    row = rig.row(request.notification_id)
    assert row.status is Status.SENT and row.attempts == 1 and row.sealed_code is None
    assert row.sent_at == rig.clock() and row.smtp_message_id == mail["Message-ID"]
    [sent] = rig.sent()
    assert sent.notification_id == request.notification_id
    assert sent.smtp_message_id == mail["Message-ID"]
    assert rig.store.events()[0].subject == "scanner-1"
    assert rig.barrier.waits == ["scanner-1"]  # its turn came through the barrier
    # Nothing more, however often the sender passes.
    rig.clock.advance(3600)
    assert await rig.turn() == []
    assert len(rig.mailer.attempts) == 1


async def test_a_token_never_heard_of_is_presumed_active_until_its_expiry(rig: Rig) -> None:
    await _requested(rig)
    await rig.turn()
    assert len(rig.mailer.delivered) == 1


# ------------------------------------------------------------------------------ its turn


@pytest.mark.parametrize("how", ["revoked", "expired", "redeemed"])
async def test_a_code_that_ended_before_the_claim_is_not_emailed_even_unapplied(
    rig: Rig, how: str
) -> None:
    """The bug of issue #13: the request is recorded, the end is on the public topic but the
    token-state consumer has not applied it. The sender waits for it, then cancels."""
    await rig.consume(issued("tok-1"))
    notification = await _requested(rig, token_id="tok-1")
    rig.publish(ended(how, "tok-1"))
    turn = asyncio.create_task(rig.turn())
    await asyncio.sleep(0.01)  # the delivery waits at the barrier
    assert rig.row(notification).status is Status.SENDING and rig.mailer.attempts == []
    await rig.catch_up()
    await turn
    assert rig.mailer.attempts == []
    row = rig.row(notification)
    assert row.status is Status.CANCELLED and row.sealed_code is None
    assert [(f.permanent, f.attempts, f.error) for f in rig.failed()] == [
        (True, 0, NO_LONGER_ACTIVE)
    ]


async def test_a_barrier_not_reached_in_time_gives_the_email_back_without_an_attempt(
    rig: Rig,
) -> None:
    await rig.consume(issued("tok-1"))
    notification = await _requested(rig, token_id="tok-1")
    rig.publish(issued("tok-0"))  # anything of its scanner the consumer has not applied
    await rig.turn()
    row = rig.row(notification)
    assert row.status is Status.PENDING and row.attempts == 0 and row.claim_id is None
    assert row.next_attempt_at == rig.clock() + timedelta(seconds=1.0)  # due again shortly
    assert row.sealed_code is not None
    assert rig.store.published == [] and rig.mailer.attempts == []
    assert await rig.turn() == []  # not due yet
    # Still behind when it is due again: given back again, never failed, never sent.
    rig.clock.advance(1)
    await rig.turn()
    assert rig.row(notification).status is Status.PENDING and rig.mailer.attempts == []
    # Caught up: one email.
    await rig.catch_up()
    rig.clock.advance(1)
    await rig.turn()
    assert len(rig.mailer.delivered) == 1 and rig.row(notification).attempts == 1


async def test_a_lagging_consumer_that_catches_up_during_the_wait_lets_it_go(rig: Rig) -> None:
    rig.delivery = _with_barrier_timeout(rig, 5.0)
    await rig.consume(issued("tok-1"))
    await _requested(rig, token_id="tok-1")
    rig.publish(issued("tok-9", scanner_id="scanner-1"))
    turn = asyncio.create_task(rig.turn())
    await asyncio.sleep(0.01)
    assert rig.mailer.attempts == []
    await rig.catch_up()
    await asyncio.wait_for(turn, 2)
    assert len(rig.mailer.delivered) == 1


async def test_only_what_was_published_before_its_turn_is_waited_for(rig: Rig) -> None:
    rig.delivery = _with_barrier_timeout(rig, 5.0)
    await _requested(rig, token_id="tok-1")
    # Another scanner's backlog is not this email's business.
    rig.publish(issued("tok-x", scanner_id="scanner-2"))
    await asyncio.wait_for(rig.turn(), 2)
    assert len(rig.mailer.delivered) == 1


async def test_a_code_known_to_be_over_is_cancelled_without_waiting(rig: Rig) -> None:
    await rig.consume(issued("tok-1"))
    notification = await _requested(rig, token_id="tok-1")
    await rig.consume(ended("revoked", "tok-1"))  # cancelled at once, pending as it was
    assert rig.row(notification).status is Status.CANCELLED
    # A notification claimed with its token already over (the end applied after the claim).
    other = await _requested(rig, token_id="tok-2")
    claimed = await handlers.claim_due(rig.delivery, 10, 60)
    await rig.consume(ended("expired", "tok-2"))
    assert rig.row(other).status is Status.SENDING
    for c in await handlers.claim_due(rig.delivery, 10, 60):
        claimed.append(c)
    assert [await handlers.wait_for_turn(rig.delivery, c) for c in claimed] == [False]
    assert rig.row(other).status is Status.CANCELLED
    assert rig.mailer.attempts == []


async def test_a_code_past_its_expiry_is_not_emailed(rig: Rig) -> None:
    notification = await _requested(rig, expires_in=timedelta(seconds=-1))
    await rig.turn()
    assert rig.mailer.attempts == [] and rig.barrier.waits == []
    assert rig.row(notification).status is Status.CANCELLED
    assert [(f.permanent, f.attempts, f.error) for f in rig.failed()] == [
        (True, 0, NO_LONGER_ACTIVE)
    ]


async def test_stopping_during_the_wait_gives_the_email_back(rig: Rig) -> None:
    rig.delivery = _with_barrier_timeout(rig, 60.0)
    notification = await _requested(rig)
    rig.publish(issued("tok-0"))
    [claimed] = await handlers.claim_due(rig.delivery, 10, 60)
    waiting = asyncio.create_task(handlers.wait_for_turn(rig.delivery, claimed))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    row = rig.row(notification)
    assert row.status is Status.PENDING and row.attempts == 0 and rig.store.published == []


# ------------------------------------------------------------------------------ failures


async def test_transient_failures_are_retried_with_a_doubling_backoff(rig: Rig) -> None:
    rig.mailer.script = [TransientFailure("451 4.3.0 try later")] * 3
    notification = await _requested(rig)
    delays = []
    for attempt in range(1, 4):
        await rig.turn()
        row = rig.row(notification)
        assert row.status is Status.PENDING and row.attempts == attempt
        assert row.last_error == "451 4.3.0 try later"
        delays.append((row.next_attempt_at - rig.clock()).total_seconds())
        assert await rig.turn() == []  # not before its time
        rig.clock.now = row.next_attempt_at
    assert delays == [2.0, 4.0, 8.0]  # base 2, doubling (jitter 1 in this rig)
    await rig.turn()
    assert rig.row(notification).status is Status.SENT and rig.row(notification).attempts == 4
    assert len(rig.mailer.delivered) == 1 and len(rig.mailer.attempts) == 4
    assert [type(e).__name__ for e in (*rig.sent(), *rig.failed())] == ["NotificationSent"]


async def test_retries_end_at_the_codes_expiry(rig: Rig) -> None:
    rig.mailer.script = [TransientFailure("451 4.3.0 try later")] * 10
    notification = await _requested(rig, expires_in=timedelta(seconds=10))
    await rig.turn()  # attempt 1, retry in 2 s
    rig.clock.advance(2)
    await rig.turn()  # attempt 2, retry in 4 s
    rig.clock.advance(4)
    await rig.turn()  # attempt 3: the next retry (8 s) would fall after the expiry
    row = rig.row(notification)
    assert row.status is Status.FAILED and row.attempts == 3 and row.sealed_code is None
    [failed] = rig.failed()
    assert failed.permanent is False and failed.attempts == 3
    assert failed.error == "451 4.3.0 try later; the code expires before the next attempt"
    assert rig.mailer.delivered == []


async def test_a_code_that_expires_while_its_email_waits_for_a_retry(rig: Rig) -> None:
    rig.mailer.script = [TransientFailure("451 4.3.0 try later")]
    notification = await _requested(rig, expires_in=timedelta(seconds=3))
    await rig.turn()  # retry due in 2 s, before the expiry
    rig.clock.advance(3)  # due, but the code expired meanwhile: the retries ran out
    await rig.turn()
    [failed] = rig.failed()
    assert (failed.permanent, failed.attempts) == (False, 1)
    assert "the code expires before the next attempt" in failed.error
    assert rig.row(notification).status is Status.FAILED and len(rig.mailer.attempts) == 1


async def test_a_permanent_refusal_is_not_retried(rig: Rig) -> None:
    rig.mailer.script = [PermanentFailure("550 5.1.1 no such user")]
    notification = await _requested(rig)
    await rig.turn()
    rig.clock.advance(3600)
    await rig.turn()
    assert len(rig.mailer.attempts) == 1
    row = rig.row(notification)
    assert row.status is Status.FAILED and row.attempts == 1 and row.sealed_code is None
    assert [(f.permanent, f.attempts, f.error) for f in rig.failed()] == [
        (True, 1, "550 5.1.1 no such user")
    ]


async def test_a_message_the_relay_may_have_is_never_sent_again(rig: Rig) -> None:
    rig.mailer.script = [OutcomeUnknown("lost after DATA; outcome unknown")]
    notification = await _requested(rig)
    await rig.turn()
    rig.clock.advance(3600)
    await rig.turn()
    assert len(rig.mailer.attempts) == 1
    assert rig.row(notification).status is Status.FAILED
    assert [(f.permanent, f.attempts) for f in rig.failed()] == [(False, 1)]


async def test_a_relay_that_does_not_answer_in_time_is_not_tried_again(rig: Rig) -> None:
    rig.mailer.hold["ada@example.test"] = asyncio.Event()  # never set: the relay hangs
    notification = await _requested(rig, recipient="ada@example.test")
    await asyncio.wait_for(rig.turn(), 5)  # the send deadline (1 s in this rig) ends it
    [failed] = rig.failed()
    assert failed.permanent is False and "outcome unknown" in failed.error
    assert rig.row(notification).status is Status.FAILED


async def test_a_seal_that_does_not_open_fails_the_email(rig: Rig) -> None:
    request, _ = rig.request(token_id="tok-1")
    other_key = SecretBox(b"k" * 32).seal("ABCD-EFGH-JKMN", "elsewhere")
    await rig.consume(request.model_copy(update={"sealed_code": other_key}))
    await rig.turn()
    assert rig.mailer.attempts == []
    assert [(f.permanent, f.attempts, f.error) for f in rig.failed()] == [
        (True, 0, "the sealed code cannot be opened with this SEALING_KEY")
    ]


async def test_an_unusable_address_fails_the_email(rig: Rig) -> None:
    await _requested(rig, recipient="not an address")
    await rig.turn()
    assert rig.mailer.attempts == []
    [failed] = rig.failed()
    assert failed.permanent is True and "recipient address" in failed.error


async def test_the_outcome_is_recorded_through_a_database_outage(rig: Rig) -> None:
    notification = await _requested(rig)
    real = rig.delivery.unit_of_work
    outages = [ConnectionResetError("the database went away")]

    class FailingOnce(MemoryNotifierUnitOfWork):
        async def commit(self) -> None:
            if outages and self.store.notifications[notification].status is Status.SENT:
                raise outages.pop()
            await super().commit()

    rig.delivery = _replace(rig, unit_of_work=lambda: FailingOnce(rig.store, clock=rig.clock))
    await rig.turn()
    rig.delivery = _replace(rig, unit_of_work=real)
    assert outages == [] and rig.row(notification).status is Status.SENT
    assert len(rig.sent()) == 1 and len(rig.mailer.delivered) == 1


# ------------------------------------------------------------------------------ leases


async def test_a_dead_senders_claim_is_reaped_as_unknown_and_never_resent(rig: Rig) -> None:
    notification = await _requested(rig)
    await handlers.claim_due(rig.delivery, 10, lease_seconds=60)  # then the process died
    assert await handlers.reap_dead_leases(rig.delivery, []) == 0  # the lease still runs
    rig.clock.advance(61)
    assert await handlers.reap_dead_leases(rig.delivery, []) == 1
    row = rig.row(notification)
    assert row.status is Status.FAILED and row.attempts == 1 and row.sealed_code is None
    [failed] = rig.failed()
    assert failed.permanent is False and failed.attempts == 1
    assert failed.error == (
        "delivery outcome unknown after a crash; not resent to avoid a duplicate"
    )
    await rig.consume(rig.request()[0])  # other work goes on
    await rig.turn()
    assert [m["To"] for m in rig.mailer.attempts] == ["ada@example.test"]
    assert rig.row(notification).status is Status.FAILED


async def test_a_process_never_reaps_its_own_claims(rig: Rig) -> None:
    await _requested(rig)
    [claimed] = await handlers.claim_due(rig.delivery, 10, lease_seconds=1)
    rig.clock.advance(2)
    assert await handlers.reap_dead_leases(rig.delivery, [claimed.claim_id]) == 0


async def test_an_outcome_for_a_lost_lease_is_not_recorded(rig: Rig) -> None:
    notification = await _requested(rig)
    [claimed] = await handlers.claim_due(rig.delivery, 10, lease_seconds=1)
    rig.clock.advance(2)
    await handlers.reap_dead_leases(rig.delivery, [])  # another replica took it for dead
    await handlers.deliver(rig.delivery, claimed)
    assert rig.row(notification).status is Status.FAILED  # as the reaper left it
    assert rig.sent() == [] and len(rig.failed()) == 1


async def test_claims_take_the_oldest_due_first_and_never_the_same_twice(rig: Rig) -> None:
    first = await _requested(rig)
    rig.clock.advance(1)
    second = await _requested(rig)
    one = await handlers.claim_due(rig.delivery, 1, 60)
    two = await handlers.claim_due(rig.delivery, 5, 60)
    assert [c.notification_id for c in one + two] == [first, second]
    assert await handlers.claim_due(rig.delivery, 5, 60) == []
    assert await handlers.seconds_to_next_due(rig.delivery) is None


def _with_barrier_timeout(rig: Rig, seconds: float) -> handlers.Delivery:
    return replace(
        rig.delivery, policy=replace(rig.delivery.policy, barrier_timeout_seconds=seconds)
    )


def _replace(rig: Rig, **changes: object) -> handlers.Delivery:
    return replace(rig.delivery, **changes)  # type: ignore[arg-type]
