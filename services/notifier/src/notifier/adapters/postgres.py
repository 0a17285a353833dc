"""The notifier's repositories over asyncpg, and the unit of work that binds them.

One SQL statement per method (the module-level constants, `$n` parameters; every one is
prepared against the migrated schema by tests/test_schema.py). Times are the database's: `now()`
is the transaction's start, so due times and leases never depend on a replica's clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from scanner_auth_shared.postgres import Connection, Database, Record
from scanner_auth_shared.uow import PostgresUnitOfWork

from ..domain import (
    SOURCE,
    Claimed,
    EmailRequest,
    Finished,
    Notification,
    Status,
    TokenState,
)

# Fired by a trigger on every insert into notifications (see the first migration): the
# sender LISTENs on it.
WAKE_CHANNEL = "scanner_auth_notifier"

ADD_REQUEST = """
    INSERT INTO notifications (
        notification_id, token_id, scanner_id, org_id, recipient_user_id, recipient_email,
        requested_by, scanner_name, serial_number, sealed_code, expires_at, status, attempts,
        next_attempt_at, requested_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'pending', 0, now(), now())
    ON CONFLICT (notification_id) DO NOTHING
    RETURNING 1
"""

GET = """
    SELECT notification_id, token_id, scanner_id, recipient_email, status, attempts,
           sealed_code, expires_at, next_attempt_at, claim_id, lease_until, last_error,
           smtp_message_id, sent_at
      FROM notifications WHERE notification_id = $1
"""

CLAIM_DUE = """
    UPDATE notifications AS n
       SET status = 'sending', claim_id = gen_random_uuid()::text,
           lease_until = now() + make_interval(secs => $2::float8)
     WHERE n.notification_id IN (
           SELECT notification_id FROM notifications
            WHERE status = 'pending' AND next_attempt_at <= now()
            ORDER BY next_attempt_at
            LIMIT $1
            FOR UPDATE SKIP LOCKED)
    RETURNING n.notification_id, n.claim_id, n.token_id, n.scanner_id, n.recipient_email,
              n.scanner_name, n.serial_number, n.sealed_code, n.expires_at, n.attempts,
              n.last_error,
              (SELECT t.state FROM token_states t WHERE t.token_id = n.token_id) AS token_state
"""

SECONDS_TO_NEXT_DUE = """
    SELECT EXTRACT(EPOCH FROM (min(next_attempt_at) - now()))::float8
      FROM notifications WHERE status = 'pending'
"""

FINISH = """
    UPDATE notifications
       SET status = $3, attempts = $4, sealed_code = NULL, lease_until = NULL, claim_id = NULL,
           finished_at = now(), last_error = COALESCE($5, last_error), sent_at = $6,
           smtp_message_id = $7
     WHERE notification_id = $1 AND claim_id = $2 AND status = 'sending'
    RETURNING 1
"""

RETRY_LATER = """
    UPDATE notifications
       SET status = 'pending', attempts = $3,
           next_attempt_at = now() + make_interval(secs => $4::float8), lease_until = NULL,
           claim_id = NULL, last_error = $5
     WHERE notification_id = $1 AND claim_id = $2 AND status = 'sending'
    RETURNING 1
"""

RELEASE = """
    UPDATE notifications
       SET status = 'pending', next_attempt_at = now() + make_interval(secs => $3::float8),
           lease_until = NULL, claim_id = NULL
     WHERE notification_id = $1 AND claim_id = $2 AND status = 'sending'
    RETURNING 1
"""

REAP_EXPIRED_LEASES = """
    UPDATE notifications
       SET status = 'failed', attempts = attempts + 1, sealed_code = NULL, lease_until = NULL,
           claim_id = NULL, finished_at = now(), last_error = $2
     WHERE notification_id IN (
           SELECT notification_id FROM notifications
            WHERE status = 'sending' AND lease_until < now()
              AND NOT (claim_id = ANY($1::text[]))
            ORDER BY lease_until
            LIMIT $3
            FOR UPDATE SKIP LOCKED)
    RETURNING notification_id, scanner_id, attempts
"""

CANCEL_PENDING = """
    UPDATE notifications
       SET status = 'cancelled', sealed_code = NULL, finished_at = now(), last_error = $2,
           lease_until = NULL
     WHERE notification_id IN (
           SELECT notification_id FROM notifications
            WHERE token_id = $1 AND status = 'pending'
            FOR UPDATE SKIP LOCKED)
    RETURNING notification_id, scanner_id, attempts
"""

MARK_ISSUED = """
    INSERT INTO token_states (token_id, scanner_id, state, updated_at)
    VALUES ($1, $2, 'active', now())
    ON CONFLICT (token_id) DO NOTHING
"""

MARK_ENDED = """
    INSERT INTO token_states (token_id, scanner_id, state, updated_at) VALUES ($1, $2, $3, now())
    ON CONFLICT (token_id) DO UPDATE SET state = EXCLUDED.state, updated_at = now()
    WHERE token_states.state = 'active'
"""

READ_STATE = "SELECT state FROM token_states WHERE token_id = $1"


class PostgresNotifications:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def add(self, request: EmailRequest) -> bool:
        r = request
        created = await self.conn.fetchval(
            ADD_REQUEST,
            r.notification_id,
            r.token_id,
            r.scanner_id,
            r.org_id,
            r.recipient_user_id,
            r.recipient_email,
            r.requested_by,
            r.scanner_name,
            r.serial_number,
            r.sealed_code,
            r.expires_at,
        )
        return created is not None

    async def get(self, notification_id: str) -> Notification | None:
        row = await self.conn.fetchrow(GET, notification_id)
        if row is None:
            return None
        return Notification(**{**dict(row), "status": Status(row["status"])})

    async def claim_due(self, limit: int, lease_seconds: float) -> list[Claimed]:
        rows = await self.conn.fetch(CLAIM_DUE, limit, lease_seconds)
        return [_claimed(row) for row in rows]

    async def seconds_to_next_due(self) -> float | None:
        value = await self.conn.fetchval(SECONDS_TO_NEXT_DUE)
        return None if value is None else float(value)

    async def finish(
        self,
        claimed: Claimed,
        status: Status,
        *,
        attempts: int,
        error: str | None = None,
        sent_at: datetime | None = None,
        smtp_message_id: str | None = None,
    ) -> bool:
        done = await self.conn.fetchval(
            FINISH,
            claimed.notification_id,
            claimed.claim_id,
            status.value,
            attempts,
            error,
            sent_at,
            smtp_message_id,
        )
        return done is not None

    async def retry_later(
        self, claimed: Claimed, *, attempts: int, delay_seconds: float, error: str
    ) -> bool:
        done = await self.conn.fetchval(
            RETRY_LATER, claimed.notification_id, claimed.claim_id, attempts, delay_seconds, error
        )
        return done is not None

    async def release(self, claimed: Claimed, *, delay_seconds: float) -> bool:
        done = await self.conn.fetchval(
            RELEASE, claimed.notification_id, claimed.claim_id, delay_seconds
        )
        return done is not None

    async def reap_expired_leases(
        self, *, mine: Sequence[str], error: str, limit: int = 100
    ) -> list[Finished]:
        rows = await self.conn.fetch(REAP_EXPIRED_LEASES, list(mine), error, limit)
        return [_finished(row) for row in rows]

    async def cancel_pending_of_token(self, token_id: str, error: str) -> list[Finished]:
        rows = await self.conn.fetch(CANCEL_PENDING, token_id, error)
        return [_finished(row) for row in rows]


class PostgresTokenStates:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def issued(self, token_id: str, scanner_id: str) -> None:
        await self.conn.execute(MARK_ISSUED, token_id, scanner_id)

    async def ended(self, token_id: str, scanner_id: str, state: TokenState) -> None:
        await self.conn.execute(MARK_ENDED, token_id, scanner_id, state.value)

    async def state_of(self, token_id: str) -> TokenState | None:
        state = await self.conn.fetchval(READ_STATE, token_id)
        return None if state is None else TokenState(state)


class PostgresNotifierUnitOfWork(PostgresUnitOfWork):
    notifications: PostgresNotifications
    tokens: PostgresTokenStates

    def __init__(self, database: Database) -> None:
        super().__init__(database, source=SOURCE)

    def bind(self, conn: Connection) -> None:
        self.notifications = PostgresNotifications(conn)
        self.tokens = PostgresTokenStates(conn)


def _claimed(row: Record) -> Claimed:
    state = row["token_state"]
    return Claimed(
        notification_id=row["notification_id"],
        claim_id=row["claim_id"],
        token_id=row["token_id"],
        scanner_id=row["scanner_id"],
        recipient_email=row["recipient_email"],
        scanner_name=row["scanner_name"],
        serial_number=row["serial_number"],
        sealed_code=row["sealed_code"],
        expires_at=row["expires_at"],
        attempts=row["attempts"],
        token_state=None if state is None else TokenState(state),
        last_error=row["last_error"],
    )


def _finished(row: Record) -> Finished:
    return Finished(row["notification_id"], row["scanner_id"], row["attempts"])
