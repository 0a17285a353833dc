"""Pure decisions of the notifier: no I/O, no clock, no randomness of its own.

What a notification is (`EmailRequest`, `Notification`, `Claimed`), when its code may still be
emailed (`code_is_active`), and what an SMTP attempt's result means for it (`after_attempt`:
sent, retried later, or ended).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from scanner_auth_shared.logs import redact

SOURCE = "scanner-auth/notifier"

NO_LONGER_ACTIVE = "the code is no longer active"
OUTCOME_UNKNOWN = "delivery outcome unknown after a crash; not resent to avoid a duplicate"
LOST_AFTER_DATA = (
    "the connection to the mail relay was lost after the message was handed over; "
    "outcome unknown, not resent to avoid a duplicate"
)
SEAL_BROKEN = "the sealed code cannot be opened with this SEALING_KEY"
SEAL_MISSING = "the sealed code is missing"
RETRIES_EXHAUSTED = "the code expires before the next attempt"
TOO_SLOW = "the delivery took too long and was abandoned"
NO_ANSWER = (
    "the mail relay did not finish in time; outcome unknown, not resent to avoid a duplicate"
)

_ERROR_MAX = 500


class TokenState(StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"
    REDEEMED = "redeemed"


class Status(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"


# ------------------------------------------------------------------------ notifications


@dataclass(frozen=True, slots=True)
class EmailRequest:
    """What a TokenEmailRequested asks for. `sealed_code` is the code as the issuer sealed it:
    never opened at rest."""

    notification_id: str
    token_id: str
    scanner_id: str
    org_id: str
    recipient_user_id: str
    recipient_email: str
    requested_by: str
    scanner_name: str
    serial_number: str
    sealed_code: str
    expires_at: datetime

    def __repr__(self) -> str:
        return f"EmailRequest(notification_id={self.notification_id!r})"


@dataclass(frozen=True, slots=True)
class Notification:
    """One requested email and where it stands. `sealed_code` is cleared once it is finished."""

    notification_id: str
    token_id: str
    scanner_id: str
    recipient_email: str
    status: Status
    attempts: int
    sealed_code: str | None
    expires_at: datetime
    next_attempt_at: datetime
    claim_id: str | None
    lease_until: datetime | None
    last_error: str | None
    smtp_message_id: str | None
    sent_at: datetime | None

    def __repr__(self) -> str:
        return f"Notification({self.notification_id!r}, {self.status}, {self.attempts})"


@dataclass(frozen=True, slots=True)
class Claimed:
    """A notification this process holds the lease of (status `sending`), with the state of its
    token when it was claimed (None: never heard of)."""

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
    token_state: TokenState | None
    last_error: str | None = None

    def __repr__(self) -> str:  # the sealed code stays out of reprs all the same
        return f"Claimed(notification_id={self.notification_id!r}, attempts={self.attempts})"


@dataclass(frozen=True, slots=True)
class Finished:
    """A notification ended without its sender (cancelled with its token, or reaped)."""

    notification_id: str
    scanner_id: str
    attempts: int


@dataclass(frozen=True, slots=True)
class CodeEmail:
    """What one email says. `code` is the opened code: it lives only in memory."""

    notification_id: str
    recipient_email: str
    scanner_name: str
    serial_number: str
    code: str
    expires_at: datetime

    def __repr__(self) -> str:  # never the code, whoever prints this
        return f"CodeEmail(notification_id={self.notification_id!r})"


class InvalidRecipient(ValueError):
    """The recipient address cannot be put in a To header."""


def message_id(notification_id: str) -> str:
    """The Message-ID of a notification's email: the same on every attempt, so that a receiving
    system can recognise a copy."""
    safe = re.sub(r"[^A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]", "-", notification_id)
    return f"<{safe}@scanner-auth.myscanner>"


def code_is_active(state: str | None, expires_at: datetime, now: datetime) -> bool:
    """Whether the code may still be emailed. A token we have heard nothing about yet is
    presumed active (its TokenIssued may simply not have arrived); its expiry still counts."""
    if state is not None and state != TokenState.ACTIVE:
        return False
    return now < expires_at


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retries of transient failures: `base` seconds, doubling, at most `maximum`."""

    base: float
    maximum: float


def backoff_seconds(attempts: int, *, base: float, maximum: float, jitter: float) -> float:
    """Delay before the next attempt after `attempts` (>= 1) attempts failed transiently:
    min(maximum, base * 2^(attempts - 1)) * jitter, with jitter drawn from [0.5, 1.5]."""
    exponent = min(max(attempts - 1, 0), 62)
    return min(maximum, base * 2.0**exponent) * jitter


def retry_delay(
    *,
    attempts: int,
    now: datetime,
    expires_at: datetime,
    base: float,
    maximum: float,
    jitter: float,
) -> float | None:
    """Seconds until the next attempt, or None when the code would have expired by then."""
    delay = backoff_seconds(attempts, base=base, maximum=maximum, jitter=jitter)
    return delay if now + timedelta(seconds=delay) < expires_at else None


def describe_remaining(delta: timedelta) -> str:
    """`2 days 5 hours`, `3 hours 20 minutes`, `14 minutes`, `less than a minute`."""
    seconds = int(delta.total_seconds())
    if seconds < 60:
        return "less than a minute"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60

    def unit(n: int, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else 's'}"

    if days:
        return unit(days, "day") + (f" {unit(hours, 'hour')}" if hours else "")
    if hours:
        return unit(hours, "hour") + (f" {unit(minutes, 'minute')}" if minutes else "")
    return unit(minutes, "minute")


def display_code(code: str) -> str:
    """The code as a person reads it, `XXXX-XXXX-XXXX`, however it was sealed."""
    flat = "".join(ch for ch in code.upper() if ch.isalnum())
    if len(flat) != 12:
        return code.strip()
    return f"{flat[:4]}-{flat[4:8]}-{flat[8:]}"


def code_groups(code: str) -> list[str]:
    """`YD20-66YF-H255` as the groups a person reads: [`YD20`, `66YF`, `H255`]."""
    flat = "".join(ch for ch in code.upper() if ch.isalnum())
    return [flat[i : i + 4] for i in range(0, len(flat), 4)]


def one_line(value: str, limit: int = 200) -> str:
    """A header-safe, single-line version of a display value (a scanner name, say)."""
    return " ".join(value.split())[:limit]


def safe_error(text: str) -> str:
    """An error text fit for an event and a log line: one line, bounded, and with anything
    shaped like a code or a credential removed (a second line of defence)."""
    return redact(" ".join(text.split()))[:_ERROR_MAX]


# ------------------------------------------------------------------------ delivery results


@dataclass(frozen=True, slots=True)
class Delivered:
    """The relay answered 250 to the message."""


@dataclass(frozen=True, slots=True)
class TransientFailure:
    """Worth another attempt later (4xx, connection refused or lost, timeout, relay setup)."""

    error: str


@dataclass(frozen=True, slots=True)
class PermanentFailure:
    """Will never succeed (5xx to the recipient or to the message, an unusable address)."""

    error: str


@dataclass(frozen=True, slots=True)
class OutcomeUnknown:
    """The message was on its way when the connection died: the relay may have it. Resending
    could deliver it twice, so it is not resent (at most once)."""

    error: str


SendResult = Delivered | TransientFailure | PermanentFailure | OutcomeUnknown


def is_permanent_reply(code: int) -> bool:
    return 500 <= code <= 599


# ------------------------------------------------------------------------ what a result means


@dataclass(frozen=True, slots=True)
class RetryLater:
    """Back to pending, due again in `delay_seconds`."""

    delay_seconds: float
    error: str


@dataclass(frozen=True, slots=True)
class Ended:
    """The notification is over without an email: failed or cancelled. `kind` is the failure's
    metric label (permanent, expired, unknown, seal), None for a cancellation."""

    status: Status
    permanent: bool
    error: str
    kind: str | None = None


CANCELLED = Ended(Status.CANCELLED, permanent=True, error=NO_LONGER_ACTIVE)
SEAL_WONT_OPEN = Ended(Status.FAILED, permanent=True, error=SEAL_BROKEN, kind="seal")
NO_SEAL = Ended(Status.FAILED, permanent=True, error=SEAL_MISSING, kind="seal")
REAPED = Ended(Status.FAILED, permanent=False, error=OUTCOME_UNKNOWN, kind="unknown")

Outcome = Delivered | RetryLater | Ended


def not_sendable(
    state: str | None,
    expires_at: datetime,
    now: datetime,
    *,
    attempts: int,
    last_error: str | None = None,
) -> Ended | None:
    """Why a notification whose turn has come may not be sent (None: it may). A token that
    ended: cancelled. A code past its expiry: cancelled, or, when attempts failed before, the
    retries ran out (as when the next retry would fall after the expiry)."""
    if code_is_active(state, expires_at, now):
        return None
    if attempts and (state is None or state == TokenState.ACTIVE):
        error = f"{last_error}; {RETRIES_EXHAUSTED}" if last_error else RETRIES_EXHAUSTED
        return Ended(Status.FAILED, permanent=False, error=safe_error(error), kind="expired")
    return CANCELLED


def unusable_address(error: str) -> Ended:
    return Ended(Status.FAILED, permanent=True, error=safe_error(error), kind="permanent")


def after_attempt(
    result: SendResult,
    *,
    attempts: int,
    now: datetime,
    expires_at: datetime,
    backoff: Backoff,
    jitter: float,
) -> Outcome:
    """What an SMTP attempt (the `attempts`-th) means: sent; a transient failure retried after
    a backoff unless the code expires first; a permanent failure or an unknown outcome ended
    (an unknown outcome is never resent: the relay may have the message)."""
    if isinstance(result, Delivered):
        return result
    if isinstance(result, OutcomeUnknown):
        return Ended(Status.FAILED, permanent=False, error=result.error, kind="unknown")
    error = safe_error(result.error)
    if isinstance(result, PermanentFailure):
        return Ended(Status.FAILED, permanent=True, error=error, kind="permanent")
    delay = retry_delay(
        attempts=attempts,
        now=now,
        expires_at=expires_at,
        base=backoff.base,
        maximum=backoff.maximum,
        jitter=jitter,
    )
    if delay is None:
        exhausted = safe_error(f"{result.error}; {RETRIES_EXHAUSTED}")
        return Ended(Status.FAILED, permanent=False, error=exhausted, kind="expired")
    return RetryLater(delay, error)
