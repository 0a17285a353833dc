"""The sender's loop on the in-memory fakes: deliveries run side by side (bounded), so one slow
recipient or one email waiting for its turn never holds up the others; its own claims are never
reaped; stopping gives back what waits and lets what is being sent finish."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import pytest

from notifier.adapters.memory import MemoryWakeups
from notifier.domain import Status
from notifier.sender import Sender

from .conftest import Rig, issued, until

pytestmark = pytest.mark.unit


def _sender(rig: Rig, *, concurrency: int = 2, drain_seconds: float = 1.0) -> Sender:
    return Sender(
        rig.delivery,
        MemoryWakeups(),
        concurrency=concurrency,
        poll_seconds=0.01,
        lease_seconds=60,
        drain_seconds=drain_seconds,
    )


@asynccontextmanager
async def _running(sender: Sender) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(sender.run())
    try:
        yield task
    finally:
        await sender.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _request(rig: Rig, recipient: str, scanner_id: str = "scanner-1") -> str:
    request, _ = rig.request(recipient=recipient, scanner_id=scanner_id)
    await rig.consume(request)
    return request.notification_id


def _delivered(rig: Rig) -> list[str]:
    return sorted(str(m["To"]) for m in rig.mailer.delivered)


async def test_a_slow_recipient_does_not_hold_up_the_others(rig: Rig) -> None:
    rig.mailer.hold["slow@example.test"] = gate = asyncio.Event()
    slow = await _request(rig, "slow@example.test")
    others = [f"{n}@example.test" for n in "abcd"]
    for address in others:
        await _request(rig, address)
    sender = _sender(rig, concurrency=2)
    async with _running(sender):
        await until(lambda: _delivered(rig) == others, 5, "the others delivered")
        assert rig.mailer.most_at_once == 2  # never more than SENDER_CONCURRENCY at once
        # Its own claim under way is never reaped, however long it takes.
        rig.clock.advance(3600)
        await asyncio.sleep(0.05)  # a few passes (poll 0.01 s), each one reaping
        assert rig.row(slow).status is Status.SENDING and rig.failed() == []
        gate.set()
        await until(lambda: rig.row(slow).status is Status.SENT, 5, "the slow one sent")
    assert len(rig.mailer.delivered) == 5


async def test_an_email_waiting_for_its_turn_does_not_hold_up_the_others(rig: Rig) -> None:
    rig.delivery = replace(
        rig.delivery, policy=replace(rig.delivery.policy, barrier_timeout_seconds=60)
    )
    rig.publish(issued("tok-0", scanner_id="scanner-2"))  # scanner-2's token events lag
    waiting = await _request(rig, "late@example.test", scanner_id="scanner-2")
    for address in ("a@example.test", "b@example.test"):
        await _request(rig, address)
    async with _running(_sender(rig, concurrency=2)):
        await until(lambda: len(rig.mailer.delivered) == 2, 5, "the others delivered")
        assert rig.row(waiting).status is Status.SENDING and rig.mailer.to("late") == []
        await rig.catch_up()
        await until(lambda: rig.row(waiting).status is Status.SENT, 5, "the late one sent")


async def test_stopping_gives_back_what_waits_and_lets_what_is_sent_finish(rig: Rig) -> None:
    rig.delivery = replace(
        rig.delivery, policy=replace(rig.delivery.policy, barrier_timeout_seconds=60)
    )
    rig.publish(issued("tok-0", scanner_id="scanner-2"))
    waiting = await _request(rig, "late@example.test", scanner_id="scanner-2")
    rig.mailer.hold["busy@example.test"] = gate = asyncio.Event()
    sending = await _request(rig, "busy@example.test")
    sender = _sender(rig, concurrency=2, drain_seconds=5)
    task = asyncio.create_task(sender.run())
    await until(lambda: len(rig.mailer.attempts) == 1 and rig.barrier.waits, 5, "both busy")
    stopping = asyncio.create_task(sender.stop())
    await until(lambda: rig.row(waiting).status is Status.PENDING, 5, "the waiting one back")
    assert rig.row(waiting).attempts == 0 and rig.failed() == []
    assert not stopping.done()  # still letting the send finish
    gate.set()
    await asyncio.wait_for(stopping, 5)
    assert rig.row(sending).status is Status.SENT
    await asyncio.wait_for(task, 2)  # the loop ends by itself once stopping


async def test_stopping_gives_up_on_a_send_that_does_not_finish(rig: Rig) -> None:
    rig.mailer.hold["stuck@example.test"] = asyncio.Event()  # never set
    stuck = await _request(rig, "stuck@example.test")
    sender = _sender(rig, drain_seconds=0.2)
    task = asyncio.create_task(sender.run())
    await until(lambda: rig.mailer.attempts, 5, "the send under way")
    await asyncio.wait_for(sender.stop(), 2)  # bounded by drain_seconds, then cancelled
    assert rig.row(stuck).status is Status.SENDING  # its lease ends it: outcome unknown
    assert rig.mailer.delivered == []
    await asyncio.wait_for(task, 2)


async def test_nothing_is_claimed_once_stopping(rig: Rig) -> None:
    sender = _sender(rig)
    await sender.stop()
    notification = await _request(rig, "ada@example.test")
    await sender.pass_once()
    assert rig.row(notification).status is Status.PENDING
