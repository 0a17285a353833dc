"""Use cases of the token-issuer: load, decide (domain.py), commit state and events together.

Every state change and the events it causes are written in one transaction (the outbox), after
locking the scanner's row. Secrets: the code exists in clear only in memory, on its way to the
HTTP response or into the sealed form for the notifier; it is never logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from scanner_auth_shared import crypto
from scanner_auth_shared.auth import Principal
from scanner_auth_shared.crypto import SecretBox, sealed_code_context, stored_code_context
from scanner_auth_shared.db import Database
from scanner_auth_shared.events import (
    CloudEvent,
    CredentialRotated,
    EventData,
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
    new_event,
    utcnow,
)
from scanner_auth_shared.outbox import enqueue, first_time
from scanner_auth_shared.settings import aes_key_bytes

from . import domain, metrics
from .adapters import repository as repo
from .adapters.tables import ScannerRow, TokenRow
from .domain import (
    ACTIVE,
    DIRECTORY_ACTOR,
    EXPIRED,
    NO_ACCESS,
    Access,
    AuditAction,
    AuthorisationStatus,
    TokenStatus,
)
from .settings import Settings

SERVICE = "token-issuer"
SOURCE = f"scanner-auth/{SERVICE}"
DIRECTORY_CONSUMER = f"{SERVICE}.directory"
AUTHORISATIONS_CONSUMER = f"{SERVICE}.authorisations"

log = logging.getLogger("scanner_auth.token_issuer")
audit_log = logging.getLogger("scanner_auth.token_issuer.audit")

Clock = Callable[[], datetime]


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


# ------------------------------------------------------------------------------------ service


class TokenIssuer:
    def __init__(self, database: Database, settings: Settings, *, clock: Clock = utcnow) -> None:
        self.db = database
        self.clock = clock
        self.ttl_seconds = settings.token_ttl_seconds
        self.sweep_interval = settings.expiry_sweep_interval_seconds
        self.sweep_batch = settings.expiry_sweep_batch_size
        self.record_interval = settings.principal_record_interval_seconds
        self._pepper = settings.token_pepper.get_secret_value().encode()
        self._code_box = SecretBox(aes_key_bytes(settings.code_encryption_key))
        self._sealing_box = SecretBox(aes_key_bytes(settings.sealing_key))
        # user id -> (monotonic time recorded, what was recorded)
        self._recorded: dict[str, tuple[float, tuple[str, frozenset[str], str | None]]] = {}

    # ---------------------------------------------------------------- access

    async def _scanner(
        self,
        session: AsyncSession,
        principal: Principal,
        scanner_id: str,
        *,
        manage: bool,
        lock: bool,
    ) -> tuple[ScannerRow, str, Access]:
        """The scanner, its organisation and the caller's access to it; ScannerNotFound (404)
        or ManageForbidden (403) when the policy refuses. With `lock`, the scanner's row stays
        locked until the transaction ends: required before writing events for it."""
        scanner, granted = await repo.scanner_with_grant(
            session, scanner_id, principal.user_id, lock=lock
        )
        access = (
            NO_ACCESS
            if scanner is None or not scanner.visible or scanner.org_id is None
            else domain.access_to(principal, scanner.org_id, has_grant=granted)
        )
        try:
            domain.require(access, manage=manage)
        except domain.ScannerNotFound:
            metrics.ACCESS_REFUSED.labels("404").inc()
            raise
        except domain.ManageForbidden:
            metrics.ACCESS_REFUSED.labels("403").inc()
            raise
        assert scanner is not None and scanner.org_id is not None
        return scanner, scanner.org_id, access

    # ---------------------------------------------------------------- principals

    async def record_principal(self, principal: Principal) -> None:
        """Remember who authenticates with which roles (to know an organisation's admins),
        at most once per `principal_record_interval_seconds` per user and process."""
        snapshot = (principal.org_id, principal.roles, principal.email)
        now = time.monotonic()
        last = self._recorded.get(principal.user_id)
        if last is not None and last[1] == snapshot and now - last[0] < self.record_interval:
            return
        if len(self._recorded) > 50_000:
            self._recorded.clear()
        self._recorded[principal.user_id] = (now, snapshot)
        try:
            async with self.db.transaction() as session:
                await repo.record_principal(
                    session,
                    user_id=principal.user_id,
                    org_id=principal.org_id,
                    roles=sorted(principal.roles),
                    email=principal.email,
                    at=self.clock(),
                )
        except Exception:
            self._recorded.pop(principal.user_id, None)
            raise

    # ---------------------------------------------------------------- scanners

    async def list_scanners(self, principal: Principal) -> list[ScannerSummary]:
        now = self.clock()
        async with self.db.transaction() as session:
            rows = await repo.candidate_scanners(
                session,
                user_id=principal.user_id,
                org_id=principal.org_id,
                support=principal.is_support,
                admin=principal.is_admin,
            )
        out: list[ScannerSummary] = []
        for row in rows:
            access = domain.access_to(principal, row["org_id"], has_grant=row["has_grant"])
            if not access.can_view:
                continue
            status = (
                domain.token_status(row["token_status"], row["token_expires_at"], now)
                if row["token_status"] is not None
                else None
            )
            out.append(
                ScannerSummary(
                    scanner_id=row["scanner_id"],
                    org_id=row["org_id"],
                    name=row["name"],
                    serial_number=row["serial_number"],
                    model=row["model"],
                    token_status=status,
                    token_expires_at=row["token_expires_at"],
                    authorisation_status="authorised" if row["authorised"] else "unauthorised",
                    authorised_at=row["authorised_at"] if row["authorised"] else None,
                    can_manage=access.can_manage,
                )
            )
        return out

    async def viewers(self, principal: Principal, scanner_id: str) -> list[Viewer]:
        async with self.db.transaction() as session:
            _, org_id, _ = await self._scanner(
                session, principal, scanner_id, manage=True, lock=False
            )
            people = await repo.people_around(session, scanner_id, org_id)
        return [
            Viewer(user_id=p.user_id, display_name=p.display_name, email=p.email)
            for p in people
            if p.email and domain.person_can_view(p, org_id)
        ]

    # ---------------------------------------------------------------- tokens

    async def generate(self, principal: Principal, scanner_id: str) -> TokenView:
        code = crypto.generate_code()
        token_id = str(uuid.uuid4())
        sealed_at_rest = self._code_box.seal_bytes(code, stored_code_context(token_id))
        digest = crypto.code_digest(self._pepper, crypto.normalise_code(code))
        async with self.db.transaction() as session:
            now = self.clock()
            _, org_id, _ = await self._scanner(
                session, principal, scanner_id, manage=True, lock=True
            )
            await self._end_active_token(
                session, scanner_id, now, by=principal.user_id, reason="superseded"
            )
            expires_at = domain.expiry_for(now, self.ttl_seconds)
            # The token and its audit row in one statement (one round trip fewer per issue).
            await repo.insert_generated_token(
                session,
                token_id=token_id,
                scanner_id=scanner_id,
                org_id=org_id,
                code_ciphertext=sealed_at_rest,
                code_digest=digest,
                issued_at=now,
                issued_by=principal.user_id,
                actor_org_id=principal.org_id,
                expires_at=expires_at,
            )
            await self._emit(
                session,
                TokenIssued(
                    token_id=token_id,
                    scanner_id=scanner_id,
                    org_id=org_id,
                    issued_by=principal.user_id,
                    issued_at=now,
                    expires_at=expires_at,
                    code_digest=digest,
                ),
            )
        metrics.TOKENS_ISSUED.inc()
        self._audit_line(principal, "generated", scanner_id, token_id=token_id)
        return TokenView(
            token_id=token_id,
            scanner_id=scanner_id,
            code=code,
            status=ACTIVE,
            issued_at=now,
            issued_by=principal.user_id,
            expires_at=expires_at,
            redeemed_at=None,
        )

    async def latest_token(self, principal: Principal, scanner_id: str) -> TokenView:
        async with self.db.transaction() as session:
            now = self.clock()
            await self._scanner(session, principal, scanner_id, manage=False, lock=False)
            token = await repo.latest_token(session, scanner_id)
            if token is None:
                raise domain.TokenNotFound()
            status = domain.token_status(token.status, token.expires_at, now)
            code = self._open_code(token) if status == ACTIVE else None
            if code is not None:
                await self._audit(
                    session, principal, "viewed_code", scanner_id, now, token_id=token.token_id
                )
        if code is not None:
            metrics.CODES_VIEWED.inc()
            self._audit_line(principal, "viewed_code", scanner_id, token_id=token.token_id)
        return TokenView(
            token_id=token.token_id,
            scanner_id=token.scanner_id,
            code=code,
            status=status,
            issued_at=token.issued_at,
            issued_by=token.issued_by,
            expires_at=token.expires_at,
            redeemed_at=token.redeemed_at,
        )

    async def revoke(self, principal: Principal, scanner_id: str) -> None:
        """Revoke the active token, if there is one (idempotent: none is fine)."""
        async with self.db.transaction() as session:
            now = self.clock()
            await self._scanner(session, principal, scanner_id, manage=True, lock=True)
            ended = await self._end_active_token(
                session, scanner_id, now, by=principal.user_id, reason="revoked"
            )
            if ended is not None and ended[1] == "revoked":
                await self._audit(session, principal, "revoked", scanner_id, now, token_id=ended[0])
        if ended is not None and ended[1] == "revoked":
            self._audit_line(principal, "revoked", scanner_id, token_id=ended[0])

    async def email_code(
        self, principal: Principal, scanner_id: str, recipient_user_id: str | None
    ) -> str:
        """Ask the notifier to email the active code; the notification id."""
        recipient_id = recipient_user_id or principal.user_id
        async with self.db.transaction() as session:
            now = self.clock()
            scanner, org_id, access = await self._scanner(
                session, principal, scanner_id, manage=False, lock=True
            )
            if recipient_id != principal.user_id and not access.can_manage:
                metrics.ACCESS_REFUSED.labels("403").inc()
                raise domain.ManageForbidden()
            token = await repo.active_token(session, scanner_id)
            if token is None or domain.token_status(token.status, token.expires_at, now) != ACTIVE:
                raise domain.NoActiveToken()
            person = await repo.person(session, recipient_id, scanner_id)
            email = domain.choose_recipient_email(principal, recipient_id, person, org_id)
            notification_id = str(uuid.uuid4())
            sealed = self._sealing_box.seal(
                self._open_code(token), sealed_code_context(token.token_id)
            )
            await self._emit(
                session,
                TokenEmailRequested(
                    notification_id=notification_id,
                    token_id=token.token_id,
                    scanner_id=scanner_id,
                    org_id=org_id,
                    recipient_user_id=recipient_id,
                    recipient_email=email,
                    requested_by=principal.user_id,
                    expires_at=token.expires_at,
                    scanner_name=scanner.name,
                    serial_number=scanner.serial_number or "",
                    sealed_code=sealed,
                ),
            )
            await self._audit(
                session,
                principal,
                "emailed",
                scanner_id,
                now,
                token_id=token.token_id,
                recipient_user_id=recipient_id,
                notification_id=notification_id,
            )
        metrics.CODE_EMAILS_REQUESTED.inc()
        self._audit_line(
            principal,
            "emailed",
            scanner_id,
            token_id=token.token_id,
            recipient_user_id=recipient_id,
            notification_id=notification_id,
        )
        return notification_id

    def _open_code(self, token: TokenRow) -> str:
        assert token.code_ciphertext is not None, "an active token keeps its code"
        return self._code_box.open_bytes(token.code_ciphertext, stored_code_context(token.token_id))

    async def _end_active_token(
        self,
        session: AsyncSession,
        scanner_id: str,
        now: datetime,
        *,
        by: str,
        reason: str,
    ) -> tuple[str, str] | None:
        """End the scanner's active token (its row must be locked): revoked with `reason`, or
        expired when it is past its expiry time. (token id, how) or None if there was none."""
        token = await repo.active_token(session, scanner_id)
        if token is None:
            return None
        if domain.retirement_for(token.expires_at, now) == EXPIRED:
            expired = await repo.expire_token(session, token.token_id, now)
            if expired is None:
                return None
            await self._emit_expired(session, expired)
            return token.token_id, EXPIRED
        if not await repo.revoke_token(session, token.token_id, at=now, by=by, reason=reason):
            return None
        await self._emit(
            session,
            TokenRevoked(
                token_id=token.token_id,
                scanner_id=scanner_id,
                org_id=token.org_id,
                revoked_by=by,
                reason="superseded" if reason == "superseded" else "revoked",
                revoked_at=now,
            ),
        )
        metrics.TOKENS_ENDED.labels(reason).inc()
        return token.token_id, "revoked"

    async def _emit_expired(self, session: AsyncSession, expired: repo.ExpiredToken) -> None:
        await self._emit(
            session,
            TokenExpired(
                token_id=expired.token_id,
                scanner_id=expired.scanner_id,
                org_id=expired.org_id,
                expired_at=expired.expires_at,
            ),
        )
        metrics.TOKENS_ENDED.labels("expired").inc()

    # ---------------------------------------------------------------- authorisation

    async def authorisation(self, principal: Principal, scanner_id: str) -> AuthorisationView:
        async with self.db.transaction() as session:
            scanner, _, _ = await self._scanner(
                session, principal, scanner_id, manage=False, lock=False
            )
        if not scanner.authorised:
            return AuthorisationView("unauthorised", None, None, None)
        return AuthorisationView(
            "authorised",
            scanner.authorised_at,
            scanner.credential_id,
            scanner.authorised_serial_number,
        )

    async def deauthorise(self, principal: Principal, scanner_id: str) -> None:
        """Withdraw the scanner's authorisation. Always emits ScannerDeauthorised: this view may
        lag a redemption, so it fails closed."""
        async with self.db.transaction() as session:
            now = self.clock()
            scanner, org_id, _ = await self._scanner(
                session, principal, scanner_id, manage=True, lock=True
            )
            await self._deauthorise(
                session, scanner, org_id, now, by=principal.user_id, reason="deauthorised"
            )
            await self._audit(session, principal, "deauthorised", scanner_id, now)
        self._audit_line(principal, "deauthorised", scanner_id)

    async def _deauthorise(
        self,
        session: AsyncSession,
        scanner: ScannerRow,
        org_id: str,
        now: datetime,
        *,
        by: str,
        reason: str,
        credential_id: str | None = None,
    ) -> None:
        if credential_id is None and scanner.authorised:
            credential_id = scanner.credential_id
        await repo.set_deauthorised(session, scanner.scanner_id, now)
        await self._emit(
            session,
            ScannerDeauthorised(
                scanner_id=scanner.scanner_id,
                org_id=org_id,
                credential_id=credential_id,
                deauthorised_by=by,
                reason=reason,
                deauthorised_at=now,
            ),
        )
        metrics.DEAUTHORISATIONS.labels(reason).inc()

    # ---------------------------------------------------------------- expiry

    async def sweep_expired(self) -> int:
        """Mark due active tokens expired, each with exactly one TokenExpired, whatever the
        number of replicas sweeping at once. The number this call expired."""
        now = self.clock()
        async with self.db.session() as session:
            due = await repo.due_tokens(session, now, self.sweep_batch)
        expired = 0
        for token_id, scanner_id in due:
            async with self.db.transaction() as session:
                await repo.lock_scanner(session, scanner_id)
                row = await repo.expire_token(session, token_id, now)
                if row is not None:
                    await self._emit_expired(session, row)
                    expired += 1
        if expired:
            log.info("tokens expired", extra={"count": expired})
        return expired

    async def run_expiry_sweeper(self) -> None:
        while True:
            try:
                while await self.sweep_expired() >= self.sweep_batch:
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("expiry sweep failed; retrying", extra={"error": type(exc).__name__})
            await asyncio.sleep(self.sweep_interval)

    # ---------------------------------------------------------------- directory view

    async def apply_directory_event(self, event: CloudEvent, data: EventData) -> None:
        async with self.db.transaction() as session:
            if not await first_time(session, DIRECTORY_CONSUMER, event.id):
                return
            if isinstance(data, ScannerRegistered):
                await repo.upsert_scanner(
                    session,
                    scanner_id=data.scanner_id,
                    org_id=data.org_id,
                    serial_number=data.serial_number,
                    name=data.name,
                    model=data.model,
                )
            elif isinstance(data, ScannerRemoved):
                await self._scanner_removed(session, data.scanner_id)
            elif isinstance(data, UserUpserted):
                await repo.upsert_user(
                    session,
                    user_id=data.user_id,
                    org_id=data.org_id,
                    email=data.email,
                    display_name=data.display_name,
                )
            elif isinstance(data, ScannerAccessGranted):
                await repo.add_grant(session, data.scanner_id, data.user_id)
            elif isinstance(data, ScannerAccessRevoked):
                await repo.remove_grant(session, data.scanner_id, data.user_id)

    async def _scanner_removed(self, session: AsyncSession, scanner_id: str) -> None:
        scanner = await repo.lock_scanner(session, scanner_id)
        if scanner is None or scanner.removed_at is not None:
            return  # unknown or already removed: nothing to do
        now = self.clock()
        await repo.mark_removed(session, scanner_id, now)
        await self._end_active_token(session, scanner_id, now, by=DIRECTORY_ACTOR, reason="revoked")
        if scanner.authorised and scanner.org_id is not None:
            await self._deauthorise(
                session, scanner, scanner.org_id, now, by=DIRECTORY_ACTOR, reason="scanner_removed"
            )
        log.info("scanner removed", extra={"scanner_id": scanner_id})

    # ---------------------------------------------------------------- authorisation view

    async def apply_authorisation_event(self, event: CloudEvent, data: EventData) -> None:
        async with self.db.transaction() as session:
            if not await first_time(session, AUTHORISATIONS_CONSUMER, event.id):
                return
            if isinstance(data, ScannerAuthorised):
                await self._scanner_authorised(session, data)
            elif isinstance(data, CredentialRotated):
                scanner = await repo.lock_scanner(session, data.scanner_id)
                if scanner is None or not scanner.authorised:
                    return
                deauthorised_at = scanner.deauthorised_at
                if deauthorised_at is not None and data.rotated_at <= deauthorised_at:
                    return
                await repo.set_credential(session, data.scanner_id, data.credential_id)

    async def _scanner_authorised(self, session: AsyncSession, data: ScannerAuthorised) -> None:
        await repo.ensure_scanner_row(session, data.scanner_id, data.org_id)
        scanner = await repo.lock_scanner(session, data.scanner_id)
        assert scanner is not None
        token = await repo.token_by_id(session, data.token_id)
        if (
            token is not None
            and token.scanner_id == data.scanner_id
            and domain.redemption_applies(token.status, token.expires_at, data.authorised_at)
            and await repo.redeem_token(session, token.token_id, data.authorised_at)
        ):
            metrics.TOKENS_ENDED.labels("redeemed").inc()
        fresh = domain.authorisation_applies(
            data.authorised_at,
            current_authorised_at=scanner.authorised_at if scanner.authorised else None,
            deauthorised_at=scanner.deauthorised_at,
        )
        if not fresh:
            return
        if scanner.removed_at is not None:
            # Authorised after the directory removed it (the redeemer had not heard yet):
            # fail closed, the new credential must not work.
            await self._deauthorise(
                session,
                scanner,
                scanner.org_id or data.org_id,
                self.clock(),
                by=DIRECTORY_ACTOR,
                reason="scanner_removed",
                credential_id=data.credential_id,
            )
            return
        await repo.set_authorised(
            session,
            data.scanner_id,
            at=data.authorised_at,
            credential_id=data.credential_id,
            serial_number=data.serial_number,
        )

    # ---------------------------------------------------------------- plumbing

    @staticmethod
    async def _emit(session: AsyncSession, data: EventData) -> None:
        await enqueue(session, new_event(data, source=SOURCE), topic=data.topic)

    @staticmethod
    async def _audit(
        session: AsyncSession,
        principal: Principal,
        action: AuditAction,
        scanner_id: str,
        at: datetime,
        *,
        token_id: str | None = None,
        recipient_user_id: str | None = None,
        notification_id: str | None = None,
    ) -> None:
        await repo.audit(
            session,
            at=at,
            actor_user_id=principal.user_id,
            actor_org_id=principal.org_id,
            action=action,
            scanner_id=scanner_id,
            token_id=token_id,
            recipient_user_id=recipient_user_id,
            notification_id=notification_id,
        )

    @staticmethod
    def _audit_line(
        principal: Principal,
        action: AuditAction,
        scanner_id: str,
        *,
        token_id: str | None = None,
        recipient_user_id: str | None = None,
        notification_id: str | None = None,
    ) -> None:
        audit_log.info(
            "audit %s",
            action,
            extra={
                "audit_action": action,
                "actor_user_id": principal.user_id,
                "actor_org_id": principal.org_id,
                "scanner_id": scanner_id,
                "token_id": token_id,
                "recipient_user_id": recipient_user_id,
                "notification_id": notification_id,
            },
        )
