"""The redeemer's repositories over asyncpg: one SQL statement per method (the module-level
constants, `$n` parameters), all inside the unit of work's transaction; and the unit of work
that binds them. The one way to the redeemer's database.

Lock order (never violated, so no deadlock between redeemer transactions): attempt locks
(serial, then address; advisory, transaction-scoped) → token row → the scanner's credential
state row → credential rows.
"""

from __future__ import annotations

import zlib
from datetime import datetime

from scanner_auth_shared.postgres import Connection, Record
from scanner_auth_shared.uow import PostgresUnitOfWork as BasePostgresUnitOfWork

from ..domain import AddressThrottle, AttemptState, Credential, SerialThrottle, TokenView

# Advisory lock classes (two-int key space, disjoint from the outbox's and migrations' keys).
SERIAL_LOCK_CLASS = 0x5244_0001 - 2**31
ADDRESS_LOCK_CLASS = 0x5244_0002 - 2**31


def _lock_id(value: str) -> int:
    return zlib.crc32(value.encode("utf-8", "surrogateescape")) - 2**31


def _rows(status: str) -> int:
    """How many rows a statement touched, from its command tag (`UPDATE 3`)."""
    return int(status.rsplit(" ", 1)[-1])


# ------------------------------------------------------------------------------------ throttles

# Both attempt locks in one round trip; the target list is evaluated left to right, so the
# serial's lock is always taken before the address's.
LOCK_ATTEMPTS = "SELECT pg_advisory_xact_lock($1, $2), pg_advisory_xact_lock($3, $4)"
ATTEMPT_STATE = """
    SELECT now() AS now,
           s.failures AS serial_failures, s.locked_until AS serial_locked_until,
           a.failures AS address_failures, a.locked_until AS address_locked_until
    FROM (SELECT 1) AS one
    LEFT JOIN serial_throttle s ON s.serial_key = $1
    LEFT JOIN address_throttle a ON a.address = $2
"""
SAVE_SERIAL = """
    INSERT INTO serial_throttle (serial_key, failures, locked_until, updated_at)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (serial_key) DO UPDATE SET failures = EXCLUDED.failures,
        locked_until = EXCLUDED.locked_until, updated_at = EXCLUDED.updated_at
"""
SAVE_ADDRESS = """
    INSERT INTO address_throttle (address, failures, locked_until, updated_at)
    VALUES ($1, $2, $3, $4)
    ON CONFLICT (address) DO UPDATE SET failures = EXCLUDED.failures,
        locked_until = EXCLUDED.locked_until, updated_at = EXCLUDED.updated_at
"""
CLEAR_SERIAL = "DELETE FROM serial_throttle WHERE serial_key = $1"
FORGET_SERIALS = """
    DELETE FROM serial_throttle
    WHERE updated_at < now() - make_interval(secs => $1)
      AND (locked_until IS NULL OR locked_until < now())
"""
FORGET_ADDRESSES = """
    DELETE FROM address_throttle
    WHERE updated_at < now() - make_interval(secs => $1)
      AND (locked_until IS NULL OR locked_until < now())
"""


class Throttles:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def state(self, serial_key: str, address: str) -> AttemptState:
        row = await self.conn.fetchrow(ATTEMPT_STATE, serial_key, address)
        return AttemptState(
            now=row["now"],
            serial=SerialThrottle(row["serial_failures"] or 0, row["serial_locked_until"]),
            address=AddressThrottle(
                tuple(row["address_failures"] or ()), row["address_locked_until"]
            ),
        )

    async def lock(self, serial_key: str, address: str) -> None:
        await self.conn.execute(
            LOCK_ATTEMPTS,
            SERIAL_LOCK_CLASS,
            _lock_id(serial_key),
            ADDRESS_LOCK_CLASS,
            _lock_id(address),
        )

    async def save_serial(self, serial_key: str, state: SerialThrottle, now: datetime) -> None:
        await self.conn.execute(SAVE_SERIAL, serial_key, state.failures, state.locked_until, now)

    async def save_address(self, address: str, state: AddressThrottle, now: datetime) -> None:
        await self.conn.execute(
            SAVE_ADDRESS, address, list(state.failures), state.locked_until, now
        )

    async def clear_serial(self, serial_key: str) -> None:
        await self.conn.execute(CLEAR_SERIAL, serial_key)

    async def forget_stale_serials(self, retention_seconds: float) -> int:
        return _rows(await self.conn.execute(FORGET_SERIALS, float(retention_seconds)))

    async def forget_stale_addresses(self, retention_seconds: float) -> int:
        return _rows(await self.conn.execute(FORGET_ADDRESSES, float(retention_seconds)))


# ------------------------------------------------------------------------------------ tokens

_VIEW_COLUMNS = """
    t.token_id, t.scanner_id, t.org_id, t.code_digest, t.status, t.expires_at,
    s.serial_number AS scanner_serial, COALESCE(s.removed, false) AS scanner_removed
"""
TOKEN_BY_DIGEST = f"""
    SELECT {_VIEW_COLUMNS}
    FROM tokens t LEFT JOIN scanners s ON s.scanner_id = t.scanner_id
    WHERE t.code_digest = $1
    ORDER BY (t.status = 'active') DESC, t.issued_at DESC NULLS LAST
    LIMIT 1
"""
TOKEN_BY_ID = f"""
    SELECT {_VIEW_COLUMNS}
    FROM tokens t LEFT JOIN scanners s ON s.scanner_id = t.scanner_id
    WHERE t.token_id = $1
"""
# Of any number of concurrent attempts, only the first to take the row lock sees status
# 'active'; the others re-check the condition once it is released and find no row.
MARK_REDEEMED = """
    UPDATE tokens SET status = 'redeemed', redeemed_at = now(), updated_at = now()
    WHERE token_id = $1 AND status = 'active' AND expires_at > now()
    RETURNING true
"""
RECORD_ISSUED = """
    INSERT INTO tokens (token_id, scanner_id, org_id, code_digest, issued_at, expires_at, status)
    VALUES ($1, $2, $3, $4, $5, $6, 'active')
    ON CONFLICT (token_id) DO UPDATE SET
        scanner_id = EXCLUDED.scanner_id, org_id = EXCLUDED.org_id,
        code_digest = EXCLUDED.code_digest, issued_at = EXCLUDED.issued_at,
        expires_at = EXCLUDED.expires_at, updated_at = now()
"""
# A revocation or expiry ends an active token only; one that overtook its TokenIssued is
# recorded, and the TokenIssued (above) then leaves the status alone.
RECORD_ENDED = """
    INSERT INTO tokens (token_id, scanner_id, org_id, status, ended_at)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (token_id) DO UPDATE SET
        status = EXCLUDED.status, ended_at = EXCLUDED.ended_at, updated_at = now()
    WHERE tokens.status = 'active'
"""


def _token(row: Record | None) -> TokenView | None:
    if row is None or row["code_digest"] is None or row["expires_at"] is None:
        return None  # unknown, or known only from a TokenRevoked/TokenExpired: matches no code
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


class Tokens:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def by_digest(self, code_digest: str) -> TokenView | None:
        return _token(await self.conn.fetchrow(TOKEN_BY_DIGEST, code_digest))

    async def by_id(self, token_id: str) -> TokenView | None:
        return _token(await self.conn.fetchrow(TOKEN_BY_ID, token_id))

    async def mark_redeemed(self, token_id: str) -> bool:
        return await self.conn.fetchval(MARK_REDEEMED, token_id) is True

    async def issued(
        self,
        *,
        token_id: str,
        scanner_id: str,
        org_id: str,
        code_digest: str,
        issued_at: datetime,
        expires_at: datetime,
    ) -> None:
        await self.conn.execute(
            RECORD_ISSUED, token_id, scanner_id, org_id, code_digest, issued_at, expires_at
        )

    async def ended(
        self, *, token_id: str, scanner_id: str, org_id: str, status: str, at: datetime
    ) -> None:
        await self.conn.execute(RECORD_ENDED, token_id, scanner_id, org_id, status, at)


# ------------------------------------------------------------------------------------ scanners

SCANNER_REGISTERED = """
    INSERT INTO scanners (scanner_id, org_id, serial_number) VALUES ($1, $2, $3)
    ON CONFLICT (scanner_id) DO UPDATE SET org_id = EXCLUDED.org_id,
        serial_number = EXCLUDED.serial_number, updated_at = now()
"""
SCANNER_REMOVED = """
    INSERT INTO scanners (scanner_id, removed) VALUES ($1, true)
    ON CONFLICT (scanner_id) DO UPDATE SET removed = true, updated_at = now()
"""


class Scanners:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def registered(self, scanner_id: str, org_id: str, serial_number: str) -> None:
        await self.conn.execute(SCANNER_REGISTERED, scanner_id, org_id, serial_number)

    async def removed(self, scanner_id: str) -> None:
        await self.conn.execute(SCANNER_REMOVED, scanner_id)


# ------------------------------------------------------------------------------------ credentials

# Insert-or-lock the scanner's credential state. (Its deauthorised_at column is no longer
# written: a deauthorisation is applied in this service's own order, not by time; issue 18.)
LOCK_SCANNER = """
    INSERT INTO scanner_credential_state (scanner_id) VALUES ($1)
    ON CONFLICT (scanner_id) DO UPDATE SET updated_at = now()
    RETURNING clock_timestamp()
"""
REVOKE_LIVE = """
    UPDATE credentials SET status = 'revoked', ended_at = clock_timestamp()
    WHERE scanner_id = $1 AND status IN ('active', 'rotating')
    RETURNING credential_id
"""
# Index credentials_rotations_by_scanner.
ROTATIONS_SINCE = """
    SELECT issued_at FROM credentials
    WHERE scanner_id = $1 AND previous_credential_id IS NOT NULL AND issued_at > $2
"""
REPLACE_LIVE = """
    UPDATE credentials SET status = 'replaced', ended_at = $2
    WHERE scanner_id = $1 AND status IN ('active', 'rotating')
"""
ADD_CREDENTIAL = """
    INSERT INTO credentials (credential_id, scanner_id, org_id, credential_digest, status,
                             issued_at, valid_until, token_id, previous_credential_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""
_CREDENTIAL_COLUMNS = """
    credential_id, scanner_id, org_id, credential_digest, status, issued_at, valid_until,
    token_id, previous_credential_id
"""
CREDENTIAL_BY_DIGEST = f"SELECT {_CREDENTIAL_COLUMNS} FROM credentials WHERE credential_digest = $1"
CREDENTIAL_BY_ID = f"SELECT {_CREDENTIAL_COLUMNS} FROM credentials WHERE credential_id = $1"
START_GRACE = """
    UPDATE credentials SET status = 'rotating', valid_until = $2
    WHERE credential_id = $1 AND status = 'active'
"""
NOW = "SELECT now()"


def _credential(row: Record | None) -> Credential | None:
    return None if row is None else Credential(**dict(row))


class Credentials:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def lock_scanner(self, scanner_id: str) -> datetime:
        stamp: datetime = await self.conn.fetchval(LOCK_SCANNER, scanner_id)
        return stamp

    async def revoke_live(self, scanner_id: str) -> list[str]:
        rows = await self.conn.fetch(REVOKE_LIVE, scanner_id)
        return sorted(row["credential_id"] for row in rows)

    async def rotations_since(self, scanner_id: str, since: datetime) -> list[datetime]:
        rows = await self.conn.fetch(ROTATIONS_SINCE, scanner_id, since)
        return [row["issued_at"] for row in rows]

    async def replace_live(self, scanner_id: str, at: datetime) -> int:
        return _rows(await self.conn.execute(REPLACE_LIVE, scanner_id, at))

    async def add(self, credential: Credential) -> None:
        c = credential
        await self.conn.execute(
            ADD_CREDENTIAL,
            c.credential_id,
            c.scanner_id,
            c.org_id,
            c.credential_digest,
            c.status,
            c.issued_at,
            c.valid_until,
            c.token_id,
            c.previous_credential_id,
        )

    async def by_digest(self, credential_digest: str) -> Credential | None:
        return _credential(await self.conn.fetchrow(CREDENTIAL_BY_DIGEST, credential_digest))

    async def by_id(self, credential_id: str) -> Credential | None:
        return _credential(await self.conn.fetchrow(CREDENTIAL_BY_ID, credential_id))

    async def start_grace(self, credential_id: str, valid_until: datetime) -> None:
        await self.conn.execute(START_GRACE, credential_id, valid_until)

    async def now(self) -> datetime:
        now: datetime = await self.conn.fetchval(NOW)
        return now


# ------------------------------------------------------------------------------------ unit of work


class PostgresUnitOfWork(BasePostgresUnitOfWork):
    """One transaction on one pooled connection, with the redeemer's repositories on it."""

    throttles: Throttles
    tokens: Tokens
    scanners: Scanners
    credentials: Credentials

    def bind(self, conn: Connection) -> None:
        self.throttles = Throttles(conn)
        self.tokens = Tokens(conn)
        self.scanners = Scanners(conn)
        self.credentials = Credentials(conn)
