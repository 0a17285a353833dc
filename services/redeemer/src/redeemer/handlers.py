"""The redeemer's use cases: load, decide (domain), commit state and events in one transaction."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from scanner_auth_shared.crypto import (
    code_digest,
    credential_digest,
    digests_equal,
    generate_credential,
    looks_like_credential,
)
from scanner_auth_shared.db import Database
from scanner_auth_shared.events import (
    PUBLIC_TOPIC,
    AuthorisationRejected,
    CloudEvent,
    CredentialRotated,
    EventData,
    ScannerAuthorised,
    ScannerDeauthorised,
    ScannerRegistered,
    ScannerRemoved,
    TokenExpired,
    TokenIssued,
    TokenRevoked,
    new_event,
)
from scanner_auth_shared.outbox import enqueue, first_time

from . import domain, metrics
from .adapters.repository import AttemptState, Repository
from .settings import Settings

log = logging.getLogger("scanner_auth.redeemer")

SOURCE = "scanner-auth/redeemer"
AUTHORISATION_CONSUMER = "redeemer.authorisation"
DIRECTORY_CONSUMER = "redeemer.directory"


# ------------------------------------------------------------------------------------ outcomes


@dataclass(frozen=True, slots=True)
class Authorised:
    scanner_id: str
    credential_id: str
    credential: str = field(repr=False)
    authorised_at: datetime


@dataclass(frozen=True, slots=True)
class Refused:
    reason: domain.Reason


@dataclass(frozen=True, slots=True)
class RateLimited:
    retry_after: int


RedeemOutcome = Authorised | Refused | RateLimited


@dataclass(frozen=True, slots=True)
class Rotated:
    credential_id: str
    credential: str = field(repr=False)
    previous_valid_until: datetime


@dataclass(frozen=True, slots=True)
class Unauthenticated:
    """No credential, a malformed one, or one this service never issued."""


@dataclass(frozen=True, slots=True)
class Forbidden:
    """A credential this service issued that may no longer rotate (replaced, revoked, already
    rotated out: in its grace period or past it)."""


RotateOutcome = Rotated | Unauthenticated | Forbidden


# ------------------------------------------------------------------------------------ use cases


class Redeemer:
    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.settings = settings
        self._pepper = settings.token_pepper.get_secret_value().encode()
        self.policy = domain.ThrottlePolicy(
            serial_failures=settings.serial_lockout_failures,
            serial_lock=timedelta(seconds=settings.serial_lockout_seconds),
            address_failures=settings.address_lockout_failures,
            address_window=timedelta(seconds=settings.address_window_seconds),
        )
        self.grace = timedelta(seconds=settings.credential_rotation_grace_seconds)

    # ------------------------------------------------------------------ redemption

    async def redeem(self, flat_code: str, serial: str, client_ip: str) -> RedeemOutcome:
        """Redeem a normalised (flat) code for the scanner with `serial` (already trimmed)."""
        digest = code_digest(self._pepper, flat_code)
        serial_key = domain.serial_key(serial)
        address = domain.address_key(client_ip)
        lockouts: list[str] = []
        async with self.database.transaction() as session:
            repo = Repository(session)
            # A locked serial or address is answered without queueing behind anyone: a flood
            # against a lock costs one read and one event each.
            state = await repo.attempt_state(serial_key, address)
            now = state.now
            wait = domain.retry_after(now, state.serial.locked_until, state.address.locked_until)
            if wait is None:
                # Otherwise take this serial's and this address's turn, then read again: the
                # counts cannot change under us until commit.
                await repo.lock_attempts(serial_key, address)
                state = await repo.attempt_state(serial_key, address)
                wait = domain.retry_after(
                    now, state.serial.locked_until, state.address.locked_until
                )
            if wait is not None:
                await self._rejected(repo, serial, client_ip, "rate_limited", now, key=serial)
                outcome: RedeemOutcome = RateLimited(wait)
            else:
                token = await repo.find_token(digest)
                if token is not None and not digests_equal(token.code_digest, digest):
                    token = None
                reason = domain.refusal(token, serial, now)
                if reason is None and token is not None and not await repo.redeem(token.token_id):
                    # Lost a race (another attempt redeemed it, or a revocation/expiry landed
                    # first): the re-read, a fresh snapshot, says which.
                    reason = domain.refusal(await repo.token_by_id(token.token_id), serial, now)
                    reason = reason or "already_used"
                if reason is not None or token is None:
                    reason = reason or "invalid_code"
                    lockouts = await self._failed(repo, serial_key, address, state)
                    if token is not None:
                        await repo.lock_scanner(token.scanner_id)  # per-scanner event order
                    await self._rejected(
                        repo,
                        serial,
                        client_ip,
                        reason,
                        now,
                        key=token.scanner_id if token is not None else serial,
                    )
                    outcome = Refused(reason)
                else:
                    outcome = await self._authorise(
                        repo, token.scanner_id, token.org_id, token.token_id, serial, serial_key
                    )
        self._observe(outcome, lockouts, serial, address)
        return outcome

    async def _failed(
        self, repo: Repository, serial_key: str, address: str, state: AttemptState
    ) -> list[str]:
        """Count one failure against the serial and the address; returns the locks it caused."""
        lockouts = []
        serial_state, serial_locked = domain.serial_failed(state.serial, state.now, self.policy)
        await repo.save_serial(serial_key, serial_state, state.now)
        address_state, address_locked = domain.address_failed(state.address, state.now, self.policy)
        await repo.save_address(address, address_state, state.now)
        if serial_locked:
            lockouts.append("serial")
        if address_locked:
            lockouts.append("address")
        return lockouts

    async def _rejected(
        self,
        repo: Repository,
        serial: str,
        client_ip: str,
        reason: domain.RejectionReason,
        now: datetime,
        *,
        key: str,
    ) -> None:
        data = AuthorisationRejected(
            serial_number=serial[: domain.SERIAL_MAX_LENGTH],
            reason=reason,
            client_ip=client_ip,
            rejected_at=now,
        )
        await enqueue(
            repo.session, new_event(data, source=SOURCE, subject=key), topic=PUBLIC_TOPIC, key=key
        )

    async def _authorise(
        self,
        repo: Repository,
        scanner_id: str,
        org_id: str,
        token_id: str,
        serial: str,
        serial_key: str,
    ) -> Authorised:
        stamp = await repo.lock_scanner(scanner_id)
        credential = generate_credential()
        credential_id = str(uuid.uuid4())
        digest = credential_digest(credential)
        # Earlier credentials replaced, the new one inserted, the serial's failures cleared:
        # one round trip.
        await repo.authorise(
            credential_id=credential_id,
            scanner_id=scanner_id,
            org_id=org_id,
            credential_digest=digest,
            at=stamp,
            token_id=token_id,
            serial_key=serial_key,
        )
        data = ScannerAuthorised(
            scanner_id=scanner_id,
            org_id=org_id,
            token_id=token_id,
            serial_number=serial,
            credential_id=credential_id,
            credential_digest=digest,
            authorised_at=stamp,
        )
        await enqueue(
            repo.session, new_event(data, source=SOURCE), topic=PUBLIC_TOPIC, key=scanner_id
        )
        return Authorised(scanner_id, credential_id, credential, stamp)

    def _observe(
        self, outcome: RedeemOutcome, lockouts: list[str], serial: str, address: str
    ) -> None:
        """Metrics and logs, once the transaction has committed."""
        for scope in lockouts:
            metrics.LOCKOUTS.labels(scope).inc()
            log.warning(
                "redemption throttle locked a %s",
                scope,
                extra={"scope": scope, "serial_number": serial[:64], "address": address},
            )
        if isinstance(outcome, Authorised):
            metrics.REDEMPTIONS.labels("authorised").inc()
            log.info(
                "scanner authorised",
                extra={"scanner_id": outcome.scanner_id, "credential_id": outcome.credential_id},
            )
        elif isinstance(outcome, Refused):
            metrics.REDEMPTIONS.labels(outcome.reason).inc()
        else:
            metrics.REDEMPTIONS.labels("rate_limited").inc()

    # ------------------------------------------------------------------ credentials

    async def rotate(self, presented: str | None) -> RotateOutcome:
        """Exchange a current credential for a new one; the old one enters its grace period."""
        outcome = await self._rotate(presented)
        metrics.ROTATIONS.labels(
            "rotated"
            if isinstance(outcome, Rotated)
            else "unauthenticated"
            if isinstance(outcome, Unauthenticated)
            else "forbidden"
        ).inc()
        return outcome

    async def _rotate(self, presented: str | None) -> RotateOutcome:
        if not presented or not looks_like_credential(presented):
            return Unauthenticated()
        digest = credential_digest(presented)
        async with self.database.transaction() as session:
            repo = Repository(session)
            found = await repo.credential_by_digest(digest)
            if found is None or not digests_equal(found.credential_digest, digest):
                return Unauthenticated()
            stamp = await repo.lock_scanner(found.scanner_id)
            current = await repo.credential_by_id(found.credential_id)  # under the lock
            if (
                current is None
                or domain.standing(current.status, current.valid_until, stamp) != "current"
            ):
                return Forbidden()
            valid_until = stamp + self.grace
            await repo.start_grace(current.credential_id, valid_until)
            credential = generate_credential()
            credential_id = str(uuid.uuid4())
            new_digest = credential_digest(credential)
            await repo.insert_credential(
                credential_id=credential_id,
                scanner_id=current.scanner_id,
                org_id=current.org_id,
                credential_digest=new_digest,
                issued_at=stamp,
                previous_credential_id=current.credential_id,
            )
            data = CredentialRotated(
                scanner_id=current.scanner_id,
                org_id=current.org_id,
                credential_id=credential_id,
                credential_digest=new_digest,
                previous_credential_id=current.credential_id,
                previous_valid_until=valid_until,
                rotated_at=stamp,
            )
            await enqueue(
                session, new_event(data, source=SOURCE), topic=PUBLIC_TOPIC, key=current.scanner_id
            )
        log.info(
            "credential rotated",
            extra={
                "scanner_id": current.scanner_id,
                "credential_id": credential_id,
                "previous_credential_id": current.credential_id,
            },
        )
        return Rotated(credential_id, credential, valid_until)

    async def credential_standing(self, presented: str) -> domain.Standing:
        """How a credential stands now (what the rotation endpoint and operators go by)."""
        if not looks_like_credential(presented):
            return "unknown"
        digest = credential_digest(presented)
        async with self.database.transaction() as session:
            repo = Repository(session)
            found = await repo.credential_by_digest(digest)
            if found is None or not digests_equal(found.credential_digest, digest):
                return "unknown"
            return domain.standing(found.status, found.valid_until, await repo.now())

    # ------------------------------------------------------------------ consumed events

    async def apply_public_event(self, event: CloudEvent, data: EventData) -> None:
        """The public topic: the token view, or a deauthorisation."""
        if isinstance(data, ScannerDeauthorised):
            await self.apply_deauthorisation(event, data)
        else:
            await self.apply_token_event(event, data)

    async def apply_token_event(self, event: CloudEvent, data: EventData) -> None:
        """TokenIssued / TokenRevoked / TokenExpired into the token view (idempotent)."""
        async with self.database.transaction() as session:
            if not await first_time(session, AUTHORISATION_CONSUMER, event.id):
                return
            repo = Repository(session)
            if isinstance(data, TokenIssued):
                await repo.token_issued(
                    token_id=data.token_id,
                    scanner_id=data.scanner_id,
                    org_id=data.org_id,
                    code_digest=data.code_digest,
                    issued_at=data.issued_at,
                    expires_at=data.expires_at,
                )
            elif isinstance(data, TokenRevoked):
                await repo.token_ended(
                    token_id=data.token_id,
                    scanner_id=data.scanner_id,
                    org_id=data.org_id,
                    status="revoked",
                    at=data.revoked_at,
                )
            elif isinstance(data, TokenExpired):
                await repo.token_ended(
                    token_id=data.token_id,
                    scanner_id=data.scanner_id,
                    org_id=data.org_id,
                    status="expired",
                    at=data.expired_at,
                )

    async def apply_deauthorisation(self, event: CloudEvent, data: ScannerDeauthorised) -> None:
        """ScannerDeauthorised: every credential of the scanner issued up to then is revoked."""
        async with self.database.transaction() as session:
            if not await first_time(session, AUTHORISATION_CONSUMER, event.id):
                return
            revoked = await Repository(session).deauthorise(
                data.scanner_id, data.deauthorised_at, data.credential_id
            )
        metrics.CREDENTIALS_REVOKED.inc(revoked)
        log.info(
            "scanner deauthorised",
            extra={"scanner_id": data.scanner_id, "credentials_revoked": revoked},
        )

    async def apply_directory_event(self, event: CloudEvent, data: EventData) -> None:
        """ScannerRegistered / ScannerRemoved into the serial-number view (idempotent)."""
        async with self.database.transaction() as session:
            if not await first_time(session, DIRECTORY_CONSUMER, event.id):
                return
            repo = Repository(session)
            if isinstance(data, ScannerRegistered):
                await repo.scanner_registered(data.scanner_id, data.org_id, data.serial_number)
            elif isinstance(data, ScannerRemoved):
                await repo.scanner_removed(data.scanner_id)

    # ------------------------------------------------------------------ housekeeping

    async def forget_stale_throttles(self) -> None:
        async with self.database.transaction() as session:
            await Repository(session).forget_stale_throttles(
                self.settings.throttle_retention_seconds
            )

    async def housekeeping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.throttle_cleanup_interval_seconds)
            try:
                await self.forget_stale_throttles()
            except Exception as exc:
                log.warning(
                    "throttle cleanup failed; will retry", extra={"error": type(exc).__name__}
                )
