"""Pure decisions of the token-issuer: who may do what, and what a token's status is now.

No I/O here; handlers load the facts, ask these functions, and commit what they decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from scanner_auth_shared.auth import Principal

TokenStatus = Literal["active", "redeemed", "expired", "revoked"]
AuthorisationStatus = Literal["authorised", "unauthorised"]
AuditAction = Literal["generated", "viewed_code", "emailed", "revoked", "deauthorised"]

ACTIVE: TokenStatus = "active"
REDEEMED: TokenStatus = "redeemed"
EXPIRED: TokenStatus = "expired"
REVOKED: TokenStatus = "revoked"

DIRECTORY_ACTOR = "directory"  # revoked_by / deauthorised_by when the directory removed a scanner


# ------------------------------------------------------------------------------------ errors


class DomainError(Exception):
    """A request the rules refuse. Messages are safe to show (no secrets, no foreign data)."""


class ScannerNotFound(DomainError):
    """Unknown, removed, or not visible to the caller: all look the same from outside."""

    def __init__(self) -> None:
        super().__init__("no such scanner")


class ManageForbidden(DomainError):
    def __init__(self) -> None:
        super().__init__("you may view this scanner but not manage it")


class TokenNotFound(DomainError):
    def __init__(self) -> None:
        super().__init__("no authorisation token was ever issued for this scanner")


class NoActiveToken(DomainError):
    def __init__(self) -> None:
        super().__init__("this scanner has no active authorisation token")


class RecipientRefused(DomainError):
    """The chosen recipient is unknown, cannot view the scanner, or has no email address."""


# ------------------------------------------------------------------------------------ access


@dataclass(frozen=True, slots=True)
class Access:
    can_view: bool
    can_manage: bool


NO_ACCESS = Access(can_view=False, can_manage=False)


def access_to(principal: Principal, scanner_org_id: str, *, has_grant: bool) -> Access:
    """What `principal` may do with a (visible, not removed) scanner of `scanner_org_id`.

    - support: manages every scanner of every organisation;
    - admin: manages every scanner of their own organisation;
    - anyone else: views the scanners they were granted, and only within their own
      organisation (a grant that crosses organisations is ignored: defence in depth).
    """
    if principal.is_support:
        return Access(can_view=True, can_manage=True)
    same_org = principal.org_id == scanner_org_id
    if principal.is_admin and same_org:
        return Access(can_view=True, can_manage=True)
    if has_grant and same_org:
        return Access(can_view=True, can_manage=False)
    return NO_ACCESS


def require(access: Access, *, manage: bool) -> None:
    """Raise ScannerNotFound (cannot view: 404, never 403) or ManageForbidden (403)."""
    if not access.can_view:
        raise ScannerNotFound()
    if manage and not access.can_manage:
        raise ManageForbidden()


@dataclass(frozen=True, slots=True)
class Person:
    """Someone who might receive a code: what the directory and past logins tell about them."""

    user_id: str
    org_id: str | None  # the directory's, else the one last seen in their JWT
    display_name: str
    email: str | None
    has_grant: bool  # a directory grant on the scanner in question
    seen_as_admin: bool  # last seen authenticating with role admin (in org_id)


def person_can_view(person: Person, scanner_org_id: str) -> bool:
    """Whether a user other than the caller can view the scanner, as far as this service knows:
    a same-organisation user with a grant, or an admin of the scanner's organisation."""
    if person.org_id != scanner_org_id:
        return False
    return person.has_grant or person.seen_as_admin


def choose_recipient_email(
    caller: Principal, recipient_id: str, recipient: Person | None, scanner_org_id: str
) -> str:
    """The address to send a code to, or RecipientRefused.

    The caller may always send to themselves (that they can view was checked before); their
    address is the directory's, else the `email` claim of their JWT. Anyone else must be known
    to this service and able to view the scanner.
    """
    if recipient_id == caller.user_id:
        email = (recipient.email if recipient is not None else None) or caller.email
    elif recipient is None:
        raise RecipientRefused("the recipient is not a known user")
    elif not person_can_view(recipient, scanner_org_id):
        raise RecipientRefused("the recipient cannot view this scanner")
    else:
        email = recipient.email
    if not email:
        raise RecipientRefused("no email address is known for the recipient")
    return email


# ------------------------------------------------------------------------------------ tokens


def token_status(stored: str, expires_at: datetime, now: datetime) -> TokenStatus:
    """The status a reader sees: an active token past its expiry time reads `expired` even
    before the sweeper has recorded it."""
    if stored == ACTIVE and expires_at <= now:
        return EXPIRED
    if stored not in (ACTIVE, REDEEMED, EXPIRED, REVOKED):
        raise ValueError(f"unknown token status {stored!r}")
    return stored


def expiry_for(issued_at: datetime, ttl_seconds: int) -> datetime:
    return issued_at + timedelta(seconds=ttl_seconds)


def redemption_applies(stored: str, expires_at: datetime, redeemed_at: datetime) -> bool:
    """Whether a `ScannerAuthorised` for this token marks it redeemed.

    An active token is redeemed. An expired one too when the redemption happened before the
    expiry time: the sweeper ran before the redeemer's event reached us.
    """
    if stored == ACTIVE:
        return True
    return stored == EXPIRED and redeemed_at <= expires_at


def retirement_for(expires_at: datetime, now: datetime) -> Literal["expired", "revoked"]:
    """An active token being replaced or revoked: one past its expiry time expires instead."""
    return "expired" if expires_at <= now else "revoked"


def authorisation_applies(
    authorised_at: datetime,
    *,
    current_authorised_at: datetime | None,
    deauthorised_at: datetime | None,
) -> bool:
    """Whether a `ScannerAuthorised` changes our view of the scanner.

    Fail closed: an authorisation at or before the last deauthorisation is stale (every
    credential issued up to `deauthorised_at` stops working), and an older authorisation than
    the one we know is superseded.
    """
    if deauthorised_at is not None and authorised_at <= deauthorised_at:
        return False
    return current_authorised_at is None or authorised_at >= current_authorised_at
