"""The redeemer's decisions: pure functions of plain values, no I/O.

- what a typed code means (a typo or malformed code is refused before anything is looked up);
- which refusal reason an attempt earns (or none), in the contract's order;
- the throttling arithmetic (consecutive failures per serial, a sliding window per address);
- how a credential stands (current, in its rotation grace, or ended);
- the refusals (`Refusal` subclasses): what the use cases raise, each with a message safe to
  show. Which HTTP status each gets is the api's business.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from scanner_auth_shared.api import Refusal
from scanner_auth_shared.crypto import CodeTypo, MalformedCode, normalise_code

Reason = Literal["invalid_code", "expired", "already_used", "revoked", "serial_mismatch"]
RejectionReason = Literal[
    "invalid_code", "expired", "already_used", "revoked", "serial_mismatch", "rate_limited"
]
TokenStatus = Literal["active", "redeemed", "expired", "revoked"]
CredentialStatus = Literal["active", "rotating", "replaced", "revoked"]
Standing = Literal["current", "grace", "ended", "unknown"]

SERIAL_MAX_LENGTH = 64
CODE_MAX_LENGTH = 64

# ------------------------------------------------------------------------------------ refusals

# The one message of every refused code (unknown, expired, used, revoked, another scanner's):
# a caller learns nothing about which it was. The reason goes to the AuthorisationRejected event.
CODE_NOT_ACCEPTED = "the code was not accepted for this scanner"
CODE_MALFORMED = (
    "the code is malformed: a code is 12 characters of 0-9 and A-Z "
    "(without I, L, O, U), usually written XXXX-XXXX-XXXX"
)
CODE_TYPO = (
    "the code contains a typo: its last character does not match the others; "
    "check the code and enter it again"
)


class RedemptionRefused(Refusal):
    """A redemption attempt that did not authorise the scanner. `outcome`: the label it is
    counted under (scanner_auth_redeemer_redemptions_total)."""

    outcome: str = "refused"


class MalformedRequest(RedemptionRefused):
    """The request or its code is not the shape of one: no attempt, nothing counted against
    the serial number or the address."""

    outcome = "malformed"


class TypoInCode(RedemptionRefused):
    """A well-formed code whose check symbol does not match: a typo, not an attempt."""

    outcome = "typo"

    def __init__(self) -> None:
        super().__init__(CODE_TYPO)


class CodeRefused(RedemptionRefused):
    """The code was not accepted: `reason` says why, for the event only; the message is the
    same for every reason."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(CODE_NOT_ACCEPTED)
        self.reason = reason
        self.outcome = reason


class RateLimited(RedemptionRefused):
    """The serial number or the client address is locked for `retry_after` more seconds."""

    outcome = "rate_limited"

    def __init__(self, retry_after: int) -> None:
        super().__init__("too many failed attempts; try again later")
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(retry_after)}


class NotAuthenticated(Refusal):
    """No credential, a malformed one, or one this service never issued."""

    outcome = "unauthenticated"

    def __init__(self) -> None:
        super().__init__("a valid scanner credential is required")
        self.headers = {"WWW-Authenticate": "Bearer"}


class RotationLimited(Refusal):
    """The scanner rotated its credential `limit` times within the last hour: it may rotate
    again in `retry_after` seconds (each rotation adds a credential, a gate row in every
    replica and an event, and leaves the old credential working for its grace period)."""

    outcome = "rate_limited"

    def __init__(self, retry_after: int) -> None:
        super().__init__("too many credential rotations; try again later")
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(retry_after)}


class CannotRotate(Refusal):
    """A credential this service issued that may no longer rotate (replaced, revoked, already
    rotated out: in its grace period or past it)."""

    outcome = "forbidden"

    def __init__(self) -> None:
        super().__init__("this credential can no longer be rotated")


def flat_code(typed: str) -> str:
    """The 12 symbols a person meant (case, spaces and dashes ignored; O reads as 0, I and L as
    1). Raises MalformedRequest or TypoInCode; neither repeats what was typed."""
    try:
        return normalise_code(typed)
    except CodeTypo:
        raise TypoInCode() from None
    except MalformedCode:
        raise MalformedRequest(CODE_MALFORMED) from None


# ------------------------------------------------------------------------------------ attempts


@dataclass(frozen=True, slots=True)
class TokenView:
    """What the redeemer knows of one token, and of its scanner in the directory."""

    token_id: str
    scanner_id: str
    org_id: str
    code_digest: str
    status: TokenStatus
    expires_at: datetime
    scanner_serial: str | None  # None: the scanner is unknown to the directory view
    scanner_removed: bool


@dataclass(frozen=True, slots=True)
class Attempt:
    """Who is trying: the serial number as presented (trimmed) and the client's address."""

    serial: str
    client_ip: str

    @property
    def serial_key(self) -> str:
        return serial_key(self.serial)

    @property
    def address(self) -> str:
        return address_key(self.client_ip)


def serial_key(serial: str) -> str:
    """The identity of a serial number for matching and throttling: trimmed, case-insensitive
    (so that `lvs-1` and `LVS-1` neither match differently nor count separately)."""
    return serial.strip().casefold()


def refusal(token: TokenView | None, serial: str, now: datetime) -> Reason | None:
    """Why this attempt must fail, checked in order; None when the code may be redeemed.

    Expiry is judged against `expires_at` with the caller's clock, never on whether a
    TokenExpired event has arrived."""
    if token is None:
        return "invalid_code"
    if token.status == "revoked":
        return "revoked"
    if token.status == "redeemed":
        return "already_used"
    if token.status == "expired" or token.expires_at <= now:
        return "expired"
    if (
        token.scanner_serial is None
        or token.scanner_removed
        or serial_key(token.scanner_serial) != serial_key(serial)
    ):
        return "serial_mismatch"
    return None


# ------------------------------------------------------------------------------------ throttling


@dataclass(slots=True)
class _Counted:
    count: int = 0
    last: datetime | None = None


@dataclass(slots=True)
class RejectionTally:
    """Refusals while locked out, reported together (issue #18: a flood against a lock must not
    write an event per request). The first refusal of a serial number (as presented) and address
    since the last report is reported at once; the others are counted and reported as one event
    per key at the next report (`AuthorisationRejected.attempts`). In memory, per replica: a
    crash loses at most one report period of counts, as it loses the metrics' counts; the
    metrics count every refusal. At most `capacity` keys are held; refusals beyond are counted
    in `overflow` only."""

    capacity: int = 10_000
    pending: dict[tuple[str, str], _Counted] = field(default_factory=dict)
    overflow: int = 0

    def report_now(self, serial: str, client_ip: str, now: datetime) -> bool:
        """Count this refusal; True when it is the first of its key, to be reported at once."""
        counted = self.pending.get((serial, client_ip))
        if counted is not None:
            counted.count += 1
            counted.last = now
            return False
        if len(self.pending) >= self.capacity:
            self.overflow += 1
            return False
        self.pending[(serial, client_ip)] = _Counted()
        return True

    def drain(self) -> tuple[list[tuple[str, str, int, datetime]], int]:
        """What to report: (serial, client_ip, refusals, the last one's time) for each key with
        refusals counted, and the overflow; every key is forgotten."""
        due = [(s, ip, c.count, c.last) for (s, ip), c in self.pending.items() if c.last]
        overflow = self.overflow
        self.pending.clear()
        self.overflow = 0
        return due, overflow

    def restore(self, due: list[tuple[str, str, int, datetime]]) -> None:
        """Put back what a failed report did not publish (counted again at the next one)."""
        for serial, client_ip, count, last in due:
            counted = self.pending.setdefault((serial, client_ip), _Counted())
            counted.count += count
            counted.last = max(last, counted.last or last)


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    serial_failures: int = 5
    serial_lock: timedelta = timedelta(minutes=15)
    address_failures: int = 30
    address_window: timedelta = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class SerialThrottle:
    """Consecutive failures of one serial number, and the lock they may have earned."""

    failures: int = 0
    locked_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class AddressThrottle:
    """The times of one address's failures within the window, and its lock."""

    failures: tuple[datetime, ...] = ()
    locked_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class AttemptState:
    """The throttle state of one attempt's serial number and address, and the time to judge it
    by (the database's clock: one clock for every replica)."""

    now: datetime
    serial: SerialThrottle = field(default_factory=SerialThrottle)
    address: AddressThrottle = field(default_factory=AddressThrottle)

    def retry_after(self) -> int | None:
        """Whole seconds until the locks in force have passed; None when neither is locked."""
        return retry_after(self.now, self.serial.locked_until, self.address.locked_until)


def retry_after(now: datetime, *locks: datetime | None) -> int | None:
    """Whole seconds until every lock in force has passed (at least 1); None when none is."""
    active = [until for until in locks if until is not None and until > now]
    if not active:
        return None
    return max(1, math.ceil((max(active) - now).total_seconds()))


def serial_failed(
    state: SerialThrottle, now: datetime, policy: ThrottlePolicy
) -> tuple[SerialThrottle, bool]:
    """One more consecutive failure. At the limit the serial is locked and its count restarts.
    Returns the new state and whether this failure locked it."""
    failures = state.failures + 1
    if failures >= policy.serial_failures:
        return SerialThrottle(0, now + policy.serial_lock), True
    return SerialThrottle(failures, state.locked_until), False


def address_failed(
    state: AddressThrottle, now: datetime, policy: ThrottlePolicy
) -> tuple[AddressThrottle, bool]:
    """One more failure in a sliding window. At the limit the address is locked for the length
    of the window and its failures are forgotten. Returns the new state and whether it locked."""
    since = now - policy.address_window
    recent = (*(t for t in state.failures if t > since), now)
    if len(recent) >= policy.address_failures:
        return AddressThrottle((), now + policy.address_window), True
    return AddressThrottle(recent, state.locked_until), False


def address_key(client_ip: str) -> str:
    """The throttling identity of a client address: the address itself for IPv4, its /64 for
    IPv6 (one subscriber usually holds a whole /64, so single addresses would be free to get)."""
    try:
        ip = ipaddress.ip_address(client_ip)
    except ValueError:
        return client_ip[:100]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{ip}/64", strict=False))
    return str(ip)


# ------------------------------------------------------------------------------------ credentials


@dataclass(frozen=True, slots=True)
class Credential:
    """A scanner credential as stored: only its digest."""

    credential_id: str
    scanner_id: str
    org_id: str
    credential_digest: str
    status: CredentialStatus
    issued_at: datetime
    valid_until: datetime | None = None
    token_id: str | None = None
    previous_credential_id: str | None = None

    def standing(self, now: datetime) -> Standing:
        return standing(self.status, self.valid_until, now)


def standing(status: CredentialStatus, valid_until: datetime | None, now: datetime) -> Standing:
    """How a stored credential stands: the scanner's current one, a rotated-out one inside its
    grace period, or ended (replaced, revoked, grace over)."""
    if status == "active":
        return "current"
    if status == "rotating" and valid_until is not None and valid_until > now:
        return "grace"
    return "ended"


ROTATION_WINDOW = timedelta(hours=1)


def rotation_retry_after(
    recent: list[datetime], now: datetime, limit: int, window: timedelta = ROTATION_WINDOW
) -> int | None:
    """Whole seconds until one more rotation is allowed, given the issue times of the
    scanner's rotated-in credentials (`recent`, any order): None while fewer than `limit` fall
    within the sliding `window` ending at `now`."""
    inside = sorted(t for t in recent if t > now - window)
    if len(inside) < limit:
        return None
    # The rotation that must leave the window before one more fits in it.
    frees_at = inside[len(inside) - limit] + window
    return max(1, math.ceil((frees_at - now).total_seconds()))
