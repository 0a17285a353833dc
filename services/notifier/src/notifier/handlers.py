"""The notifier's use cases: record a request, follow a token's life, deliver one email.

Each use case loads what it needs, decides (domain), and commits the state change together
with the event it implies (outbox) in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from email.message import EmailMessage
from typing import Protocol, TypeVar

from sqlmodel.ext.asyncio.session import AsyncSession

from scanner_auth_shared.crypto import SealBroken, SecretBox, sealed_code_context
from scanner_auth_shared.db import Database, is_infrastructure_error
from scanner_auth_shared.events import (
    NOTIFICATIONS_TOPIC,
    CloudEvent,
    EventData,
    NotificationFailed,
    NotificationSent,
    ScannerAuthorised,
    TokenEmailRequested,
    TokenExpired,
    TokenIssued,
    TokenRevoked,
    new_event,
    utcnow,
)
from scanner_auth_shared.outbox import enqueue, first_time

from . import domain, metrics
from .adapters import repository as repo
from .adapters.email import CodeEmail, EmailRenderer, InvalidRecipient
from .domain import (
    Delivered,
    OutcomeUnknown,
    PermanentFailure,
    SendResult,
    Status,
    TokenState,
    TransientFailure,
)

log = logging.getLogger("scanner_auth.notifier")

REQUESTS_CONSUMER = "notifier.email-requests"
TOKENS_CONSUMER = "notifier.token-states"

T = TypeVar("T")


class Mailer(Protocol):
    """The SMTP relay, as the use cases see it."""

    async def send(self, message: EmailMessage) -> SendResult: ...


class Notifier:
    def __init__(
        self,
        database: Database,
        mailer: Mailer,
        renderer: EmailRenderer,
        sealing_key: bytes,
        *,
        retry_base_seconds: float,
        retry_max_seconds: float,
        send_deadline_seconds: float,
        clock: Callable[[], datetime] = utcnow,
        jitter: Callable[[], float] = lambda: random.uniform(0.5, 1.5),
    ) -> None:
        self.database = database
        self.mailer = mailer
        self.renderer = renderer
        self._box = SecretBox(sealing_key)
        self.retry_base_seconds = retry_base_seconds
        self.retry_max_seconds = retry_max_seconds
        self.send_deadline_seconds = send_deadline_seconds
        self.clock = clock
        self.jitter = jitter

    def __repr__(self) -> str:
        return "Notifier()"

    # ------------------------------------------------------------------ consumers

    async def record_email_request(self, event: CloudEvent, data: EventData) -> None:
        """A TokenEmailRequested: a pending notification, once per notification id. Never
        sends: the sender does, so that a redelivered request only meets the existing row."""
        assert isinstance(data, TokenEmailRequested)
        async with self.database.transaction() as session:
            if not await first_time(session, REQUESTS_CONSUMER, event.id):
                metrics.REQUESTS.labels("duplicate").inc()
                return
            created = await repo.insert_request(
                session,
                notification_id=data.notification_id,
                token_id=data.token_id,
                scanner_id=data.scanner_id,
                org_id=data.org_id,
                recipient_user_id=data.recipient_user_id,
                recipient_email=data.recipient_email,
                requested_by=data.requested_by,
                scanner_name=data.scanner_name,
                serial_number=data.serial_number,
                sealed_code=data.sealed_code,
                expires_at=data.expires_at,
            )
        metrics.REQUESTS.labels("recorded" if created else "duplicate").inc()
        log.info(
            "email requested" if created else "email request already known",
            extra={"notification_id": data.notification_id, "token_id": data.token_id},
        )

    async def apply_token_event(self, event: CloudEvent, data: EventData) -> None:
        """Follow the token's life; pending emails of a token that ended are cancelled now."""
        async with self.database.transaction() as session:
            if not await first_time(session, TOKENS_CONSUMER, event.id):
                return
            if isinstance(data, TokenIssued):
                await repo.token_issued(session, data.token_id, data.scanner_id)
                return
            if isinstance(data, TokenRevoked):
                token_id, state = data.token_id, TokenState.REVOKED
            elif isinstance(data, TokenExpired):
                token_id, state = data.token_id, TokenState.EXPIRED
            elif isinstance(data, ScannerAuthorised):
                token_id, state = data.token_id, TokenState.REDEEMED
            else:
                return
            await repo.token_ended(session, token_id, data.scanner_id, state)
            cancelled = await repo.cancel_pending_of_token(
                session, token_id, domain.NO_LONGER_ACTIVE
            )
            for row in cancelled:
                await _failed_event(
                    session,
                    row.notification_id,
                    row.scanner_id,
                    permanent=True,
                    attempts=row.attempts,
                    error=domain.NO_LONGER_ACTIVE,
                )
        for row in cancelled:
            metrics.EMAILS.labels("cancelled").inc()
            log.info(
                "email cancelled: the code is no longer active",
                extra={"notification_id": row.notification_id, "token_state": state.value},
            )

    # ------------------------------------------------------------------ the sender's work

    async def claim(self, limit: int, lease_seconds: float) -> list[repo.Claimed]:
        async with self.database.transaction() as session:
            return await repo.claim_due(session, limit, lease_seconds)

    async def seconds_to_next_due(self) -> float | None:
        async with self.database.session() as session:
            return await repo.seconds_to_next_due(session)

    async def reap(self, mine: Sequence[str]) -> int:
        """Notifications left `sending` by a process that died: failed, never resent."""
        async with self.database.transaction() as session:
            reaped = await repo.reap_expired_leases(
                session, mine=mine, error=domain.OUTCOME_UNKNOWN
            )
            for row in reaped:
                await _failed_event(
                    session,
                    row.notification_id,
                    row.scanner_id,
                    permanent=False,
                    attempts=row.attempts,
                    error=domain.OUTCOME_UNKNOWN,
                )
        for row in reaped:
            metrics.EMAILS.labels("failed").inc()
            metrics.FAILURES.labels("unknown").inc()
            log.error(
                "email outcome unknown after a crash; not resent",
                extra={"notification_id": row.notification_id},
            )
        return len(reaped)

    async def deliver(self, claimed: repo.Claimed) -> None:
        """One attempt at one claimed notification, and its outcome recorded at once."""
        now = self.clock()
        if not domain.code_is_active(claimed.token_state, claimed.expires_at, now):
            await self._end(
                claimed,
                Status.CANCELLED,
                attempts=claimed.attempts,
                error=domain.NO_LONGER_ACTIVE,
                permanent=True,
            )
            return
        if claimed.sealed_code is None:  # cannot happen for a pending row; fail closed
            await self._end(
                claimed,
                Status.FAILED,
                attempts=claimed.attempts,
                error="the sealed code is missing",
                permanent=True,
                kind="seal",
            )
            return
        try:
            code = self._box.open(claimed.sealed_code, sealed_code_context(claimed.token_id))
        except SealBroken:
            await self._end(
                claimed,
                Status.FAILED,
                attempts=claimed.attempts,
                error=domain.SEAL_BROKEN,
                permanent=True,
                kind="seal",
            )
            return
        try:
            message = self.renderer.compose(
                CodeEmail(
                    notification_id=claimed.notification_id,
                    recipient_email=claimed.recipient_email,
                    scanner_name=claimed.scanner_name,
                    serial_number=claimed.serial_number,
                    code=code,
                    expires_at=claimed.expires_at,
                ),
                now,
            )
        except InvalidRecipient as exc:
            await self._end(
                claimed,
                Status.FAILED,
                attempts=claimed.attempts,
                error=str(exc),
                permanent=True,
                kind="permanent",
            )
            return

        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.send_deadline_seconds):
                result = await self.mailer.send(message)
        except TimeoutError:
            result = TransientFailure("the delivery took too long and was abandoned")
        elapsed = time.perf_counter() - started
        attempts = claimed.attempts + 1

        if isinstance(result, Delivered):
            metrics.SEND_SECONDS.labels("delivered").observe(elapsed)
            await self._sent(claimed, attempts, str(message["Message-ID"]))
        elif isinstance(result, OutcomeUnknown):
            metrics.SEND_SECONDS.labels("unknown").observe(elapsed)
            await self._end(
                claimed,
                Status.FAILED,
                attempts=attempts,
                error=result.error,
                permanent=False,
                kind="unknown",
            )
        elif isinstance(result, PermanentFailure):
            metrics.SEND_SECONDS.labels("permanent").observe(elapsed)
            await self._end(
                claimed,
                Status.FAILED,
                attempts=attempts,
                error=domain.safe_error(result.error),
                permanent=True,
                kind="permanent",
            )
        else:
            metrics.SEND_SECONDS.labels("transient").observe(elapsed)
            await self._transient(claimed, attempts, domain.safe_error(result.error))

    async def _sent(self, claimed: repo.Claimed, attempts: int, message_id: str) -> None:
        sent_at = self.clock()

        async def write(session: AsyncSession) -> bool:
            if not await repo.finish(
                session,
                claimed,
                status=Status.SENT,
                attempts=attempts,
                sent_at=sent_at,
                smtp_message_id=message_id,
            ):
                return False
            event = new_event(
                NotificationSent(
                    notification_id=claimed.notification_id,
                    sent_at=sent_at,
                    smtp_message_id=message_id,
                ),
                source=domain.SOURCE,
                subject=claimed.scanner_id,
            )
            await enqueue(session, event, topic=NOTIFICATIONS_TOPIC)
            return True

        recorded = await self._persist(write)
        metrics.EMAILS.labels("sent").inc()
        if recorded:
            log.info(
                "email sent",
                extra={"notification_id": claimed.notification_id, "attempts": attempts},
            )
        else:
            log.error(
                "email sent, but its lease was lost before the outcome was recorded",
                extra={"notification_id": claimed.notification_id},
            )

    async def _transient(self, claimed: repo.Claimed, attempts: int, error: str) -> None:
        delay = domain.retry_delay(
            attempts=attempts,
            now=self.clock(),
            expires_at=claimed.expires_at,
            base=self.retry_base_seconds,
            maximum=self.retry_max_seconds,
            jitter=self.jitter(),
        )
        if delay is None:
            await self._end(
                claimed,
                Status.FAILED,
                attempts=attempts,
                error=domain.safe_error(f"{error}; {domain.RETRIES_EXHAUSTED}"),
                permanent=False,
                kind="expired",
            )
            return

        async def write(session: AsyncSession) -> bool:
            return await repo.retry_later(
                session, claimed, attempts=attempts, delay_seconds=delay, error=error
            )

        await self._persist(write)
        metrics.RETRIES.inc()
        log.warning(
            "email delivery failed, will retry",
            extra={
                "notification_id": claimed.notification_id,
                "attempts": attempts,
                "retry_in_seconds": round(delay, 3),
                "error": error,
            },
        )

    async def _end(
        self,
        claimed: repo.Claimed,
        status: Status,
        *,
        attempts: int,
        error: str,
        permanent: bool,
        kind: str | None = None,
    ) -> None:
        async def write(session: AsyncSession) -> bool:
            if not await repo.finish(
                session, claimed, status=status, attempts=attempts, error=error
            ):
                return False
            await _failed_event(
                session,
                claimed.notification_id,
                claimed.scanner_id,
                permanent=permanent,
                attempts=attempts,
                error=error,
            )
            return True

        recorded = await self._persist(write)
        if not recorded:
            log.error(
                "notification outcome not recorded: its lease was lost",
                extra={"notification_id": claimed.notification_id},
            )
            return
        metrics.EMAILS.labels(status.value).inc()
        if kind is not None:
            metrics.FAILURES.labels(kind).inc()
        log.log(
            logging.INFO if status is Status.CANCELLED else logging.WARNING,
            "email cancelled" if status is Status.CANCELLED else "email failed",
            extra={
                "notification_id": claimed.notification_id,
                "attempts": attempts,
                "permanent": permanent,
                "error": error,
            },
        )

    async def _persist(self, write: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run `write` in a transaction, retrying while the database is unreachable: an outcome
        must be recorded, or the notification would end as `outcome unknown`."""
        backoff = 0.1
        while True:
            try:
                async with self.database.transaction() as session:
                    return await write(session)
            except Exception as exc:
                if not is_infrastructure_error(exc):
                    raise
                log.warning(
                    "cannot record an email outcome yet; retrying",
                    extra={"error": type(exc).__name__},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)


async def _failed_event(
    session: AsyncSession,
    notification_id: str,
    scanner_id: str,
    *,
    permanent: bool,
    attempts: int,
    error: str,
) -> None:
    event = new_event(
        NotificationFailed(
            notification_id=notification_id, permanent=permanent, attempts=attempts, error=error
        ),
        source=domain.SOURCE,
        subject=scanner_id,
    )
    await enqueue(session, event, topic=NOTIFICATIONS_TOPIC)
