"""Queries of the notifier's tables. Each function runs in the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from scanner_auth_shared.db import run_sql

from ..domain import Status, TokenState
from .tables import Notification, TokenStateRow

# Fired by a trigger on every insert into notifications (see the first migration).
WAKE_CHANNEL = "scanner_auth_notifier"


@dataclass(frozen=True, slots=True)
class Claimed:
    """A notification this process holds the lease of (status `sending`)."""

    notification_id: str
    claim_id: str
    token_id: str
    scanner_id: str
    recipient_email: str
    scanner_name: str
    serial_number: str
    sealed_code: str | None
    expires_at: datetime
    attempts: int
    token_state: str | None

    def __repr__(self) -> str:  # the sealed code stays out of reprs all the same
        return f"Claimed(notification_id={self.notification_id!r}, attempts={self.attempts})"


@dataclass(frozen=True, slots=True)
class Finished:
    notification_id: str
    scanner_id: str
    attempts: int


_INSERT_REQUEST = text(
    """
    INSERT INTO notifications (
        notification_id, token_id, scanner_id, org_id, recipient_user_id, recipient_email,
        requested_by, scanner_name, serial_number, sealed_code, expires_at, status, attempts,
        next_attempt_at, requested_at)
    VALUES (
        :notification_id, :token_id, :scanner_id, :org_id, :recipient_user_id, :recipient_email,
        :requested_by, :scanner_name, :serial_number, :sealed_code, :expires_at, 'pending', 0,
        now(), now())
    ON CONFLICT (notification_id) DO NOTHING
    RETURNING 1
    """
)


async def insert_request(session: AsyncSession, **values: object) -> bool:
    """A new pending notification; False when one with this id exists already."""
    result = await run_sql(session, _INSERT_REQUEST, values)
    return result.first() is not None


_TOKEN_ISSUED = text(
    """
    INSERT INTO token_states (token_id, scanner_id, state) VALUES (:token_id, :scanner_id, 'active')
    ON CONFLICT (token_id) DO NOTHING
    """
)
_TOKEN_ENDED = text(
    """
    INSERT INTO token_states (token_id, scanner_id, state) VALUES (:token_id, :scanner_id, :state)
    ON CONFLICT (token_id) DO UPDATE SET state = EXCLUDED.state, updated_at = now()
    WHERE token_states.state = 'active'
    """
)


async def token_issued(session: AsyncSession, token_id: str, scanner_id: str) -> None:
    """Record an issued token; a token already known (even ended) is left as it is."""
    await run_sql(session, _TOKEN_ISSUED, {"token_id": token_id, "scanner_id": scanner_id})


async def token_ended(
    session: AsyncSession, token_id: str, scanner_id: str, state: TokenState
) -> None:
    """An active (or unknown) token is now revoked, expired or redeemed. The first end wins;
    nothing ever goes back to active."""
    await run_sql(
        session,
        _TOKEN_ENDED,
        {"token_id": token_id, "scanner_id": scanner_id, "state": state.value},
    )


async def token_state(session: AsyncSession, token_id: str) -> str | None:
    row = (
        await session.exec(select(TokenStateRow.state).where(TokenStateRow.token_id == token_id))
    ).first()
    return row


async def get(session: AsyncSession, notification_id: str) -> Notification | None:
    return await session.get(Notification, notification_id)


_CANCEL_PENDING_OF_TOKEN = text(
    """
    UPDATE notifications
       SET status = 'cancelled', sealed_code = NULL, finished_at = now(), last_error = :error,
           lease_until = NULL
     WHERE notification_id IN (
           SELECT notification_id FROM notifications
            WHERE token_id = :token_id AND status = 'pending'
            FOR UPDATE SKIP LOCKED)
    RETURNING notification_id, scanner_id, attempts
    """
)


async def cancel_pending_of_token(
    session: AsyncSession, token_id: str, error: str
) -> list[Finished]:
    """Pending notifications of a token that just ended: cancelled now, not at their turn."""
    result = await run_sql(
        session, _CANCEL_PENDING_OF_TOKEN, {"token_id": token_id, "error": error}
    )
    return [Finished(r.notification_id, r.scanner_id, r.attempts) for r in result.all()]


_CLAIM = text(
    """
    UPDATE notifications AS n
       SET status = 'sending', claim_id = gen_random_uuid()::text,
           lease_until = now() + make_interval(secs => :lease)
     WHERE n.notification_id IN (
           SELECT notification_id FROM notifications
            WHERE status = 'pending' AND next_attempt_at <= now()
            ORDER BY next_attempt_at
            LIMIT :limit
            FOR UPDATE SKIP LOCKED)
    RETURNING n.notification_id, n.claim_id, n.token_id, n.scanner_id, n.recipient_email,
              n.scanner_name, n.serial_number, n.sealed_code, n.expires_at, n.attempts,
              (SELECT t.state FROM token_states t WHERE t.token_id = n.token_id) AS token_state
    """
)


async def claim_due(session: AsyncSession, limit: int, lease_seconds: float) -> list[Claimed]:
    """Take the lease of up to `limit` due notifications (none that another replica holds)."""
    result = await run_sql(session, _CLAIM, {"limit": limit, "lease": lease_seconds})
    return [
        Claimed(
            notification_id=r.notification_id,
            claim_id=r.claim_id,
            token_id=r.token_id,
            scanner_id=r.scanner_id,
            recipient_email=r.recipient_email,
            scanner_name=r.scanner_name,
            serial_number=r.serial_number,
            sealed_code=r.sealed_code,
            expires_at=r.expires_at,
            attempts=r.attempts,
            token_state=r.token_state,
        )
        for r in result.all()
    ]


_SECONDS_TO_NEXT_DUE = text(
    "SELECT EXTRACT(EPOCH FROM (min(next_attempt_at) - now())) FROM notifications "
    "WHERE status = 'pending'"
)


async def seconds_to_next_due(session: AsyncSession) -> float | None:
    value = (await run_sql(session, _SECONDS_TO_NEXT_DUE)).scalar()
    return None if value is None else float(value)


_FINISH = text(
    """
    UPDATE notifications
       SET status = :status, attempts = :attempts, sealed_code = NULL, lease_until = NULL,
           claim_id = NULL, finished_at = now(), last_error = COALESCE(:error, last_error),
           sent_at = :sent_at, smtp_message_id = :smtp_message_id
     WHERE notification_id = :notification_id AND claim_id = :claim_id AND status = 'sending'
    RETURNING 1
    """
)


async def finish(
    session: AsyncSession,
    claimed: Claimed,
    *,
    status: Status,
    attempts: int,
    error: str | None = None,
    sent_at: datetime | None = None,
    smtp_message_id: str | None = None,
) -> bool:
    """End a claimed notification (sent, failed or cancelled). False when the lease was lost."""
    result = await run_sql(
        session,
        _FINISH,
        {
            "status": status.value,
            "attempts": attempts,
            "error": error,
            "sent_at": sent_at,
            "smtp_message_id": smtp_message_id,
            "notification_id": claimed.notification_id,
            "claim_id": claimed.claim_id,
        },
    )
    return result.first() is not None


_RETRY_LATER = text(
    """
    UPDATE notifications
       SET status = 'pending', attempts = :attempts,
           next_attempt_at = now() + make_interval(secs => :delay), lease_until = NULL,
           claim_id = NULL, last_error = :error
     WHERE notification_id = :notification_id AND claim_id = :claim_id AND status = 'sending'
    RETURNING 1
    """
)


async def retry_later(
    session: AsyncSession, claimed: Claimed, *, attempts: int, delay_seconds: float, error: str
) -> bool:
    """Back to pending, due in `delay_seconds` (by the database's clock, as claims are)."""
    result = await run_sql(
        session,
        _RETRY_LATER,
        {
            "attempts": attempts,
            "delay": delay_seconds,
            "error": error,
            "notification_id": claimed.notification_id,
            "claim_id": claimed.claim_id,
        },
    )
    return result.first() is not None


_REAP = text(
    """
    UPDATE notifications
       SET status = 'failed', attempts = attempts + 1, sealed_code = NULL, lease_until = NULL,
           claim_id = NULL, finished_at = now(), last_error = :error
     WHERE notification_id IN (
           SELECT notification_id FROM notifications
            WHERE status = 'sending' AND lease_until < now()
              AND NOT (claim_id = ANY(CAST(:mine AS text[])))
            ORDER BY lease_until
            LIMIT :limit
            FOR UPDATE SKIP LOCKED)
    RETURNING notification_id, scanner_id, attempts
    """
)


async def reap_expired_leases(
    session: AsyncSession, *, mine: Sequence[str], error: str, limit: int = 100
) -> list[Finished]:
    """Notifications whose sender died mid-send: failed, never sent again (at most once).
    `mine` are the claims this process still works on: never reaped from under it."""
    result = await run_sql(session, _REAP, {"mine": list(mine), "error": error, "limit": limit})
    return [Finished(r.notification_id, r.scanner_id, r.attempts) for r in result.all()]
