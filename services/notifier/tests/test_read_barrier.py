"""Issue #13, item 2: nothing is sent for a code that ended before its email's turn, whichever
of the two topics the notifier happened to read first: after a restart, while the token-state
consumer lags behind, and through a rebalance. The real runtime on PostgreSQL, Apache Kafka and
an SMTP sink; revoked, expired and redeemed (ScannerAuthorised) codes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY

from notifier.app import build
from scanner_auth_shared.events import (
    NOTIFICATIONS_TOPIC,
    CloudEvent,
    CredentialRotated,
    EventData,
    utcnow,
)
from scanner_auth_shared.postgres import asyncpg_dsn
from scanner_auth_shared.testing.kafka import events_on

from .conftest import World, ended, issued, until

pytestmark = pytest.mark.integration

NO_LONGER_ACTIVE = "the code is no longer active"

# Short waits at the barrier, so that a lagging consumer shows as emails given back (and taken
# again) several times within a test.
BARRIER = {"barrier_timeout_seconds": 1.0, "barrier_release_seconds": 0.2}


def _token() -> str:
    return f"tok-{uuid.uuid4().hex[:8]}"


def _history(n: int) -> list[EventData]:
    """`n` earlier codes of the scanner, each issued then superseded: 2n events on its key."""
    events: list[EventData] = []
    for _ in range(n):
        old = _token()
        events += [issued(old), ended("revoked", old)]
    return events


async def _outcome(world: World, notification_id: str) -> CloudEvent | None:
    for event in await events_on(world.bootstrap, NOTIFICATIONS_TOPIC):
        if event.type in {"NotificationSent", "NotificationFailed"} and (
            event.data.get("notification_id") == notification_id
        ):
            return event
    return None


async def _cancelled(world: World, notification_id: str) -> None:
    outcome = await until(
        lambda: _outcome(world, notification_id), 30, "the notification's outcome"
    )
    assert outcome.type == "NotificationFailed", "the email went out with a dead code"
    assert outcome.data["error"] == NO_LONGER_ACTIVE
    assert outcome.data["permanent"] is True and outcome.data["attempts"] == 0
    row = await world.notification(notification_id)
    assert row is not None and row["status"] == "cancelled" and row["sealed_code"] is None


async def _sent(world: World, notification_id: str) -> None:
    outcome = await until(
        lambda: _outcome(world, notification_id), 30, "the notification's outcome"
    )
    assert outcome.type == "NotificationSent"


async def _states(world: World, *expected: tuple[str, str]) -> bool:
    return all([await world.token_state(t) == state for t, state in expected])


def _deferred() -> float:
    return REGISTRY.get_sample_value("scanner_auth_notifier_deferred_total") or 0.0


@pytest.mark.parametrize("how", ["revoked", "expired", "redeemed"])
async def test_a_code_that_ended_while_the_notifier_was_stopped_is_not_emailed(
    world: World, how: str
) -> None:
    """(a) Stopped: the request, then the code's end. Started again, the request is recorded
    at once while the end waits behind the public topic's backlog: the email is not sent.
    Before the barrier this sent the email every time."""
    token_id = _token()
    first = build(world.settings())
    async with first.running():
        await world.publish(issued(token_id))
        await until(lambda: _states(world, (token_id, "active")), what="the token known")
    # Meanwhile the public topic kept flowing (the scanner's earlier codes, superseded), the
    # request was made, and then the code ended.
    await world.publish(*_history(150))
    request, _ = world.request(recipient="max@example.test", token_id=token_id)
    await world.publish(request)
    await world.publish(ended(how, token_id))
    second = build(world.settings())
    async with second.running():
        await _cancelled(world, request.notification_id)
        assert await world.token_state(token_id) == how
    assert world.sink.mails == []


@asynccontextmanager
async def _token_states_held_up(world: World, token_id: str) -> AsyncIterator[None]:
    """The token-state consumer stuck on an event that must change `token_id`'s row: a
    transaction of ours holds that row's lock until the block ends."""
    conn = await asyncpg.connect(asyncpg_dsn(world.database_url))
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.execute("SELECT 1 FROM token_states WHERE token_id = $1 FOR UPDATE", token_id)
        yield
    finally:
        await transaction.rollback()
        await conn.close()


async def _consumer_blocked(world: World) -> bool:
    rows = await world.sql(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND datname = current_database()"
    )
    return int(rows[0]["n"]) > 0


async def test_no_email_while_the_token_states_lag_behind(world: World) -> None:
    """(b) The token-state consumer lags (stuck on a row lock) while two emails of one scanner
    are requested: one code revoked meanwhile, one still active. Nothing is sent while it lags;
    once it catches up, nothing for the revoked code and exactly one email for the active one."""
    revoked, active, blocker = _token(), _token(), _token()
    runtime = build(world.settings(**BARRIER))
    async with runtime.running():
        await world.publish(issued(revoked), issued(active), issued(blocker))
        await until(
            lambda: _states(world, (revoked, "active"), (active, "active"), (blocker, "active")),
            what="the tokens known",
        )
        deferred = _deferred()
        async with _token_states_held_up(world, blocker):
            # On the scanner's partition: an event the consumer is stuck on, then the revocation.
            await world.publish(ended("expired", blocker), ended("revoked", revoked))
            await until(lambda: _consumer_blocked(world), what="the token-state consumer stuck")
            dead, _ = world.request(recipient="dead@example.test", token_id=revoked)
            alive, _ = world.request(recipient="alive@example.test", token_id=active)
            await world.publish(dead, alive)
            # Both claimed, waited for their turn, given back (a second, 1 s barrier each):
            # without the barrier both emails would have gone out at the first claim.
            await until(lambda: _deferred() >= deferred + 4, 20, "both emails deferred twice")
            assert world.sink.mails == []
            assert await world.token_state(revoked) == "active"  # not applied yet: still behind
        await _cancelled(world, dead.notification_id)
        await _sent(world, alive.notification_id)
        # Both rows are final: the sender claims only pending rows, so nothing more can go out.
        sent_row = await world.notification(alive.notification_id)
        assert sent_row is not None and sent_row["status"] == "sent"
    assert world.sink.to("dead@example.test") == []
    assert len(world.sink.to("alive@example.test")) == 1
    assert [e.type for e in await world.outcomes(alive.notification_id)] == ["NotificationSent"]


async def _round(world: World, how: str, scanner: str) -> tuple[Any, Any]:
    """A code that ends after its email was requested, and an active one, both of `scanner`."""
    dead_token, live_token = _token(), _token()
    await world.publish(issued(dead_token, scanner), issued(live_token, scanner))
    dead, _ = world.request(
        recipient=f"dead-{how}@example.test", token_id=dead_token, scanner_id=scanner
    )
    live, _ = world.request(
        recipient=f"live-{how}@example.test", token_id=live_token, scanner_id=scanner
    )
    await world.publish(dead, ended(how, dead_token, scanner), live)
    return dead, live


async def test_a_rebalance_while_emails_wait_for_their_turn(world: World) -> None:
    """(c) A second replica joins both groups, then leaves: each time the partitions move
    between the two while requests and ends arrive. Still nothing for a dead code, one email
    for a live one."""
    one = build(world.settings(**BARRIER))
    async with one.running():
        await world.publish(issued(_token()))  # the groups have a position
        two = build(world.settings(**BARRIER))
        await two.start()  # joining: a rebalance
        leaving: asyncio.Task[None] | None = None
        try:
            joined = await _round(world, "redeemed", "scanner-j")
            for email in joined:
                await until(lambda e=email: _outcome(world, e.notification_id), 40, "an outcome")
            leaving = asyncio.create_task(two.stop())  # leaving: another rebalance
            left = await _round(world, "expired", "scanner-l")
        finally:
            await (leaving if leaving is not None else two.stop())
        for dead, live in (joined, left):
            await _cancelled(world, dead.notification_id)
            await _sent(world, live.notification_id)
    for how in ("redeemed", "expired"):
        assert world.sink.to(f"dead-{how}@example.test") == []
        assert len(world.sink.to(f"live-{how}@example.test")) == 1


async def test_a_partition_ending_in_events_the_notifier_ignores_is_caught_up(
    world: World,
) -> None:
    """The scanner's partition ends in an event no handler of the token-state consumer applies
    (CredentialRotated): the consumer commits past it all the same, so the barrier is reached
    and an active code's email goes out, rather than waiting for ever."""
    token_id = _token()
    runtime = build(world.settings(**BARRIER))
    async with runtime.running():
        await world.publish(issued(token_id))
        await until(lambda: _states(world, (token_id, "active")), what="the token known")
        rotated = CredentialRotated(
            scanner_id="scanner-1",
            org_id="org-1",
            credential_id="cred-2",
            credential_digest="2" * 64,
            previous_credential_id="cred-1",
            previous_valid_until=utcnow() + timedelta(minutes=5),
            rotated_at=utcnow(),
        )
        await world.publish(rotated)  # a batch of its own: the token was known before
        request, _ = world.request(recipient="max@example.test", token_id=token_id)
        await world.publish(request)
        await _sent(world, request.notification_id)
    assert len(world.sink.to("max@example.test")) == 1
