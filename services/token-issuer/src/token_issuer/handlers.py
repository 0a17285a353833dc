"""The use cases of the token-issuer: load (repositories), decide (domain.py), commit (the
state change and its events in one unit of work: the outbox).

One function per command (HTTP), per query, per consumed event type, and the expiry sweep. Every
unit of work that emits an event for a scanner locks that scanner's row first (`…for_update`),
so that the relay publishes each scanner's events in commit order.

Secrets: the code exists in clear only in memory, on its way to the HTTP answer or into the
sealed form for the notifier; it is never logged.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from scanner_auth_shared import crypto
from scanner_auth_shared.auth import Principal
from scanner_auth_shared.crypto import SecretBox, sealed_code_context, stored_code_context
from scanner_auth_shared.events import (
    CloudEvent,
    CredentialRotated,
    ScannerAccessGranted,
    ScannerAccessRevoked,
    ScannerAuthorised,
    ScannerDeauthorised,
    ScannerRegistered,
    ScannerRemoved,
    TokenEmailRequested,
    TokenExpired,
    TokenIssued,
    TokenRevoked,
    UserUpserted,
    utcnow,
)

from . import domain, metrics
from .adapters.ports import UnitOfWork
from .domain import (
    ACTIVE,
    DIRECTORY_ACTOR,
    EXPIRED,
    Access,
    AuditEntry,
    AuthorisationView,
    RevokeReason,
    Scanner,
    ScannerSummary,
    SeenPrincipal,
    Token,
    TokenView,
    Viewer,
)

log = logging.getLogger("scanner_auth.token_issuer")
audit_log = logging.getLogger("scanner_auth.token_issuer.audit")

Clock = Callable[[], datetime]


# ------------------------------------------------------------------------------------ dependencies


@dataclass(frozen=True)
class Keys:
    """The code's keys: its digest (TOKEN_PEPPER), at rest (CODE_ENCRYPTION_KEY), sealed for the
    notifier (SEALING_KEY). Never shown by repr."""

    pepper: bytes = field(repr=False)
    at_rest: SecretBox = field(repr=False)
    for_notifier: SecretBox = field(repr=False)

    def digest(self, code: str) -> str:
        return crypto.code_digest(self.pepper, crypto.normalise_code(code))

    def store(self, code: str, token_id: str) -> bytes:
        return self.at_rest.seal_bytes(code, stored_code_context(token_id))

    def code_of(self, token: Token) -> str:
        assert token.code_ciphertext is not None, "an active token keeps its code"
        return self.at_rest.open_bytes(token.code_ciphertext, stored_code_context(token.token_id))

    def seal_for_notifier(self, code: str, token_id: str) -> str:
        return self.for_notifier.seal(code, sealed_code_context(token_id))


@dataclass(frozen=True)
class Context:
    """What the use cases need besides a unit of work (built by app.py from the settings)."""

    keys: Keys
    ttl_seconds: int
    principals: domain.RecentPrincipals
    sweep_batch: int = 500
    clock: Clock = utcnow
    monotonic: Callable[[], float] = time.monotonic
    # EMAIL_LIMIT_PER_CODE_PER_HOUR, EMAIL_LIMIT_PER_RECIPIENT_PER_HOUR
    email_quota: domain.EmailQuota = domain.DEFAULT_EMAIL_QUOTA
    # ADMIN_FLAG_TTL_HOURS: how long an admin role seen in a JWT counts for others' access
    admin_flag_ttl: timedelta = domain.DEFAULT_ADMIN_FLAG_TTL
    support_org_id: str = domain.DEFAULT_SUPPORT_ORG  # SUPPORT_ORG_ID

    def admins_seen_since(self, now: datetime) -> datetime:
        return now - self.admin_flag_ttl


# ------------------------------------------------------------------------------------ commands


@dataclass(frozen=True, slots=True)
class GenerateToken:
    by: Principal
    scanner_id: str


@dataclass(frozen=True, slots=True)
class RevokeToken:
    by: Principal
    scanner_id: str


@dataclass(frozen=True, slots=True)
class EmailCode:
    by: Principal
    scanner_id: str
    recipient_user_id: str | None = None  # the caller when None


@dataclass(frozen=True, slots=True)
class Deauthorise:
    by: Principal
    scanner_id: str


# ------------------------------------------------------------------------------------ tokens


async def generate_token(uow: UnitOfWork, ctx: Context, command: GenerateToken) -> TokenView:
    """A new code for the scanner (manage); the active one, if any, is superseded."""
    code = crypto.generate_code()
    token_id = str(uuid.uuid4())
    stored, digest = ctx.keys.store(code, token_id), ctx.keys.digest(code)
    by, scanner_id = command.by, command.scanner_id
    async with uow:
        now = ctx.clock()
        scanner, _ = await _scanner(uow, by, scanner_id, manage=True, for_update=True)
        await _end_active_token(uow, scanner_id, now, by=by.user_id, reason="superseded")
        token = Token(
            token_id, scanner_id, _org(scanner), stored, digest, ACTIVE, now, by.user_id,
            domain.expiry_for(now, ctx.ttl_seconds),
        )  # fmt: skip
        entry = domain.audit(by, "generated", scanner_id, now, token_id=token_id)
        await uow.tokens.add(token, entry)
        issued = TokenIssued(
            token_id=token_id, scanner_id=scanner_id, org_id=token.org_id, issued_by=by.user_id,
            issued_at=now, expires_at=token.expires_at, code_digest=digest,
        )  # fmt: skip
        uow.emit(issued)
        await uow.commit()
    metrics.TOKENS_ISSUED.inc()
    _log(entry)
    return TokenView.of(token, status=ACTIVE, code=code)


async def show_latest_token(
    uow: UnitOfWork, ctx: Context, principal: Principal, scanner_id: str
) -> TokenView:
    """The latest token (view), with its code only while it is active (audited)."""
    entry = None
    async with uow:
        now = ctx.clock()
        await _scanner(uow, principal, scanner_id, manage=False, for_update=False)
        token = await uow.tokens.latest(scanner_id)
        if token is None:
            raise domain.TokenNotFound()
        status = domain.token_status(token.status, token.expires_at, now)
        code = ctx.keys.code_of(token) if status == ACTIVE else None
        if code is not None:
            entry = domain.audit(principal, "viewed_code", scanner_id, now, token_id=token.token_id)
            await uow.audit.record(entry)
            await uow.commit()
    if entry is not None:
        metrics.CODES_VIEWED.inc()
        _log(entry)
    return TokenView.of(token, status=status, code=code)


async def revoke_token(uow: UnitOfWork, ctx: Context, command: RevokeToken) -> None:
    """Revoke the active token (manage); none is fine (idempotent, no event)."""
    by, scanner_id = command.by, command.scanner_id
    entry = None
    async with uow:
        now = ctx.clock()
        await _scanner(uow, by, scanner_id, manage=True, for_update=True)
        ended = await _end_active_token(uow, scanner_id, now, by=by.user_id, reason="revoked")
        if ended is not None and ended[1] == "revoked":
            entry = domain.audit(by, "revoked", scanner_id, now, token_id=ended[0])
            await uow.audit.record(entry)
        await uow.commit()
    if entry is not None:
        _log(entry)


async def email_code(uow: UnitOfWork, ctx: Context, command: EmailCode) -> str:
    """Ask the notifier to email the active code (TokenEmailRequested, the code sealed for it):
    to oneself (view) or to another user who can view the scanner (manage). The notification
    id.

    At most `email_quota.per_code` emails of one code and `per_recipient` to one address per
    hour, whatever the number of replicas: the request is counted in the transaction of its
    outbox row, under the scanner's row lock (every email of a code takes it) and a transaction
    lock on the address (emails to one address from different scanners), so that two
    concurrent requests never both see the last free slot."""
    by, scanner_id = command.by, command.scanner_id
    recipient_id = command.recipient_user_id or by.user_id
    async with uow:
        now = ctx.clock()
        scanner, access = await _scanner(uow, by, scanner_id, manage=False, for_update=True)
        domain.require_may_email(access, to_self=recipient_id == by.user_id)
        token = await uow.tokens.active(scanner_id)
        if token is None or not domain.is_active(token, now):
            raise domain.NoActiveToken()
        recipient = await uow.people.person(recipient_id, scanner_id)
        email = domain.choose_recipient_email(
            by, recipient_id, recipient, _org(scanner), ctx.admins_seen_since(now)
        )
        address = domain.recipient_key(email)
        await uow.emails.lock_recipient(address)
        quota = ctx.email_quota
        code_full, recipient_full = await uow.emails.full_since(
            token.token_id, address, now - domain.EMAIL_WINDOW,
            per_code=quota.per_code, per_recipient=quota.per_recipient,
        )  # fmt: skip
        try:
            domain.check_email_quota(
                now, code_full_since=code_full, recipient_full_since=recipient_full
            )
        except domain.EmailRateLimited:
            metrics.CODE_EMAILS_LIMITED.inc()
            raise
        notification_id = str(uuid.uuid4())
        await uow.emails.add(notification_id, token.token_id, address, now)
        sealed = ctx.keys.seal_for_notifier(ctx.keys.code_of(token), token.token_id)
        requested = TokenEmailRequested(
            notification_id=notification_id, token_id=token.token_id, scanner_id=scanner_id,
            org_id=_org(scanner), recipient_user_id=recipient_id, recipient_email=email,
            requested_by=by.user_id, expires_at=token.expires_at, scanner_name=scanner.name,
            serial_number=scanner.serial_number or "", sealed_code=sealed,
        )  # fmt: skip
        uow.emit(requested)
        entry = domain.audit(
            by, "emailed", scanner_id, now, token_id=token.token_id,
            recipient_user_id=recipient_id, notification_id=notification_id,
        )  # fmt: skip
        await uow.audit.record(entry)
        await uow.commit()
    metrics.CODE_EMAILS_REQUESTED.inc()
    _log(entry)
    return notification_id


# ------------------------------------------------------------------------------------ queries


async def list_scanners(
    uow: UnitOfWork, ctx: Context, principal: Principal
) -> list[ScannerSummary]:
    """The scanners the caller can view, with token and authorisation status."""
    now = ctx.clock()
    async with uow:
        rows = await uow.scanners.listed_for(
            principal.user_id, principal.org_id,
            support=principal.is_support, admin=principal.is_admin,
        )  # fmt: skip
    return [s for row in rows if (s := domain.summary(row, principal, now)) is not None]


async def list_viewers(
    uow: UnitOfWork, ctx: Context, principal: Principal, scanner_id: str
) -> list[Viewer]:
    """Who can view the scanner (manage), to choose the recipient of an email."""
    async with uow:
        scanner, _ = await _scanner(uow, principal, scanner_id, manage=True, for_update=False)
        people = await uow.people.around(scanner_id, _org(scanner))
    return domain.viewers(people, _org(scanner), ctx.admins_seen_since(ctx.clock()))


async def show_authorisation(
    uow: UnitOfWork, principal: Principal, scanner_id: str
) -> AuthorisationView:
    """Whether the scanner is authorised, with which credential (view)."""
    async with uow:
        scanner, _ = await _scanner(uow, principal, scanner_id, manage=False, for_update=False)
    return domain.authorisation_view(scanner)


# ------------------------------------------------------------------------------------ authorisation


async def deauthorise(uow: UnitOfWork, ctx: Context, command: Deauthorise) -> None:
    """Withdraw the scanner's authorisation (manage). Always emits ScannerDeauthorised, also
    when no authorisation is known: this view may lag a redemption, so it fails closed."""
    by, scanner_id = command.by, command.scanner_id
    async with uow:
        now = ctx.clock()
        scanner, _ = await _scanner(uow, by, scanner_id, manage=True, for_update=True)
        await _deauthorise(uow, scanner, _org(scanner), now, by=by.user_id, reason="deauthorised")
        entry = domain.audit(by, "deauthorised", scanner_id, now)
        await uow.audit.record(entry)
        await uow.commit()
    _log(entry)


# ------------------------------------------------------------------------------------ principals


async def record_principal(uow: UnitOfWork, ctx: Context, principal: Principal) -> None:
    """Remember who authenticates with which roles (to know an organisation's admins), at most
    once per `principal_record_interval_seconds` per user and process."""
    if not ctx.principals.due(principal, ctx.monotonic()):
        return
    seen = SeenPrincipal(
        principal.user_id, principal.org_id, tuple(sorted(principal.roles)), principal.email
    )
    try:
        async with uow:
            await uow.people.record_seen(seen, ctx.clock())
            await uow.commit()
    except BaseException:
        ctx.principals.forget(principal.user_id)
        raise


# ------------------------------------------------------------------------------------ expiry


async def purge_email_requests(uow: UnitOfWork, ctx: Context) -> int:
    """Forget the email requests that no longer count against a quota (older than the window)."""
    async with uow:
        purged = await uow.emails.purge(ctx.clock() - domain.EMAIL_WINDOW)
        await uow.commit()
    return purged


async def expire_due_tokens(uow: UnitOfWork, ctx: Context) -> int:
    """Mark due active tokens expired, each with exactly one TokenExpired whatever the number
    of replicas sweeping at once (the conditional UPDATE decides, under the scanner's lock).
    Batch after batch while they come back full; the number this call expired."""
    total = 0
    while True:
        now = ctx.clock()
        async with uow:
            due = await uow.tokens.due(now, ctx.sweep_batch)
        expired = 0
        for token_id, scanner_id in due:
            async with uow:
                await uow.scanners.get_for_update(scanner_id)
                token = await uow.tokens.expire(token_id, now)
                if token is not None:
                    _emit_expired(uow, token)
                    await uow.commit()
                    expired += 1
        total += expired
        if expired < ctx.sweep_batch:
            break
    if total:
        log.info("tokens expired", extra={"count": total})
    return total


# ------------------------------------------------------------------------------ directory view


async def on_scanner_registered(uow: UnitOfWork, _: CloudEvent, data: ScannerRegistered) -> None:
    await uow.scanners.register(
        data.scanner_id, data.org_id, data.serial_number, data.name, data.model
    )


async def on_scanner_removed(
    uow: UnitOfWork, _: CloudEvent, data: ScannerRemoved, *, clock: Clock = utcnow
) -> None:
    """Hide the scanner for good, revoke its active token and, if it is authorised, withdraw
    that (ScannerDeauthorised, reason scanner_removed). Unknown or removed already: nothing."""
    scanner = await uow.scanners.get_for_update(data.scanner_id)
    if scanner is None or scanner.removed_at is not None:
        return
    now = clock()
    await uow.scanners.mark_removed(data.scanner_id, now)
    await _end_active_token(uow, data.scanner_id, now, by=DIRECTORY_ACTOR, reason="revoked")
    if scanner.authorised and scanner.org_id is not None:
        await _deauthorise(
            uow, scanner, scanner.org_id, now, by=DIRECTORY_ACTOR, reason="scanner_removed"
        )
    log.info("scanner removed", extra={"scanner_id": data.scanner_id})


async def on_user_upserted(uow: UnitOfWork, _: CloudEvent, data: UserUpserted) -> None:
    await uow.people.upsert_user(data.user_id, data.org_id, data.email, data.display_name)


async def on_access_granted(uow: UnitOfWork, _: CloudEvent, data: ScannerAccessGranted) -> None:
    await uow.people.grant(data.scanner_id, data.user_id)


async def on_access_revoked(uow: UnitOfWork, _: CloudEvent, data: ScannerAccessRevoked) -> None:
    await uow.people.revoke_grant(data.scanner_id, data.user_id)


# ------------------------------------------------------------------------- authorisation view


async def on_scanner_authorised(
    uow: UnitOfWork, _: CloudEvent, data: ScannerAuthorised, *, clock: Clock = utcnow
) -> None:
    """The token is redeemed; the scanner is authorised with the new credential, unless the
    event is stale, or the scanner was removed (then withdrawn at once: fail closed)."""
    await uow.scanners.ensure(data.scanner_id, data.org_id)
    scanner = await uow.scanners.get_for_update(data.scanner_id)
    assert scanner is not None
    await _redeem(uow, data)
    current = scanner.authorised_at if scanner.authorised else None
    deauthorised_at = scanner.deauthorised_at
    if not domain.authorisation_applies(
        data.authorised_at, current_authorised_at=current, deauthorised_at=deauthorised_at
    ):
        return
    if scanner.removed_at is not None:  # the redeemer had not heard of the removal yet
        org_id = scanner.org_id or data.org_id
        await _deauthorise(
            uow, scanner, org_id, clock(), by=DIRECTORY_ACTOR, reason="scanner_removed",
            credential_id=data.credential_id,
        )  # fmt: skip
        return
    await uow.scanners.set_authorised(
        data.scanner_id, at=data.authorised_at, credential_id=data.credential_id,
        serial_number=data.serial_number,
    )  # fmt: skip


async def on_credential_rotated(uow: UnitOfWork, _: CloudEvent, data: CredentialRotated) -> None:
    """The scanner's credential id follows a rotation, unless it is no longer authorised."""
    scanner = await uow.scanners.get_for_update(data.scanner_id)
    if scanner is not None and domain.rotation_applies(scanner, data.rotated_at):
        await uow.scanners.set_credential(data.scanner_id, data.credential_id)


# ------------------------------------------------------------------------------------ steps


async def _scanner(
    uow: UnitOfWork, principal: Principal, scanner_id: str, *, manage: bool, for_update: bool
) -> tuple[Scanner, Access]:
    """The scanner and the caller's access to it; ScannerNotFound or ManageForbidden when the
    policy refuses. `for_update`: its row locked until the unit of work ends (before writing
    events for it)."""
    if for_update:
        found = await uow.scanners.get_with_grant_for_update(scanner_id, principal.user_id)
    else:
        found = await uow.scanners.get_with_grant(scanner_id, principal.user_id)
    scanner, granted = found
    access = domain.access_to_scanner(principal, scanner, has_grant=granted)
    domain.require(access, manage=manage)
    assert scanner is not None
    return scanner, access


def _org(scanner: Scanner) -> str:
    assert scanner.org_id is not None, "a visible scanner has an organisation"
    return scanner.org_id


async def _end_active_token(
    uow: UnitOfWork, scanner_id: str, now: datetime, *, by: str, reason: RevokeReason
) -> tuple[str, Literal["expired", "revoked"]] | None:
    """End the scanner's active token (its row locked): revoked with `reason`, or expired when
    it is past its expiry time. (token id, how), or None if there was none."""
    token = await uow.tokens.active(scanner_id)
    if token is None:
        return None
    if domain.retirement_for(token.expires_at, now) == EXPIRED:
        expired = await uow.tokens.expire(token.token_id, now)
        if expired is None:
            return None
        _emit_expired(uow, expired)
        return token.token_id, "expired"
    if not await uow.tokens.revoke(token.token_id, at=now, by=by, reason=reason):
        return None
    revoked = TokenRevoked(
        token_id=token.token_id, scanner_id=scanner_id, org_id=token.org_id, revoked_by=by,
        reason=reason, revoked_at=now,
    )  # fmt: skip
    uow.emit(revoked)
    metrics.TOKENS_ENDED.labels(reason).inc()
    return token.token_id, "revoked"


def _emit_expired(uow: UnitOfWork, token: Token) -> None:
    expired = TokenExpired(
        token_id=token.token_id,
        scanner_id=token.scanner_id,
        org_id=token.org_id,
        expired_at=token.expires_at,
    )
    uow.emit(expired)
    metrics.TOKENS_ENDED.labels("expired").inc()


async def _deauthorise(
    uow: UnitOfWork, scanner: Scanner, org_id: str, now: datetime, *, by: str, reason: str,
    credential_id: str | None = None,
) -> None:  # fmt: skip
    await uow.scanners.set_deauthorised(scanner.scanner_id, now)
    withdrawn = ScannerDeauthorised(
        scanner_id=scanner.scanner_id, org_id=org_id,
        credential_id=domain.credential_to_withdraw(scanner, credential_id),
        deauthorised_by=by, reason=reason, deauthorised_at=now,
    )  # fmt: skip
    uow.emit(withdrawn)
    metrics.DEAUTHORISATIONS.labels(reason).inc()


async def _redeem(uow: UnitOfWork, data: ScannerAuthorised) -> None:
    """Mark the token the scanner redeemed as such (also if the sweeper expired it after the
    redemption, before we heard of it)."""
    token = await uow.tokens.get(data.token_id)
    if (
        token is not None
        and token.scanner_id == data.scanner_id
        and domain.redemption_applies(token.status, token.expires_at, data.authorised_at)
        and await uow.tokens.redeem(token.token_id, data.authorised_at)
    ):
        metrics.TOKENS_ENDED.labels("redeemed").inc()


def _log(entry: AuditEntry) -> None:
    """The audit row, also as a line of the audit logger (fields only: never a code)."""
    audit_log.info(
        "audit %s",
        entry.action,
        extra={
            "audit_action": entry.action,
            "actor_user_id": entry.actor_user_id,
            "actor_org_id": entry.actor_org_id,
            "scanner_id": entry.scanner_id,
            "token_id": entry.token_id,
            "recipient_user_id": entry.recipient_user_id,
            "notification_id": entry.notification_id,
        },
    )
