"""SQL of the redeemer, one method per statement, all inside the caller's transaction.

Lock order (never violated, so no deadlock): attempt locks (serial, then address; advisory,
transaction-scoped) → token row → scanner credential state row → credential rows.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import text
from sqlalchemy.engine import Result, RowMapping
from sqlalchemy.sql.elements import TextClause
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from ..domain import AddressThrottle, CredentialStatus, SerialThrottle, TokenView
from .tables import Credential

# Advisory lock classes (two-int key space, disjoint from the outbox's and migrations' keys).
_SERIAL_LOCK_CLASS = 0x5244_0001 - 2**31
_ADDRESS_LOCK_CLASS = 0x5244_0002 - 2**31


def _lock_id(value: str) -> int:
    return zlib.crc32(value.encode("utf-8", "surrogateescape")) - 2**31


async def _exec(session: AsyncSession, sql: TextClause, params: Mapping[str, Any]) -> Result[Any]:
    return cast(Result[Any], await session.exec(sql, params=params))  # type: ignore[call-overload]


@dataclass(frozen=True, slots=True)
class AttemptState:
    now: datetime  # the database's clock: one clock for every replica
    serial: SerialThrottle
    address: AddressThrottle


@dataclass(frozen=True, slots=True)
class StoredCredential:
    credential_id: str
    scanner_id: str
    org_id: str
    credential_digest: str
    status: CredentialStatus
    valid_until: datetime | None


_NOW = text("SELECT now()")
# Both attempt locks in one round trip; the target list is evaluated left to right, so the
# serial's lock is always taken before the address's.
_LOCK_ATTEMPTS = text(
    "SELECT pg_advisory_xact_lock(:serial_cls, :serial_id), "
    "pg_advisory_xact_lock(:address_cls, :address_id)"
)
_ATTEMPT_STATE = text(
    """
    SELECT now() AS now,
           s.failures AS serial_failures, s.locked_until AS serial_locked_until,
           a.failures AS address_failures, a.locked_until AS address_locked_until
    FROM (SELECT 1) AS one
    LEFT JOIN serial_throttle s ON s.serial_key = :serial_key
    LEFT JOIN address_throttle a ON a.address = :address
    """
)
_SAVE_SERIAL = text(
    """
    INSERT INTO serial_throttle (serial_key, failures, locked_until, updated_at)
    VALUES (:serial_key, :failures, :locked_until, :now)
    ON CONFLICT (serial_key) DO UPDATE SET failures = EXCLUDED.failures,
        locked_until = EXCLUDED.locked_until, updated_at = EXCLUDED.updated_at
    """
)
_SAVE_ADDRESS = text(
    """
    INSERT INTO address_throttle (address, failures, locked_until, updated_at)
    VALUES (:address, CAST(:failures AS timestamptz[]), :locked_until, :now)
    ON CONFLICT (address) DO UPDATE SET failures = EXCLUDED.failures,
        locked_until = EXCLUDED.locked_until, updated_at = EXCLUDED.updated_at
    """
)
_LOOKUP_COLUMNS = """
    t.token_id, t.scanner_id, t.org_id, t.code_digest, t.status, t.expires_at,
    s.serial_number AS scanner_serial, COALESCE(s.removed, false) AS scanner_removed
"""
_FIND_TOKEN = text(
    f"""
    SELECT {_LOOKUP_COLUMNS}
    FROM tokens t LEFT JOIN scanners s ON s.scanner_id = t.scanner_id
    WHERE t.code_digest = :digest
    ORDER BY (t.status = 'active') DESC, t.issued_at DESC NULLS LAST
    LIMIT 1
    """
)
_TOKEN_BY_ID = text(
    f"""
    SELECT {_LOOKUP_COLUMNS}
    FROM tokens t LEFT JOIN scanners s ON s.scanner_id = t.scanner_id
    WHERE t.token_id = :token_id
    """
)
# The single statement that makes a code single-use: of any number of concurrent attempts, only
# the first to take the row lock sees status 'active'; the others re-check and find no row.
_REDEEM = text(
    """
    UPDATE tokens SET status = 'redeemed', redeemed_at = now(), updated_at = now()
    WHERE token_id = :token_id AND status = 'active' AND expires_at > now()
    RETURNING token_id, scanner_id, org_id
    """
)
# Insert-or-lock the scanner's credential state; a new credential is stamped strictly after any
# deauthorisation already applied, whatever the skew between the two services' clocks.
_LOCK_SCANNER = text(
    """
    INSERT INTO scanner_credential_state (scanner_id) VALUES (:scanner_id)
    ON CONFLICT (scanner_id) DO UPDATE SET updated_at = now()
    RETURNING GREATEST(clock_timestamp(),
                       deauthorised_at + interval '1 microsecond') AS stamp
    """
)
_INSERT_CREDENTIAL = text(
    """
    INSERT INTO credentials (credential_id, scanner_id, org_id, credential_digest, status,
                             issued_at, token_id, previous_credential_id)
    VALUES (:credential_id, :scanner_id, :org_id, :credential_digest, 'active',
            :issued_at, :token_id, :previous_credential_id)
    """
)
# A redemption's writes after the scanner's lock, in one round trip: the scanner's earlier
# credentials replaced (the UPDATE runs to completion first: the INSERT reads its count), the
# new credential, and the serial's failure count cleared.
_AUTHORISE = text(
    """
    WITH replaced AS (
        UPDATE credentials SET status = 'replaced', ended_at = :at
        WHERE scanner_id = :scanner_id AND status IN ('active', 'rotating')
        RETURNING 1
    ), cleared AS (
        DELETE FROM serial_throttle WHERE serial_key = :serial_key
    )
    INSERT INTO credentials (credential_id, scanner_id, org_id, credential_digest, status,
                             issued_at, token_id, previous_credential_id)
    SELECT CAST(:credential_id AS text), CAST(:scanner_id AS text), CAST(:org_id AS text),
           CAST(:credential_digest AS text), 'active', CAST(:at AS timestamptz),
           CAST(:token_id AS text), CAST(NULL AS text)
    FROM (SELECT count(*) FROM replaced) AS done
    """
)
_CREDENTIAL_BY_ID = text(
    """
    SELECT credential_id, scanner_id, org_id, credential_digest, status, valid_until
    FROM credentials WHERE credential_id = :credential_id
    """
)
_START_GRACE = text(
    """
    UPDATE credentials SET status = 'rotating', valid_until = :valid_until
    WHERE credential_id = :credential_id AND status = 'active'
    """
)
_DEAUTHORISE = text(
    """
    INSERT INTO scanner_credential_state (scanner_id, deauthorised_at) VALUES (:scanner_id, :at)
    ON CONFLICT (scanner_id) DO UPDATE SET updated_at = now(),
        deauthorised_at = GREATEST(scanner_credential_state.deauthorised_at,
                                   EXCLUDED.deauthorised_at)
    """
)
_REVOKE_CREDENTIALS = text(
    """
    UPDATE credentials SET status = 'revoked', ended_at = clock_timestamp()
    WHERE scanner_id = :scanner_id AND status IN ('active', 'rotating')
      AND (issued_at <= :at OR credential_id = :credential_id)
    """
)
_TOKEN_ISSUED = text(
    """
    INSERT INTO tokens (token_id, scanner_id, org_id, code_digest, issued_at, expires_at, status)
    VALUES (:token_id, :scanner_id, :org_id, :code_digest, :issued_at, :expires_at, 'active')
    ON CONFLICT (token_id) DO UPDATE SET
        scanner_id = EXCLUDED.scanner_id, org_id = EXCLUDED.org_id,
        code_digest = EXCLUDED.code_digest, issued_at = EXCLUDED.issued_at,
        expires_at = EXCLUDED.expires_at, updated_at = now()
    """
)
# A revocation or expiry ends an active token only; one that overtook its TokenIssued is
# recorded, and the TokenIssued (above) then leaves the status alone.
_TOKEN_ENDED = text(
    """
    INSERT INTO tokens (token_id, scanner_id, org_id, status, ended_at)
    VALUES (:token_id, :scanner_id, :org_id, :status, :at)
    ON CONFLICT (token_id) DO UPDATE SET
        status = EXCLUDED.status, ended_at = EXCLUDED.ended_at, updated_at = now()
    WHERE tokens.status = 'active'
    """
)
_SCANNER_REGISTERED = text(
    """
    INSERT INTO scanners (scanner_id, org_id, serial_number) VALUES (:scanner_id, :org_id, :serial)
    ON CONFLICT (scanner_id) DO UPDATE SET org_id = EXCLUDED.org_id,
        serial_number = EXCLUDED.serial_number, updated_at = now()
    """
)
_SCANNER_REMOVED = text(
    """
    INSERT INTO scanners (scanner_id, removed) VALUES (:scanner_id, true)
    ON CONFLICT (scanner_id) DO UPDATE SET removed = true, updated_at = now()
    """
)
_FORGET_SERIALS = text(
    """
    DELETE FROM serial_throttle
    WHERE updated_at < now() - make_interval(secs => :retention)
      AND (locked_until IS NULL OR locked_until < now())
    """
)
_FORGET_ADDRESSES = text(
    """
    DELETE FROM address_throttle
    WHERE updated_at < now() - make_interval(secs => :retention)
      AND (locked_until IS NULL OR locked_until < now())
    """
)


def _token(row: RowMapping | None) -> TokenView | None:
    if row is None or row["code_digest"] is None or row["expires_at"] is None:
        return None
    return TokenView(
        token_id=row["token_id"],
        scanner_id=row["scanner_id"],
        org_id=row["org_id"],
        code_digest=row["code_digest"],
        status=row["status"],
        expires_at=row["expires_at"],
        scanner_serial=row["scanner_serial"],
        scanner_removed=row["scanner_removed"],
    )


class Repository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def now(self) -> datetime:
        result = await _exec(self.session, _NOW, {})
        return cast(datetime, result.scalar_one())

    # ------------------------------------------------------------------ throttling

    async def lock_attempts(self, serial_key: str, address: str) -> None:
        """Serialise the attempts on one serial number and from one address (held to commit):
        the throttle state read next cannot go stale, so a burst of parallel guesses gets no
        more tries than a sequence would. Always serial first, then address."""
        await _exec(
            self.session,
            _LOCK_ATTEMPTS,
            {
                "serial_cls": _SERIAL_LOCK_CLASS,
                "serial_id": _lock_id(serial_key),
                "address_cls": _ADDRESS_LOCK_CLASS,
                "address_id": _lock_id(address),
            },
        )

    async def attempt_state(self, serial_key: str, address: str) -> AttemptState:
        result = await _exec(
            self.session, _ATTEMPT_STATE, {"serial_key": serial_key, "address": address}
        )
        row = result.mappings().one()
        return AttemptState(
            now=row["now"],
            serial=SerialThrottle(row["serial_failures"] or 0, row["serial_locked_until"]),
            address=AddressThrottle(
                tuple(row["address_failures"] or ()), row["address_locked_until"]
            ),
        )

    async def save_serial(self, serial_key: str, state: SerialThrottle, now: datetime) -> None:
        await _exec(
            self.session,
            _SAVE_SERIAL,
            {
                "serial_key": serial_key,
                "failures": state.failures,
                "locked_until": state.locked_until,
                "now": now,
            },
        )

    async def save_address(self, address: str, state: AddressThrottle, now: datetime) -> None:
        await _exec(
            self.session,
            _SAVE_ADDRESS,
            {
                "address": address,
                "failures": list(state.failures),
                "locked_until": state.locked_until,
                "now": now,
            },
        )

    async def forget_stale_throttles(self, retention_seconds: float) -> None:
        for sql in (_FORGET_SERIALS, _FORGET_ADDRESSES):
            await _exec(self.session, sql, {"retention": float(retention_seconds)})

    # ------------------------------------------------------------------ tokens

    async def find_token(self, digest: str) -> TokenView | None:
        result = await _exec(self.session, _FIND_TOKEN, {"digest": digest})
        return _token(result.mappings().first())

    async def token_by_id(self, token_id: str) -> TokenView | None:
        result = await _exec(self.session, _TOKEN_BY_ID, {"token_id": token_id})
        return _token(result.mappings().first())

    async def redeem(self, token_id: str) -> bool:
        result = await _exec(self.session, _REDEEM, {"token_id": token_id})
        return result.first() is not None

    async def token_issued(
        self,
        *,
        token_id: str,
        scanner_id: str,
        org_id: str,
        code_digest: str,
        issued_at: datetime,
        expires_at: datetime,
    ) -> None:
        await _exec(
            self.session,
            _TOKEN_ISSUED,
            {
                "token_id": token_id,
                "scanner_id": scanner_id,
                "org_id": org_id,
                "code_digest": code_digest,
                "issued_at": issued_at,
                "expires_at": expires_at,
            },
        )

    async def token_ended(
        self, *, token_id: str, scanner_id: str, org_id: str, status: str, at: datetime
    ) -> None:
        await _exec(
            self.session,
            _TOKEN_ENDED,
            {
                "token_id": token_id,
                "scanner_id": scanner_id,
                "org_id": org_id,
                "status": status,
                "at": at,
            },
        )

    # ------------------------------------------------------------------ directory view

    async def scanner_registered(self, scanner_id: str, org_id: str, serial: str) -> None:
        await _exec(
            self.session,
            _SCANNER_REGISTERED,
            {"scanner_id": scanner_id, "org_id": org_id, "serial": serial},
        )

    async def scanner_removed(self, scanner_id: str) -> None:
        await _exec(self.session, _SCANNER_REMOVED, {"scanner_id": scanner_id})

    # ------------------------------------------------------------------ credentials

    async def lock_scanner(self, scanner_id: str) -> datetime:
        """Lock the scanner's credential state (creating it); returns the time to stamp a new
        credential with."""
        result = await _exec(self.session, _LOCK_SCANNER, {"scanner_id": scanner_id})
        return cast(datetime, result.scalar_one())

    async def authorise(
        self,
        *,
        credential_id: str,
        scanner_id: str,
        org_id: str,
        credential_digest: str,
        at: datetime,
        token_id: str,
        serial_key: str,
    ) -> None:
        """A redemption's writes: the scanner's earlier credentials replaced, the new one
        inserted, the serial's failures cleared; one statement."""
        await _exec(
            self.session,
            _AUTHORISE,
            {
                "credential_id": credential_id,
                "scanner_id": scanner_id,
                "org_id": org_id,
                "credential_digest": credential_digest,
                "at": at,
                "token_id": token_id,
                "serial_key": serial_key,
            },
        )

    async def insert_credential(
        self,
        *,
        credential_id: str,
        scanner_id: str,
        org_id: str,
        credential_digest: str,
        issued_at: datetime,
        token_id: str | None = None,
        previous_credential_id: str | None = None,
    ) -> None:
        await _exec(
            self.session,
            _INSERT_CREDENTIAL,
            {
                "credential_id": credential_id,
                "scanner_id": scanner_id,
                "org_id": org_id,
                "credential_digest": credential_digest,
                "issued_at": issued_at,
                "token_id": token_id,
                "previous_credential_id": previous_credential_id,
            },
        )

    async def credential_by_digest(self, digest: str) -> StoredCredential | None:
        found = (
            await self.session.exec(
                select(Credential).where(Credential.credential_digest == digest)
            )
        ).first()
        if found is None:
            return None
        return StoredCredential(
            found.credential_id,
            found.scanner_id,
            found.org_id,
            found.credential_digest,
            cast(CredentialStatus, found.status),
            found.valid_until,
        )

    async def credential_by_id(self, credential_id: str) -> StoredCredential | None:
        result = await _exec(self.session, _CREDENTIAL_BY_ID, {"credential_id": credential_id})
        row = result.mappings().first()
        if row is None:
            return None
        return StoredCredential(
            row["credential_id"],
            row["scanner_id"],
            row["org_id"],
            row["credential_digest"],
            row["status"],
            row["valid_until"],
        )

    async def start_grace(self, credential_id: str, valid_until: datetime) -> None:
        await _exec(
            self.session, _START_GRACE, {"credential_id": credential_id, "valid_until": valid_until}
        )

    async def deauthorise(self, scanner_id: str, at: datetime, credential_id: str | None) -> int:
        """Revoke every live credential of the scanner issued at or before `at` (and the one
        named, whenever it was issued). Returns how many."""
        await _exec(self.session, _DEAUTHORISE, {"scanner_id": scanner_id, "at": at})
        result = await _exec(
            self.session,
            _REVOKE_CREDENTIALS,
            {"scanner_id": scanner_id, "at": at, "credential_id": credential_id},
        )
        return cast(int, getattr(result, "rowcount", 0) or 0)


__all__: Sequence[str] = ("AttemptState", "Repository", "StoredCredential")
