"""Pure decisions of the notifier: no I/O, no clock, no randomness of its own."""

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
RETRIES_EXHAUSTED = "the code expires before the next attempt"

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
