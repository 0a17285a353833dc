"""The redeemer's decisions: pure functions of plain values, no I/O.

- which refusal reason an attempt earns (or none), in the contract's order;
- the throttling arithmetic (consecutive failures per serial, a sliding window per address);
- how a credential stands (current, in its rotation grace, or ended).
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

Reason = Literal["invalid_code", "expired", "already_used", "revoked", "serial_mismatch"]
RejectionReason = Literal[
    "invalid_code", "expired", "already_used", "revoked", "serial_mismatch", "rate_limited"
]
TokenStatus = Literal["active", "redeemed", "expired", "revoked"]
CredentialStatus = Literal["active", "rotating", "replaced", "revoked"]
Standing = Literal["current", "grace", "ended", "unknown"]

SERIAL_MAX_LENGTH = 64
CODE_MAX_LENGTH = 64


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


def locked(locked_until: datetime | None, now: datetime) -> bool:
    return locked_until is not None and locked_until > now


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


def standing(status: CredentialStatus, valid_until: datetime | None, now: datetime) -> Standing:
    """How a stored credential stands: the scanner's current one, a rotated-out one inside its
    grace period, or ended (replaced, revoked, grace over)."""
    if status == "active":
        return "current"
    if status == "rotating" and valid_until is not None and valid_until > now:
        return "grace"
    return "ended"
