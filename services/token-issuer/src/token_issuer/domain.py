"""Pure decisions of the token-issuer: who may do what, what a token's status is now, which
event changes the authorisation view; and the facts those decisions are about.

No I/O here: handlers load the facts (repositories), ask these functions, and commit what they
decide. Refusals are `Refusal` subclasses (their messages are safe to show); the HTTP status of
each is api.py's business.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from scanner_auth_shared.api import Refusal
from scanner_auth_shared.auth import Principal

TokenStatus = Literal["active", "redeemed", "expired", "revoked"]
AuthorisationStatus = Literal["authorised", "unauthorised"]
AuditAction = Literal["generated", "viewed_code", "emailed", "revoked", "deauthorised"]
RevokeReason = Literal["superseded", "revoked"]

ACTIVE: TokenStatus = "active"
REDEEMED: TokenStatus = "redeemed"
EXPIRED: TokenStatus = "expired"
REVOKED: TokenStatus = "revoked"

DIRECTORY_ACTOR = "directory"  # revoked_by / deauthorised_by when the directory removed a scanner


# ------------------------------------------------------------------------------------ refusals


class ScannerNotFound(Refusal):
    """Unknown, removed, or not visible to the caller: all look the same from outside."""

    def __init__(self) -> None:
        super().__init__("no such scanner")


class ManageForbidden(Refusal):
    def __init__(self) -> None:
        super().__init__("you may view this scanner but not manage it")


class TokenNotFound(Refusal):
    def __init__(self) -> None:
        super().__init__("no authorisation token was ever issued for this scanner")


class NoActiveToken(Refusal):
    def __init__(self) -> None:
        super().__init__("this scanner has no active authorisation token")


class RecipientRefused(Refusal):
    """The chosen recipient is unknown, cannot view the scanner, or has no email address."""


class EmailRateLimited(Refusal):
    """Too many emails of this code, or to this recipient, in the last hour (429). `Retry-After`
    says in how many seconds a slot frees."""

    def __init__(self, detail: str, retry_after_seconds: int) -> None:
        super().__init__(detail)
        self.retry_after_seconds = retry_after_seconds
        self.headers = {"Retry-After": str(retry_after_seconds)}


# ------------------------------------------------------------------------------------ facts


@dataclass(frozen=True, slots=True)
class Scanner:
    """A directory scanner and this service's view of its authorisation. A scanner may be known
    before its ScannerRegistered (from a ScannerAuthorised): then it is not `registered`."""

    scanner_id: str
    org_id: str | None = None
    serial_number: str | None = None
    name: str = ""
    model: str = ""
    registered: bool = False
    removed_at: datetime | None = None
    authorised: bool = False
    authorised_at: datetime | None = None
    credential_id: str | None = None
    authorised_serial_number: str | None = None
    deauthorised_at: datetime | None = None

    @property
    def visible(self) -> bool:
        """Known to the directory and not removed: only such a scanner exists for users."""
        return self.registered and self.removed_at is None and self.org_id is not None


@dataclass(frozen=True, slots=True)
class Token:
    """An authorisation token. The code is kept only encrypted (`code_ciphertext`, erased when
    the token stops being active) and as its digest."""

    token_id: str
    scanner_id: str
    org_id: str
    code_ciphertext: bytes | None
    code_digest: str
    status: TokenStatus
    issued_at: datetime
    issued_by: str
    expires_at: datetime
    redeemed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class DirectoryUser:
    user_id: str
    org_id: str
    email: str
    display_name: str = ""


@dataclass(frozen=True, slots=True)
class SeenPrincipal:
    """Who authenticated, with which organisation, roles and email (their last JWT), and when
    (`seen_at`: set when read back, not needed to record)."""

    user_id: str
    org_id: str
    roles: tuple[str, ...]
    email: str | None
    seen_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Person:
    """Someone who might receive a code: what the directory and past logins tell about them."""

    user_id: str
    org_id: str | None  # the directory's, else the one last seen in their JWT
    display_name: str
    email: str | None
    has_grant: bool  # a directory grant on the scanner in question
    # When they were last seen authenticating with role admin in org_id (their last JWT), else
    # None. Only a JWT says who is an admin; `admin_is_current` says whether it still counts.
    admin_seen_at: datetime | None


def person(
    user_id: str, user: DirectoryUser | None, seen: SeenPrincipal | None, *, has_grant: bool
) -> Person:
    """What is known of a user: the directory first, their last JWT for what it lacks. They
    count as an admin only if last seen as one in the organisation they belong to."""
    org_id = user.org_id if user is not None else (seen.org_id if seen is not None else None)
    was_admin = seen is not None and "admin" in seen.roles and seen.org_id == org_id
    admin_seen_at = seen.seen_at if seen is not None and was_admin else None
    email = (user.email if user is not None else None) or (seen.email if seen else None)
    display_name = (user.display_name if user is not None else "") or (email or "")
    return Person(
        user_id=user_id,
        org_id=org_id,
        display_name=display_name,
        email=email,
        has_grant=has_grant,
        admin_seen_at=admin_seen_at,
    )


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row of the audit log (and one line of the audit logger)."""

    at: datetime
    actor_user_id: str
    actor_org_id: str | None
    action: AuditAction
    scanner_id: str
    token_id: str | None = None
    recipient_user_id: str | None = None
    notification_id: str | None = None


def audit(
    principal: Principal,
    action: AuditAction,
    scanner_id: str,
    at: datetime,
    *,
    token_id: str | None = None,
    recipient_user_id: str | None = None,
    notification_id: str | None = None,
) -> AuditEntry:
    return AuditEntry(
        at=at,
        actor_user_id=principal.user_id,
        actor_org_id=principal.org_id,
        action=action,
        scanner_id=scanner_id,
        token_id=token_id,
        recipient_user_id=recipient_user_id,
        notification_id=notification_id,
    )


@dataclass(frozen=True, slots=True)
class ListedScanner:
    """A scanner the caller may be able to view (a pre-filtered candidate), with its latest
    token and whether the caller holds a grant on it."""

    scanner_id: str
    org_id: str
    name: str
    serial_number: str | None
    model: str
    authorised: bool
    authorised_at: datetime | None
    has_grant: bool
    token_status: TokenStatus | None
    token_expires_at: datetime | None


# ------------------------------------------------------------------------------------ views


@dataclass(frozen=True, slots=True)
class TokenView:
    token_id: str
    scanner_id: str
    code: str | None
    status: TokenStatus
    issued_at: datetime
    issued_by: str
    expires_at: datetime
    redeemed_at: datetime | None

    @classmethod
    def of(cls, token: Token, *, status: TokenStatus, code: str | None) -> TokenView:
        return cls(
            token_id=token.token_id,
            scanner_id=token.scanner_id,
            code=code,
            status=status,
            issued_at=token.issued_at,
            issued_by=token.issued_by,
            expires_at=token.expires_at,
            redeemed_at=token.redeemed_at,
        )


@dataclass(frozen=True, slots=True)
class ScannerSummary:
    scanner_id: str
    org_id: str
    name: str
    serial_number: str | None
    model: str
    token_status: TokenStatus | None
    token_expires_at: datetime | None
    authorisation_status: AuthorisationStatus
    authorised_at: datetime | None
    can_manage: bool


@dataclass(frozen=True, slots=True)
class Viewer:
    user_id: str
    display_name: str
    email: str


@dataclass(frozen=True, slots=True)
class AuthorisationView:
    status: AuthorisationStatus
    authorised_at: datetime | None
    credential_id: str | None
    serial_number: str | None


def summary(row: ListedScanner, principal: Principal, now: datetime) -> ScannerSummary | None:
    """How a listed scanner reads to `principal` now, or None if they cannot view it."""
    access = access_to(principal, row.org_id, has_grant=row.has_grant)
    if not access.can_view:
        return None
    return ScannerSummary(
        scanner_id=row.scanner_id,
        org_id=row.org_id,
        name=row.name,
        serial_number=row.serial_number,
        model=row.model,
        token_status=(
            token_status(row.token_status, row.token_expires_at, now)
            if row.token_status is not None and row.token_expires_at is not None
            else None
        ),
        token_expires_at=row.token_expires_at,
        authorisation_status="authorised" if row.authorised else "unauthorised",
        authorised_at=row.authorised_at if row.authorised else None,
        can_manage=access.can_manage,
    )


def authorisation_view(scanner: Scanner) -> AuthorisationView:
    if not scanner.authorised:
        return AuthorisationView("unauthorised", None, None, None)
    return AuthorisationView(
        "authorised",
        scanner.authorised_at,
        scanner.credential_id,
        scanner.authorised_serial_number,
    )


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


def access_to_scanner(principal: Principal, scanner: Scanner | None, *, has_grant: bool) -> Access:
    """`access_to` for a scanner as loaded: one that is unknown or not visible gives none."""
    if scanner is None or not scanner.visible or scanner.org_id is None:
        return NO_ACCESS
    return access_to(principal, scanner.org_id, has_grant=has_grant)


def require(access: Access, *, manage: bool) -> None:
    """Raise ScannerNotFound (cannot view: 404, never 403) or ManageForbidden (403)."""
    if not access.can_view:
        raise ScannerNotFound()
    if manage and not access.can_manage:
        raise ManageForbidden()


def require_may_email(access: Access, *, to_self: bool) -> None:
    """Viewers may email the code to themselves; sending it to anyone else is managing."""
    require(access, manage=not to_self)


def admin_is_current(person: Person, admins_seen_since: datetime) -> bool:
    """Whether `person` counts as an admin of their organisation: seen signing in as one at or
    after `admins_seen_since` (now minus ADMIN_FLAG_TTL_HOURS). A role once seen in a JWT is not
    a role for ever: an admin demoted in the identity provider stops being a recipient once
    their last admin sign-in is that old, unless they sign in as an admin again."""
    return person.admin_seen_at is not None and person.admin_seen_at >= admins_seen_since


def person_can_view(person: Person, scanner_org_id: str, admins_seen_since: datetime) -> bool:
    """Whether a user other than the caller can view the scanner, as far as this service knows:
    a same-organisation user with a grant, or an admin of the scanner's organisation (seen as
    one since `admins_seen_since`)."""
    if person.org_id != scanner_org_id:
        return False
    return person.has_grant or admin_is_current(person, admins_seen_since)


def choose_recipient_email(
    caller: Principal,
    recipient_id: str,
    recipient: Person | None,
    scanner_org_id: str,
    admins_seen_since: datetime,
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
    elif not person_can_view(recipient, scanner_org_id, admins_seen_since):
        raise RecipientRefused("the recipient cannot view this scanner")
    else:
        email = recipient.email
    if not email:
        raise RecipientRefused("no email address is known for the recipient")
    return email


def viewers(people: list[Person], scanner_org_id: str, admins_seen_since: datetime) -> list[Viewer]:
    """The people who can view the scanner and have an address: the possible recipients."""
    return [
        Viewer(user_id=p.user_id, display_name=p.display_name, email=p.email)
        for p in people
        if p.email and person_can_view(p, scanner_org_id, admins_seen_since)
    ]


# ------------------------------------------------------------------------------------ email quota

EMAIL_WINDOW = timedelta(hours=1)


@dataclass(frozen=True, slots=True)
class EmailQuota:
    """At most `per_code` emails of one code (token) and `per_recipient` emails to one address
    in any `EMAIL_WINDOW`."""

    per_code: int
    per_recipient: int


DEFAULT_EMAIL_QUOTA = EmailQuota(per_code=5, per_recipient=10)
DEFAULT_ADMIN_FLAG_TTL = timedelta(hours=24)


def recipient_key(email: str) -> str:
    """The address an email quota counts by: one mailbox, however its case is written."""
    return email.strip().lower()


def check_email_quota(
    now: datetime, *, code_full_since: datetime | None, recipient_full_since: datetime | None
) -> None:
    """EmailRateLimited when a quota is used up. `…_full_since`: the time of the request that
    filled the quota (the per_code-th, resp. per_recipient-th most recent one within the window),
    None while there is room; a slot frees when that request leaves the window."""
    waits = {
        what: (since + EMAIL_WINDOW - now).total_seconds()
        for what, since in (("code", code_full_since), ("recipient", recipient_full_since))
        if since is not None
    }
    if not waits:
        return
    what = max(waits, key=lambda w: waits[w])
    seconds = max(1, math.ceil(waits[what]))
    detail = (
        "this code was emailed too often in the last hour"
        if what == "code"
        else "too many codes were emailed to this recipient in the last hour"
    )
    raise EmailRateLimited(f"{detail}; try again in {seconds} seconds", seconds)


# ------------------------------------------------------------------------------------ support

DEFAULT_SUPPORT_ORG = "org-loadscan"


def honoured(principal: Principal, support_org_id: str) -> Principal:
    """The caller as this service treats them: the `support` role counts only in the Loadscan
    organisation (SUPPORT_ORG_ID). Anyone else's identity provider tenant could mint it (an
    organisation that manages its own roles, a misconfigured mapping) and would then manage every
    scanner of every organisation; outside Loadscan it is dropped, so they get what their other
    roles give them."""
    if not principal.is_support or principal.org_id == support_org_id:
        return principal
    return dataclasses.replace(principal, roles=principal.roles - {"support"})


class RecentPrincipals:
    """Who was recorded lately (`principals_seen`), to write one user's claims at most once per
    `interval` seconds per process, or sooner when they change. Times are monotonic seconds."""

    def __init__(self, interval: float, *, capacity: int = 50_000) -> None:
        self.interval = interval
        self.capacity = capacity
        self._recorded: dict[str, tuple[float, tuple[str, frozenset[str], str | None]]] = {}

    def due(self, principal: Principal, now: float) -> bool:
        """Whether to record `principal` now; if so, it counts as recorded from now on."""
        snapshot = (principal.org_id, principal.roles, principal.email)
        last = self._recorded.get(principal.user_id)
        if last is not None and last[1] == snapshot and now - last[0] < self.interval:
            return False
        if len(self._recorded) >= self.capacity:
            self._recorded.clear()
        self._recorded[principal.user_id] = (now, snapshot)
        return True

    def forget(self, user_id: str) -> None:
        """Recording failed: record them again next time."""
        self._recorded.pop(user_id, None)


# ------------------------------------------------------------------------------------ tokens


def token_status(stored: str, expires_at: datetime, now: datetime) -> TokenStatus:
    """The status a reader sees: an active token past its expiry time reads `expired` even
    before the sweeper has recorded it."""
    if stored == ACTIVE and expires_at <= now:
        return EXPIRED
    if stored not in (ACTIVE, REDEEMED, EXPIRED, REVOKED):
        raise ValueError(f"unknown token status {stored!r}")
    return stored


def is_active(token: Token | None, now: datetime) -> bool:
    return token is not None and token_status(token.status, token.expires_at, now) == ACTIVE


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


# ------------------------------------------------------------------------------------ authorisation


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


def rotation_applies(scanner: Scanner, rotated_at: datetime) -> bool:
    """Whether a `CredentialRotated` updates the scanner's credential: only while it is
    authorised, and not for a rotation at or before the last deauthorisation."""
    if not scanner.authorised:
        return False
    return scanner.deauthorised_at is None or rotated_at > scanner.deauthorised_at


def credential_to_withdraw(scanner: Scanner, presented: str | None = None) -> str | None:
    """The credential a ScannerDeauthorised names: the one just presented (an authorisation
    refused at once), else the one we know, else none (fail closed: emitted all the same)."""
    if presented is not None:
        return presented
    return scanner.credential_id if scanner.authorised else None
