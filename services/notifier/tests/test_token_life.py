"""Nothing is sent for a code that is no longer active when its turn comes, and a send that a
crash interrupted is never repeated. Real PostgreSQL, a real broker and a real SMTP server."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from notifier.app import build
from scanner_auth_shared.events import (
    EventData,
    ScannerAuthorised,
    TokenExpired,
    TokenIssued,
    TokenRevoked,
)

from .conftest import World, until

pytestmark = pytest.mark.integration


def _now() -> datetime:
    return datetime.now(UTC)


def _issued(token_id: str) -> TokenIssued:
    return TokenIssued(
        token_id=token_id,
        scanner_id="scanner-1",
        org_id="org-1",
        issued_by="user-admin",
        issued_at=_now(),
        expires_at=_now() + timedelta(days=3),
        code_digest="0" * 64,
    )


def _ended(how: str, token_id: str) -> EventData:
    if how == "revoked":
        return TokenRevoked(
            token_id=token_id,
            scanner_id="scanner-1",
            org_id="org-1",
            revoked_by="user-admin",
            reason="superseded",
            revoked_at=_now(),
        )
    if how == "expired":
        return TokenExpired(
            token_id=token_id, scanner_id="scanner-1", org_id="org-1", expired_at=_now()
        )
    return ScannerAuthorised(
        scanner_id="scanner-1",
        org_id="org-1",
        token_id=token_id,
        serial_number="LVS-0042",
        credential_id="cred-1",
        credential_digest="1" * 64,
        authorised_at=_now(),
    )


@pytest.mark.parametrize("how", ["revoked", "expired", "redeemed"])
async def test_no_email_for_a_code_that_ended_before_its_turn(world: World, how: str) -> None:
    runtime = build(world.settings())
    async with runtime.running():
        token_id = f"tok-{uuid.uuid4().hex[:8]}"
        # The end first, then a late TokenIssued: a token never goes back to active.
        await world.publish(_ended(how, token_id), _issued(token_id))
        await until(lambda: _state_is(world, token_id, how), what=f"token {how}")
        request, _ = world.request(recipient="hal@example.test", token_id=token_id)
        await world.publish(request)
        failed = await world.outcome("NotificationFailed", request.notification_id)
        assert failed.data["permanent"] is True
        assert failed.data["error"] == "the code is no longer active"
        assert failed.data["attempts"] == 0
        row = await world.notification(request.notification_id)
        assert row is not None and row["status"] == "cancelled" and row["sealed_code"] is None
        assert await world.token_state(token_id) == how
    assert world.sink.mails == []


async def _state_is(world: World, token_id: str, state: str) -> bool:
    # The late TokenIssued must have been consumed too: both events are in processed_events.
    rows = await world.sql(
        "SELECT count(*) AS n FROM processed_events WHERE consumer = 'notifier.token-states'"
    )
    return await world.token_state(token_id) == state and int(rows[0]["n"]) >= 2


async def test_no_email_for_a_code_past_its_expiry(world: World) -> None:
    runtime = build(world.settings())
    async with runtime.running():
        request, _ = world.request(recipient="ivy@example.test", expires_in=timedelta(seconds=-1))
        await world.publish(request)
        failed = await world.outcome("NotificationFailed", request.notification_id)
        assert failed.data["permanent"] is True
        assert failed.data["error"] == "the code is no longer active"
    assert world.sink.mails == []


async def test_a_code_revoked_while_its_email_waits_for_a_retry_is_not_sent(world: World) -> None:
    world.sink.fail_next.append("421 4.7.0 Try again later")
    runtime = build(world.settings(retry_base_seconds=60, retry_max_seconds=60))
    async with runtime.running():
        token_id = f"tok-{uuid.uuid4().hex[:8]}"
        await world.publish(_issued(token_id))
        request, _ = world.request(recipient="jon@example.test", token_id=token_id)
        await world.publish(request)

        async def waiting_for_retry() -> bool:
            row = await world.notification(request.notification_id)
            return row is not None and row["status"] == "pending" and row["attempts"] == 1

        await until(waiting_for_retry, what="a first failed attempt")
        await world.publish(_ended("revoked", token_id))
        failed = await world.outcome("NotificationFailed", request.notification_id)
        assert failed.data == {
            "notification_id": request.notification_id,
            "permanent": True,
            "attempts": 1,
            "error": "the code is no longer active",
        }
        row = await world.notification(request.notification_id)
        assert row is not None and row["status"] == "cancelled"
    assert world.sink.mails == []


async def test_a_send_cut_short_by_a_crash_is_not_resent(world: World) -> None:
    # A process claimed the email, may have had the relay's 250, and died before recording it:
    # the row is left `sending` with a lease that runs out. It must never be sent again.
    runtime = build(world.settings(lease_seconds=2))
    async with runtime.running():
        request, _ = world.request(recipient="kim@example.test")
        await world.publish(request)
        await world.outcome("NotificationSent", request.notification_id)
        crashed, _ = world.request(recipient="lee@example.test")
        await world.sql(
            """
            INSERT INTO notifications (notification_id, token_id, scanner_id, org_id,
                recipient_user_id, recipient_email, requested_by, scanner_name, serial_number,
                sealed_code, expires_at, status, attempts, next_attempt_at, claim_id, lease_until)
            VALUES ($1, $2, 'scanner-1', 'org-1', 'user-lee', $3, 'user-admin', 'Bay', 'LVS-1',
                    $4, $5, 'sending', 0, now(), 'a-dead-process', now() + interval '1 second')
            """,
            crashed.notification_id,
            crashed.token_id,
            crashed.recipient_email,
            crashed.sealed_code,
            crashed.expires_at,
        )
        failed = await world.outcome("NotificationFailed", crashed.notification_id)
        assert failed.data["permanent"] is False
        assert failed.data["attempts"] == 1
        assert failed.data["error"] == (
            "delivery outcome unknown after a crash; not resent to avoid a duplicate"
        )
        # The request itself arrives again (a redelivery after the crash): still nothing.
        await world.publish(crashed)
        await until(lambda: _requests_seen(world, 2), what="the redelivered request consumed")
        await asyncio.sleep(1.0)
        row = await world.notification(crashed.notification_id)
        assert row is not None and row["status"] == "failed" and row["sealed_code"] is None
    assert world.sink.to("lee@example.test") == []
    assert len(world.sink.to("kim@example.test")) == 1


async def _requests_seen(world: World, n: int) -> bool:
    rows = await world.sql(
        "SELECT count(*) AS n FROM processed_events WHERE consumer = 'notifier.email-requests'"
    )
    return int(rows[0]["n"]) >= n
