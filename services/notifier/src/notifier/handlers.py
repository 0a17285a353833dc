"""The notifier's use cases: record a request, follow a token's life, and the sender's work
(reap dead leases, claim due notifications, wait for their turn, deliver one).

Each loads what it needs through the unit of work's repositories, decides (domain), and commits
the state change with the event it implies (outbox) in one transaction. The consumers' handlers
(`on_*`) run inside the consumer runner's unit of work, which commits.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from typing import TypeVar

from scanner_auth_shared.crypto import SealBroken, SecretBox, sealed_code_context
from scanner_auth_shared.events import (
    CloudEvent,
    NotificationFailed,
    NotificationSent,
    ScannerAuthorised,
    TokenEmailRequested,
    TokenExpired,
    TokenIssued,
    TokenRevoked,
    utcnow,
)
from scanner_auth_shared.retry import through_outages

from . import domain, metrics
from .adapters.ports import Composer, Mailer, NotifierUnitOfWork, ReadBarrier
from .domain import (
    Claimed,
    CodeEmail,
    Delivered,
    EmailRequest,
    Ended,
    InvalidRecipient,
    OutcomeUnknown,
    PermanentFailure,
    RetryLater,
    SendResult,
    Status,
    TokenState,
)

log = logging.getLogger("scanner_auth.notifier")

T = TypeVar("T")


def _jitter() -> float:
    return random.uniform(0.5, 1.5)


@dataclass(frozen=True)
class DeliveryPolicy:
    backoff: domain.Backoff
    # The whole SMTP exchange of one attempt is bounded by this (the relay's own deadline,
    # plus a margin): well inside the lease, so a live send is never taken for a dead one.
    send_deadline_seconds: float
    # How long a claimed notification waits for the token-state consumer (the read barrier),
    # and how soon it is due again when that did not happen.
    barrier_timeout_seconds: float
    release_seconds: float


@dataclass(frozen=True)
class Delivery:
    """What the sender's use cases work with."""

    unit_of_work: Callable[[], NotifierUnitOfWork]
    mailer: Mailer
    composer: Composer
    box: SecretBox
    barrier: ReadBarrier
    policy: DeliveryPolicy
    clock: Callable[[], datetime] = utcnow
    jitter: Callable[[], float] = _jitter

    def __repr__(self) -> str:  # the sealing key stays out of reprs
        return "Delivery()"


# ------------------------------------------------------------------------------ consumers


async def on_token_email_requested(
    uow: NotifierUnitOfWork, event: CloudEvent, data: TokenEmailRequested
) -> None:
    """A pending notification, once per notification id. Never sends: the sender does, so a
    redelivered request (or the same request in a new envelope) only meets the existing row."""
    created = await uow.notifications.add(_request(data))
    metrics.REQUESTS.labels("recorded" if created else "duplicate").inc()
    log.info(
        "email requested" if created else "email request already known",
        extra={"notification_id": data.notification_id, "token_id": data.token_id},
    )


def _request(data: TokenEmailRequested) -> EmailRequest:
    return EmailRequest(
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


async def on_token_issued(uow: NotifierUnitOfWork, event: CloudEvent, data: TokenIssued) -> None:
    await uow.tokens.issued(data.token_id, data.scanner_id)


async def on_token_revoked(uow: NotifierUnitOfWork, event: CloudEvent, data: TokenRevoked) -> None:
    await end_token(uow, data.token_id, data.scanner_id, TokenState.REVOKED)


async def on_token_expired(uow: NotifierUnitOfWork, event: CloudEvent, data: TokenExpired) -> None:
    await end_token(uow, data.token_id, data.scanner_id, TokenState.EXPIRED)


async def on_scanner_authorised(
    uow: NotifierUnitOfWork, event: CloudEvent, data: ScannerAuthorised
) -> None:
    await end_token(uow, data.token_id, data.scanner_id, TokenState.REDEEMED)


async def end_token(
    uow: NotifierUnitOfWork, token_id: str, scanner_id: str, state: TokenState
) -> None:
    """The token ended (the first end wins): its emails still pending (waiting for a retry, or
    for their turn) are cancelled now, each with a NotificationFailed."""
    await uow.tokens.ended(token_id, scanner_id, state)
    for row in await uow.notifications.cancel_pending_of_token(token_id, domain.NO_LONGER_ACTIVE):
        _emit_failed(uow, row.notification_id, row.scanner_id, domain.CANCELLED, row.attempts)
        metrics.EMAILS.labels("cancelled").inc()
        log.info(
            "email cancelled: the code is no longer active",
            extra={"notification_id": row.notification_id, "token_state": state.value},
        )


# ------------------------------------------------------------------------------ the sender


async def claim_due(d: Delivery, limit: int, lease_seconds: float) -> list[Claimed]:
    """The lease of up to `limit` due notifications (none that another replica holds)."""
    async with d.unit_of_work() as uow:
        claimed = await uow.notifications.claim_due(limit, lease_seconds)
        await uow.commit()
    return claimed


async def seconds_to_next_due(d: Delivery) -> float | None:
    async with d.unit_of_work() as uow:
        return await uow.notifications.seconds_to_next_due()


async def reap_dead_leases(d: Delivery, mine: Sequence[str]) -> int:
    """Notifications left `sending` by a process that died: failed (outcome unknown), never
    resent. `mine`: this process's claims under way, never reaped from under it."""
    async with d.unit_of_work() as uow:
        reaped = await uow.notifications.reap_expired_leases(
            mine=mine, error=domain.OUTCOME_UNKNOWN
        )
        for row in reaped:
            _emit_failed(uow, row.notification_id, row.scanner_id, domain.REAPED, row.attempts)
        await uow.commit()
    for row in reaped:
        _count(domain.REAPED)
        log.error(
            "email outcome unknown after a crash; not resent",
            extra={"notification_id": row.notification_id},
        )
    return len(reaped)


async def wait_for_turn(d: Delivery, claimed: Claimed) -> bool:
    """Whether a claimed notification may be sent now. Its turn has come once every token event
    of its scanner published before the claim has been applied (the read barrier); then its code
    must still be active, or it ends (`domain.not_sendable`). A barrier not reached in time:
    released, due again shortly, not an attempt. A code already known to be over needs no
    barrier: nothing brings a token back."""
    ended = _not_sendable(d, claimed, claimed.token_state)
    if ended is None:
        if not await _barrier(d, claimed):
            await _release(d, claimed)
            return False
        ended = _not_sendable(d, claimed, await _token_state(d, claimed.token_id))
    if ended is None:
        return True
    await _end(d, claimed, ended, attempts=claimed.attempts)
    return False


async def deliver(d: Delivery, claimed: Claimed) -> None:
    """One SMTP attempt at a notification whose turn has come, its outcome recorded at once."""
    message = _compose(d, claimed)
    if isinstance(message, Ended):
        await _end(d, claimed, message, attempts=claimed.attempts)
        return
    result = await _attempt(d, message)
    attempts = claimed.attempts + 1
    outcome = domain.after_attempt(
        result,
        attempts=attempts,
        now=d.clock(),
        expires_at=claimed.expires_at,
        backoff=d.policy.backoff,
        jitter=d.jitter(),
    )
    if isinstance(outcome, Delivered):
        await _sent(d, claimed, attempts, str(message["Message-ID"]))
    elif isinstance(outcome, RetryLater):
        await _retry(d, claimed, attempts, outcome)
    else:
        await _end(d, claimed, outcome, attempts=attempts)


# ------------------------------------------------------------------------------ steps


def _not_sendable(d: Delivery, claimed: Claimed, state: TokenState | None) -> Ended | None:
    c = claimed
    return domain.not_sendable(
        state, c.expires_at, d.clock(), attempts=c.attempts, last_error=c.last_error
    )


async def _barrier(d: Delivery, claimed: Claimed) -> bool:
    started = time.perf_counter()
    try:
        timeout = d.policy.barrier_timeout_seconds
        reached = await d.barrier.wait_caught_up(claimed.scanner_id, timeout)
    except asyncio.CancelledError:  # stopping: give it back now rather than at its lease's end
        await _release_on_stop(d, claimed)
        raise
    elapsed = time.perf_counter() - started
    metrics.BARRIER_SECONDS.labels("reached" if reached else "not_reached").observe(elapsed)
    return reached


def _compose(d: Delivery, claimed: Claimed) -> EmailMessage | Ended:
    """The email, with the code opened from its seal (in memory only), or why there is none."""
    if claimed.sealed_code is None:  # cannot happen for a pending row; fail closed
        return domain.NO_SEAL
    try:
        code = d.box.open(claimed.sealed_code, sealed_code_context(claimed.token_id))
    except SealBroken:
        return domain.SEAL_WONT_OPEN
    mail = CodeEmail(
        notification_id=claimed.notification_id,
        recipient_email=claimed.recipient_email,
        scanner_name=claimed.scanner_name,
        serial_number=claimed.serial_number,
        code=code,
        expires_at=claimed.expires_at,
    )
    try:
        return d.composer.compose(mail, d.clock())
    except InvalidRecipient as exc:
        return domain.unusable_address(str(exc))


async def _attempt(d: Delivery, message: EmailMessage) -> SendResult:
    """The relay bounds its own exchange (and tells a cut before the message from one after);
    this deadline is the safety net if it did not: then nobody knows, so it is not resent."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(d.policy.send_deadline_seconds):
            result = await d.mailer.send(message)
    except TimeoutError:
        result = OutcomeUnknown(domain.NO_ANSWER)
    metrics.SEND_SECONDS.labels(_result_label(result)).observe(time.perf_counter() - started)
    return result


def _result_label(result: SendResult) -> str:
    if isinstance(result, Delivered):
        return "delivered"
    if isinstance(result, OutcomeUnknown):
        return "unknown"
    return "permanent" if isinstance(result, PermanentFailure) else "transient"


async def _sent(d: Delivery, claimed: Claimed, attempts: int, message_id: str) -> None:
    sent_at = d.clock()

    async def change(uow: NotifierUnitOfWork) -> bool:
        if not await uow.notifications.finish(
            claimed, Status.SENT, attempts=attempts, sent_at=sent_at, smtp_message_id=message_id
        ):
            return False
        sent = NotificationSent(
            notification_id=claimed.notification_id, sent_at=sent_at, smtp_message_id=message_id
        )
        uow.emit(sent, subject=claimed.scanner_id)
        return True

    recorded = await _persist(d, "a sent email", change)
    metrics.EMAILS.labels("sent").inc()
    extra = {"notification_id": claimed.notification_id, "attempts": attempts}
    if recorded:
        log.info("email sent", extra=extra)
    else:
        log.error("email sent, but its lease was lost before the outcome was recorded", extra=extra)


async def _retry(d: Delivery, claimed: Claimed, attempts: int, retry: RetryLater) -> None:
    async def change(uow: NotifierUnitOfWork) -> bool:
        return await uow.notifications.retry_later(
            claimed, attempts=attempts, delay_seconds=retry.delay_seconds, error=retry.error
        )

    await _persist(d, "an email to retry", change)
    metrics.RETRIES.inc()
    log.warning(
        "email delivery failed, will retry",
        extra={
            "notification_id": claimed.notification_id,
            "attempts": attempts,
            "retry_in_seconds": round(retry.delay_seconds, 3),
            "error": retry.error,
        },
    )


async def _end(d: Delivery, claimed: Claimed, ended: Ended, *, attempts: int) -> None:
    async def change(uow: NotifierUnitOfWork) -> bool:
        if not await uow.notifications.finish(
            claimed, ended.status, attempts=attempts, error=ended.error
        ):
            return False
        _emit_failed(uow, claimed.notification_id, claimed.scanner_id, ended, attempts)
        return True

    extra = {"notification_id": claimed.notification_id, "attempts": attempts}
    if not await _persist(d, "an email's end", change):
        log.error("notification outcome not recorded: its lease was lost", extra=extra)
        return
    _count(ended)
    cancelled = ended.status is Status.CANCELLED
    log.log(
        logging.INFO if cancelled else logging.WARNING,
        "email cancelled" if cancelled else "email failed",
        extra={**extra, "permanent": ended.permanent, "error": ended.error},
    )


async def _release(d: Delivery, claimed: Claimed, *, tries: int | None = None) -> None:
    """Back to pending without an attempt: the token states have not caught up yet."""

    async def change(uow: NotifierUnitOfWork) -> bool:
        return await uow.notifications.release(claimed, delay_seconds=d.policy.release_seconds)

    if await _persist(d, "an email to send later", change, tries=tries):
        metrics.DEFERRED.inc()
        log.info(
            "email deferred: the token states have not caught up yet",
            extra={"notification_id": claimed.notification_id},
        )


async def _release_on_stop(d: Delivery, claimed: Claimed) -> None:
    """A few tries only: failing that, the lease runs out and the email ends as unknown."""
    try:
        await _release(d, claimed, tries=3)
    except Exception as exc:
        log.warning(
            "could not give an email back on stopping",
            extra={"notification_id": claimed.notification_id, "error": type(exc).__name__},
        )


async def _token_state(d: Delivery, token_id: str) -> TokenState | None:
    async for attempt in through_outages("reading a token's state", maximum=5.0):
        with attempt:
            async with d.unit_of_work() as uow:
                return await uow.tokens.state_of(token_id)
    raise AssertionError("unreachable")


async def _persist(
    d: Delivery,
    what: str,
    change: Callable[[NotifierUnitOfWork], Awaitable[T]],
    *,
    tries: int | None = None,
) -> T:
    """`change` in a unit of work, committed, retried while the database is unreachable (for
    ever unless `tries`): an outcome must be recorded, or the email would end as unknown."""
    async for attempt in through_outages(f"recording {what}", maximum=5.0, attempts=tries):
        with attempt:
            async with d.unit_of_work() as uow:
                done = await change(uow)
                await uow.commit()
            return done
    raise AssertionError("unreachable")


def _emit_failed(
    uow: NotifierUnitOfWork, notification_id: str, scanner_id: str, ended: Ended, attempts: int
) -> None:
    failed = NotificationFailed(
        notification_id=notification_id,
        permanent=ended.permanent,
        attempts=attempts,
        error=ended.error,
    )
    uow.emit(failed, subject=scanner_id)


def _count(ended: Ended) -> None:
    metrics.EMAILS.labels(ended.status.value).inc()
    if ended.kind is not None:
        metrics.FAILURES.labels(ended.kind).inc()


__all__ = [
    "Delivery",
    "DeliveryPolicy",
    "claim_due",
    "deliver",
    "end_token",
    "on_scanner_authorised",
    "on_token_email_requested",
    "on_token_expired",
    "on_token_issued",
    "on_token_revoked",
    "reap_dead_leases",
    "seconds_to_next_due",
    "wait_for_turn",
]
