"""The redeemer's use cases: load (repositories), decide (domain), commit (state and events in
one unit of work). One function per command and per consumed event type; dependencies are
parameters. Refusals are `domain` exceptions; a refused redemption still commits what it
counts (the failure, the AuthorisationRejected event) before it raises.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NoReturn

from scanner_auth_shared.crypto import (
    code_digest,
    credential_digest,
    digests_equal,
    generate_credential,
    looks_like_credential,
)
from scanner_auth_shared.events import (
    AuthorisationRejected,
    CloudEvent,
    CredentialRotated,
    CredentialsRevoked,
    ScannerAuthorised,
    ScannerDeauthorised,
    ScannerRegistered,
    ScannerRemoved,
    TokenExpired,
    TokenIssued,
    TokenRevoked,
)

from . import domain, metrics
from .adapters.ports import UnitOfWork
from .domain import Attempt, AttemptState, Credential, RejectionReason, TokenView

log = logging.getLogger("scanner_auth.redeemer")


@dataclass(frozen=True, slots=True)
class Config:
    """What the use cases are configured with (app.py builds it from the settings)."""

    pepper: bytes = field(repr=False)  # TOKEN_PEPPER: the key of code digests
    throttle: domain.ThrottlePolicy = field(default_factory=domain.ThrottlePolicy)
    rotation_grace: timedelta = timedelta(hours=1)
    # At most this many rotations per scanner within any hour (ROTATION_LIMIT_PER_HOUR).
    rotation_limit_per_hour: int = 6
    # The one piece of state the use cases share, per replica: refusals while locked out,
    # reported together (domain.RejectionTally).
    rejections: domain.RejectionTally = field(default_factory=domain.RejectionTally)


@dataclass(frozen=True, slots=True)
class Authorised:
    scanner_id: str
    credential_id: str
    credential: str = field(repr=False)
    authorised_at: datetime


@dataclass(frozen=True, slots=True)
class Rotated:
    credential_id: str
    credential: str = field(repr=False)
    previous_valid_until: datetime
    scanner_id: str
    previous_credential_id: str


# ------------------------------------------------------------------------------------ redeem


async def redeem_code(
    uow: UnitOfWork, config: Config, code: str, serial: str, client_ip: str
) -> Authorised:
    """Redeem the code as typed for the scanner with `serial` (trimmed): its new credential.
    Raises MalformedRequest or TypoInCode (not attempts), RateLimited or CodeRefused."""
    try:
        flat = domain.flat_code(code)
        authorised = await _redeem(uow, config, flat, Attempt(serial, client_ip))
    except domain.RedemptionRefused as refused:
        metrics.REDEMPTIONS.labels(refused.outcome).inc()
        raise
    metrics.REDEMPTIONS.labels("authorised").inc()
    log.info(
        "scanner authorised",
        extra={"scanner_id": authorised.scanner_id, "credential_id": authorised.credential_id},
    )
    return authorised


async def _redeem(uow: UnitOfWork, config: Config, flat: str, attempt: Attempt) -> Authorised:
    async with uow:
        state = await _take_turn(uow, attempt)
        wait = state.retry_after()
        if wait is not None:
            if config.rejections.report_now(attempt.serial, attempt.client_ip, state.now):
                _rejected(uow, attempt, "rate_limited", state.now, key=attempt.serial)
                await uow.commit()
            raise domain.RateLimited(wait)
        digest = code_digest(config.pepper, flat)
        token, reason = await _use_token(uow, digest, attempt.serial, state.now)
        if reason is not None or token is None:
            await _refuse(uow, config, attempt, state, token, reason or "invalid_code")
        authorised = await _authorise(uow, token, attempt)
        await uow.commit()
    return authorised


async def _take_turn(uow: UnitOfWork, attempt: Attempt) -> AttemptState:
    """The throttle state of the attempt, to judge it by. A locked serial or address is answered
    without queueing behind anyone: a flood against a lock costs one read and one event each.
    Otherwise take this serial's and this address's turn, then read again: the counts cannot
    change under us until commit."""
    state = await uow.throttles.state(attempt.serial_key, attempt.address)
    if state.retry_after() is not None:
        return state
    await uow.throttles.lock(attempt.serial_key, attempt.address)
    return await uow.throttles.state(attempt.serial_key, attempt.address)


async def _use_token(
    uow: UnitOfWork, digest: str, serial: str, now: datetime
) -> tuple[TokenView | None, domain.Reason | None]:
    """The token of the code, marked redeemed; or why it may not be (and the token, if any)."""
    token = await uow.tokens.by_digest(digest)
    if token is not None and not digests_equal(token.code_digest, digest):
        token = None
    reason = domain.refusal(token, serial, now)
    if reason is None and token is not None and not await uow.tokens.mark_redeemed(token.token_id):
        # Lost a race (another attempt redeemed it, or a revocation or expiry landed first): the
        # re-read, a fresh snapshot, says which.
        reread = await uow.tokens.by_id(token.token_id)
        reason = domain.refusal(reread, serial, now) or "already_used"
    return token, reason


async def _refuse(
    uow: UnitOfWork,
    config: Config,
    attempt: Attempt,
    state: AttemptState,
    token: TokenView | None,
    reason: domain.Reason,
) -> NoReturn:
    """Count the failure and publish why, commit, then raise CodeRefused."""
    lockouts = await _count_failure(uow, config.throttle, attempt, state)
    key = attempt.serial  # no token: the event is keyed by the serial number as presented
    if token is not None:
        key = token.scanner_id
        await uow.credentials.lock_scanner(token.scanner_id)  # per-scanner event order
    _rejected(uow, attempt, reason, state.now, key=key)
    await uow.commit()
    for scope in lockouts:
        metrics.LOCKOUTS.labels(scope).inc()
        log.warning(
            "redemption throttle locked a %s",
            scope,
            extra={
                "scope": scope,
                "serial_number": attempt.serial[:64],
                "address": attempt.address,
            },
        )
    raise domain.CodeRefused(reason)


async def _count_failure(
    uow: UnitOfWork, policy: domain.ThrottlePolicy, attempt: Attempt, state: AttemptState
) -> list[str]:
    """One failure against the serial and the address; the scopes it locked."""
    serial, serial_locked = domain.serial_failed(state.serial, state.now, policy)
    await uow.throttles.save_serial(attempt.serial_key, serial, state.now)
    address, address_locked = domain.address_failed(state.address, state.now, policy)
    await uow.throttles.save_address(attempt.address, address, state.now)
    return [
        scope
        for scope, locked in (("serial", serial_locked), ("address", address_locked))
        if locked
    ]


def _rejected(
    uow: UnitOfWork,
    attempt: Attempt,
    reason: RejectionReason,
    now: datetime,
    *,
    key: str,
    attempts: int = 1,
) -> None:
    data = AuthorisationRejected(
        serial_number=attempt.serial[: domain.SERIAL_MAX_LENGTH],
        reason=reason,
        client_ip=attempt.client_ip,
        rejected_at=now,
        attempts=attempts,
    )
    uow.emit(data, subject=key)


async def report_refusals_while_locked(uow: UnitOfWork, config: Config) -> int:
    """One `AuthorisationRejected` (rate_limited, `attempts`) per serial number and address
    refused while locked out since the last report, besides the first, reported at once. The
    number of events written."""
    due, overflow = config.rejections.drain()
    if overflow:
        log.warning("refusals while locked out beyond the tally", extra={"refusals": overflow})
    if not due:
        return 0
    try:
        async with uow:
            for serial, client_ip, count, last in due:
                attempt = Attempt(serial, client_ip)
                _rejected(uow, attempt, "rate_limited", last, key=serial, attempts=count)
            await uow.commit()
    except BaseException:
        config.rejections.restore(due)
        raise
    return len(due)


async def _authorise(uow: UnitOfWork, token: TokenView, attempt: Attempt) -> Authorised:
    """The scanner's earlier credentials replaced by a new one, the serial's failures cleared."""
    stamp = await uow.credentials.lock_scanner(token.scanner_id)
    new, secret = _new_credential(token.scanner_id, token.org_id, stamp, token_id=token.token_id)
    await uow.credentials.replace_live(token.scanner_id, stamp)
    await uow.credentials.add(new)
    await uow.throttles.clear_serial(attempt.serial_key)
    uow.emit(
        ScannerAuthorised(
            scanner_id=new.scanner_id,
            org_id=new.org_id,
            token_id=token.token_id,
            serial_number=attempt.serial,
            credential_id=new.credential_id,
            credential_digest=new.credential_digest,
            authorised_at=stamp,
        )
    )
    return Authorised(new.scanner_id, new.credential_id, secret, stamp)


def _new_credential(
    scanner_id: str,
    org_id: str,
    stamp: datetime,
    *,
    token_id: str | None = None,
    previous_credential_id: str | None = None,
) -> tuple[Credential, str]:
    """A fresh credential (256 random bits) and the record of it that is kept: its digest."""
    secret = generate_credential()
    credential = Credential(
        credential_id=str(uuid.uuid4()),
        scanner_id=scanner_id,
        org_id=org_id,
        credential_digest=credential_digest(secret),
        status="active",
        issued_at=stamp,
        token_id=token_id,
        previous_credential_id=previous_credential_id,
    )
    return credential, secret


# ------------------------------------------------------------------------------------ credentials


async def rotate_credential(uow: UnitOfWork, config: Config, presented: str | None) -> Rotated:
    """Exchange the scanner's current credential for a new one; the old one enters its grace
    period. Raises NotAuthenticated, CannotRotate, or RotationLimited (the scanner rotated
    `rotation_limit_per_hour` times within the last hour)."""
    try:
        rotated = await _rotate(uow, config, presented)
    except (domain.NotAuthenticated, domain.CannotRotate, domain.RotationLimited) as refused:
        metrics.ROTATIONS.labels(refused.outcome).inc()
        raise
    metrics.ROTATIONS.labels("rotated").inc()
    log.info(
        "credential rotated",
        extra={
            "scanner_id": rotated.scanner_id,
            "credential_id": rotated.credential_id,
            "previous_credential_id": rotated.previous_credential_id,
        },
    )
    return rotated


async def _rotate(uow: UnitOfWork, config: Config, presented: str | None) -> Rotated:
    digest = _digest_of(presented)
    async with uow:
        found = await _issued_credential(uow, digest)
        stamp = await uow.credentials.lock_scanner(found.scanner_id)
        current = await uow.credentials.by_id(found.credential_id)  # again, under the lock
        if current is None or current.standing(stamp) != "current":
            raise domain.CannotRotate()
        # Under the scanner's lock: parallel rotations cannot both pass the count.
        recent = await uow.credentials.rotations_since(
            current.scanner_id, stamp - domain.ROTATION_WINDOW
        )
        wait = domain.rotation_retry_after(recent, stamp, config.rotation_limit_per_hour)
        if wait is not None:
            raise domain.RotationLimited(wait)
        valid_until = stamp + config.rotation_grace
        await uow.credentials.start_grace(current.credential_id, valid_until)
        new, secret = _new_credential(
            current.scanner_id, current.org_id, stamp, previous_credential_id=current.credential_id
        )
        await uow.credentials.add(new)
        uow.emit(
            CredentialRotated(
                scanner_id=new.scanner_id,
                org_id=new.org_id,
                credential_id=new.credential_id,
                credential_digest=new.credential_digest,
                previous_credential_id=current.credential_id,
                previous_valid_until=valid_until,
                rotated_at=stamp,
            )
        )
        await uow.commit()
    return Rotated(new.credential_id, secret, valid_until, new.scanner_id, current.credential_id)


def _digest_of(presented: str | None) -> str:
    """The digest of a credential presented; NotAuthenticated when it is not one."""
    if not presented or not looks_like_credential(presented):
        raise domain.NotAuthenticated()
    return credential_digest(presented)


async def _issued_credential(uow: UnitOfWork, digest: str) -> Credential:
    """The credential of this digest, if this service issued it; else NotAuthenticated."""
    found = await uow.credentials.by_digest(digest)
    if found is None or not digests_equal(found.credential_digest, digest):
        raise domain.NotAuthenticated()
    return found


async def credential_standing(uow: UnitOfWork, presented: str) -> domain.Standing:
    """How a credential stands now: what the rotation goes by, and what operators ask."""
    try:
        digest = _digest_of(presented)
        async with uow:
            found = await _issued_credential(uow, digest)
            return found.standing(await uow.credentials.now())
    except domain.NotAuthenticated:
        return "unknown"


# ------------------------------------------------------------------------------------ housekeeping


async def forget_stale_throttles(uow: UnitOfWork, retention_seconds: float) -> None:
    """Throttle rows idle for `retention_seconds` whose lock has passed are forgotten (a serial
    number's consecutive count starts again from zero)."""
    async with uow:
        await uow.throttles.forget_stale_serials(retention_seconds)
        await uow.throttles.forget_stale_addresses(retention_seconds)
        await uow.commit()


# ------------------------------------------------------------------------------------ events
# Consumed events: each applied inside the consumer's unit of work (which claims the event in
# the inbox, so a redelivery has no second effect, and commits the batch).


async def on_token_issued(uow: UnitOfWork, event: CloudEvent, data: TokenIssued) -> None:
    await uow.tokens.issued(
        token_id=data.token_id,
        scanner_id=data.scanner_id,
        org_id=data.org_id,
        code_digest=data.code_digest,
        issued_at=data.issued_at,
        expires_at=data.expires_at,
    )


async def on_token_revoked(uow: UnitOfWork, event: CloudEvent, data: TokenRevoked) -> None:
    await uow.tokens.ended(
        token_id=data.token_id,
        scanner_id=data.scanner_id,
        org_id=data.org_id,
        status="revoked",
        at=data.revoked_at,
    )


async def on_token_expired(uow: UnitOfWork, event: CloudEvent, data: TokenExpired) -> None:
    await uow.tokens.ended(
        token_id=data.token_id,
        scanner_id=data.scanner_id,
        org_id=data.org_id,
        status="expired",
        at=data.expired_at,
    )


async def on_scanner_deauthorised(
    uow: UnitOfWork, event: CloudEvent, data: ScannerDeauthorised
) -> None:
    """Every live credential of the scanner, whenever it was issued, is revoked, and
    `CredentialsRevoked` names them (same transaction, through the outbox).

    Decided by this service's own order, never by comparing `deauthorised_at` (the
    token-issuer's clock) with issue times (ours): under the scanner's lock, every credential
    issued before this transaction is live or already ended, and one issued after it (a new
    redemption) is not touched. The event is emitted even when nothing was live, so that every
    consumer learns the deauthorisation was applied (and the gate closes any credential it
    knows for the scanner: one the redeemer never issued included)."""
    revoked_at = await uow.credentials.lock_scanner(data.scanner_id)
    revoked = await uow.credentials.revoke_live(data.scanner_id)
    uow.emit(
        CredentialsRevoked(
            scanner_id=data.scanner_id,
            org_id=data.org_id,
            credential_ids=revoked,
            reason=data.reason,
            revoked_at=revoked_at,
            cause_event_id=event.id,
        )
    )
    # Counted when applied: a batch retried after an outage counts its revocations again.
    metrics.CREDENTIALS_REVOKED.inc(len(revoked))
    log.info(
        "scanner deauthorised",
        extra={"scanner_id": data.scanner_id, "credentials_revoked": len(revoked)},
    )


async def on_scanner_registered(
    uow: UnitOfWork, event: CloudEvent, data: ScannerRegistered
) -> None:
    await uow.scanners.registered(data.scanner_id, data.org_id, data.serial_number)


async def on_scanner_removed(uow: UnitOfWork, event: CloudEvent, data: ScannerRemoved) -> None:
    await uow.scanners.removed(data.scanner_id)
