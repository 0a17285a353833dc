"""The token-issuer's repositories over PostgreSQL (asyncpg, `$n` parameters), and the unit of
work that binds them to one connection and one transaction: the one way to its database.

One statement per method, each a module-level constant (tests/test_schema.py prepares every one
against the migrated schema). Locks: `…_FOR_UPDATE` statements lock the scanner's row until the
transaction ends; every unit of work that emits an event for a scanner takes that lock first,
so that outbox order (the relay's publication order) is commit order per scanner.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from scanner_auth_shared import uow
from scanner_auth_shared.postgres import Connection, Database, Record

from .. import SOURCE
from ..domain import (
    AuditEntry,
    DirectoryUser,
    ListedScanner,
    Person,
    RevokeReason,
    Scanner,
    SeenPrincipal,
    Token,
    TokenStatus,
    person,
)
from .ports import (
    AuditRepository,
    EmailRequestRepository,
    PeopleRepository,
    ScannerRepository,
    TokenRepository,
)

# ------------------------------------------------------------------------------------ scanners

_SCANNER_FIELDS = (
    "scanner_id",
    "org_id",
    "serial_number",
    "name",
    "model",
    "registered",
    "removed_at",
    "authorised",
    "authorised_at",
    "credential_id",
    "authorised_serial_number",
    "deauthorised_at",
)
_SCANNER_COLUMNS = ", ".join(_SCANNER_FIELDS)

# The scanner and the caller's grant in one round trip (every use case that checks access).
SCANNER_WITH_GRANT = f"""
    SELECT {_SCANNER_COLUMNS},
           EXISTS (SELECT 1 FROM access_grants g
                   WHERE g.scanner_id = s.scanner_id AND g.user_id = $2) AS has_grant
    FROM scanners s WHERE s.scanner_id = $1
"""
SCANNER_WITH_GRANT_FOR_UPDATE = SCANNER_WITH_GRANT + " FOR UPDATE OF s"
SCANNER_FOR_UPDATE = f"SELECT {_SCANNER_COLUMNS} FROM scanners WHERE scanner_id = $1 FOR UPDATE"

LISTED_SCANNERS = """
    SELECT s.scanner_id, s.org_id, s.name, s.serial_number, s.model,
           s.authorised, s.authorised_at,
           (g.user_id IS NOT NULL) AS has_grant,
           t.status AS token_status, t.expires_at AS token_expires_at
    FROM scanners s
    LEFT JOIN access_grants g ON g.scanner_id = s.scanner_id AND g.user_id = $1
    LEFT JOIN LATERAL (
        SELECT status, expires_at FROM tokens
        WHERE tokens.scanner_id = s.scanner_id ORDER BY seq DESC LIMIT 1
    ) t ON true
    WHERE s.registered AND s.removed_at IS NULL AND s.org_id IS NOT NULL
      AND ($3::boolean OR (s.org_id = $2 AND ($4::boolean OR g.user_id IS NOT NULL)))
    ORDER BY s.org_id, s.name, s.scanner_id
"""

REGISTER_SCANNER = """
    INSERT INTO scanners (scanner_id, org_id, serial_number, name, model, registered, updated_at)
    VALUES ($1, $2, $3, $4, $5, true, now())
    ON CONFLICT (scanner_id) DO UPDATE SET
        org_id = EXCLUDED.org_id, serial_number = EXCLUDED.serial_number,
        name = EXCLUDED.name, model = EXCLUDED.model, registered = true, updated_at = now()
"""
ENSURE_SCANNER = """
    INSERT INTO scanners (scanner_id, org_id) VALUES ($1, $2)
    ON CONFLICT (scanner_id) DO NOTHING
"""
MARK_REMOVED = "UPDATE scanners SET removed_at = $2, updated_at = now() WHERE scanner_id = $1"
SET_AUTHORISED = """
    UPDATE scanners SET authorised = true, authorised_at = $2, credential_id = $3,
        authorised_serial_number = $4, updated_at = now()
    WHERE scanner_id = $1
"""
SET_CREDENTIAL = "UPDATE scanners SET credential_id = $2, updated_at = now() WHERE scanner_id = $1"
SET_DEAUTHORISED = """
    UPDATE scanners SET authorised = false, authorised_at = NULL, credential_id = NULL,
        authorised_serial_number = NULL,
        deauthorised_at = GREATEST(COALESCE(deauthorised_at, $2), $2), updated_at = now()
    WHERE scanner_id = $1
"""


def _scanner(row: Record) -> Scanner:
    return Scanner(**{name: row[name] for name in _SCANNER_FIELDS})


class PostgresScanners:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def get_with_grant(self, scanner_id: str, user_id: str) -> tuple[Scanner | None, bool]:
        row = await self.conn.fetchrow(SCANNER_WITH_GRANT, scanner_id, user_id)
        return (None, False) if row is None else (_scanner(row), row["has_grant"])

    async def get_with_grant_for_update(
        self, scanner_id: str, user_id: str
    ) -> tuple[Scanner | None, bool]:
        row = await self.conn.fetchrow(SCANNER_WITH_GRANT_FOR_UPDATE, scanner_id, user_id)
        return (None, False) if row is None else (_scanner(row), row["has_grant"])

    async def get_for_update(self, scanner_id: str) -> Scanner | None:
        row = await self.conn.fetchrow(SCANNER_FOR_UPDATE, scanner_id)
        return None if row is None else _scanner(row)

    async def listed_for(
        self, user_id: str, org_id: str, *, support: bool, admin: bool
    ) -> list[ListedScanner]:
        rows = await self.conn.fetch(LISTED_SCANNERS, user_id, org_id, support, admin)
        return [ListedScanner(**dict(row.items())) for row in rows]

    async def register(
        self, scanner_id: str, org_id: str, serial_number: str, name: str, model: str
    ) -> None:
        await self.conn.execute(REGISTER_SCANNER, scanner_id, org_id, serial_number, name, model)

    async def ensure(self, scanner_id: str, org_id: str) -> None:
        await self.conn.execute(ENSURE_SCANNER, scanner_id, org_id)

    async def mark_removed(self, scanner_id: str, at: datetime) -> None:
        await self.conn.execute(MARK_REMOVED, scanner_id, at)

    async def set_authorised(
        self, scanner_id: str, *, at: datetime, credential_id: str, serial_number: str
    ) -> None:
        await self.conn.execute(SET_AUTHORISED, scanner_id, at, credential_id, serial_number)

    async def set_credential(self, scanner_id: str, credential_id: str) -> None:
        await self.conn.execute(SET_CREDENTIAL, scanner_id, credential_id)

    async def set_deauthorised(self, scanner_id: str, at: datetime) -> None:
        await self.conn.execute(SET_DEAUTHORISED, scanner_id, at)


# ------------------------------------------------------------------------------------ people

UPSERT_USER = """
    INSERT INTO users (user_id, org_id, email, display_name, updated_at)
    VALUES ($1, $2, $3, $4, now())
    ON CONFLICT (user_id) DO UPDATE SET org_id = EXCLUDED.org_id, email = EXCLUDED.email,
        display_name = EXCLUDED.display_name, updated_at = now()
"""
ADD_GRANT = """
    INSERT INTO access_grants (scanner_id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING
"""
REMOVE_GRANT = "DELETE FROM access_grants WHERE scanner_id = $1 AND user_id = $2"
RECORD_SEEN = """
    INSERT INTO principals_seen (user_id, org_id, roles, email, last_seen_at)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (user_id) DO UPDATE SET org_id = EXCLUDED.org_id, roles = EXCLUDED.roles,
        email = EXCLUDED.email, last_seen_at = EXCLUDED.last_seen_at
    WHERE principals_seen.last_seen_at <= EXCLUDED.last_seen_at
"""
# One user relative to one scanner: the directory's row, the last JWT seen, the grant.
PERSON = """
    SELECT k.user_id, u.org_id AS user_org_id, u.email AS user_email, u.display_name,
           p.org_id AS seen_org_id, p.roles, p.email AS seen_email, p.last_seen_at,
           EXISTS (SELECT 1 FROM access_grants g
                   WHERE g.scanner_id = $2 AND g.user_id = k.user_id) AS has_grant
    FROM (SELECT $1::text AS user_id) k
    LEFT JOIN users u ON u.user_id = k.user_id
    LEFT JOIN principals_seen p ON p.user_id = k.user_id
"""
# Those granted the scanner and those seen in its organisation (the JWT of someone seen in
# another organisation tells nothing here), in user id order (code points, as Python sorts).
PEOPLE_AROUND = """
    SELECT c.user_id, u.org_id AS user_org_id, u.email AS user_email, u.display_name,
           p.org_id AS seen_org_id, p.roles, p.email AS seen_email, p.last_seen_at,
           (g.user_id IS NOT NULL) AS has_grant
    FROM (SELECT user_id FROM access_grants WHERE scanner_id = $1
          UNION SELECT user_id FROM principals_seen WHERE org_id = $2) c
    LEFT JOIN users u ON u.user_id = c.user_id
    LEFT JOIN principals_seen p ON p.user_id = c.user_id AND p.org_id = $2
    LEFT JOIN access_grants g ON g.scanner_id = $1 AND g.user_id = c.user_id
    ORDER BY c.user_id COLLATE "C"
"""


def _person(row: Record) -> Person:
    user = (
        DirectoryUser(row["user_id"], row["user_org_id"], row["user_email"], row["display_name"])
        if row["user_org_id"] is not None
        else None
    )
    seen = (
        SeenPrincipal(
            row["user_id"],
            row["seen_org_id"],
            tuple(row["roles"]),
            row["seen_email"],
            row["last_seen_at"],
        )
        if row["seen_org_id"] is not None
        else None
    )
    return person(row["user_id"], user, seen, has_grant=row["has_grant"])


class PostgresPeople:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def upsert_user(self, user_id: str, org_id: str, email: str, display_name: str) -> None:
        await self.conn.execute(UPSERT_USER, user_id, org_id, email, display_name)

    async def grant(self, scanner_id: str, user_id: str) -> None:
        await self.conn.execute(ADD_GRANT, scanner_id, user_id)

    async def revoke_grant(self, scanner_id: str, user_id: str) -> None:
        await self.conn.execute(REMOVE_GRANT, scanner_id, user_id)

    async def record_seen(self, seen: SeenPrincipal, at: datetime) -> None:
        roles = list(seen.roles)
        await self.conn.execute(RECORD_SEEN, seen.user_id, seen.org_id, roles, seen.email, at)

    async def person(self, user_id: str, scanner_id: str) -> Person | None:
        row = await self.conn.fetchrow(PERSON, user_id, scanner_id)
        if row["user_org_id"] is None and row["seen_org_id"] is None:
            return None
        return _person(row)

    async def around(self, scanner_id: str, org_id: str) -> list[Person]:
        return [_person(row) for row in await self.conn.fetch(PEOPLE_AROUND, scanner_id, org_id)]


# ------------------------------------------------------------------------------------ tokens

_TOKENS_COLUMNS = (
    "token_id, scanner_id, org_id, code_ciphertext, code_digest, status, issued_at, issued_by, "
    "expires_at, redeemed_at"
)
TOKENS_ACTIVE = f"SELECT {_TOKENS_COLUMNS} FROM tokens WHERE scanner_id = $1 AND status = 'active'"
TOKENS_LATEST = (
    f"SELECT {_TOKENS_COLUMNS} FROM tokens WHERE scanner_id = $1 ORDER BY seq DESC LIMIT 1"
)
TOKENS_BY_ID = f"SELECT {_TOKENS_COLUMNS} FROM tokens WHERE token_id = $1"

# The token and its audit row in one statement (a data-modifying CTE): one round trip fewer per
# issue. services/token-issuer/bench/token_insert.py (this transaction alone, asyncpg, 2,000 per
# round, 7 rounds alternating; 2 cores at load 9 to 14): client CPU per transaction 1,153 µs with
# the CTE against 1,406 µs with two INSERTs on one connection, 744 against 916 µs on eight (wall
# 8.0 against 10.0 ms, 3.5 against 5.0 ms); an earlier run, 691 against 891 and 751 against 863.
TOKENS_ADD_AUDITED = """
    WITH audited AS (
        INSERT INTO audit_log (at, actor_user_id, actor_org_id, action, scanner_id, token_id,
                               recipient_user_id, notification_id)
        VALUES ($10, $11, $12, $13, $14, $15, $16, $17)
    )
    INSERT INTO tokens (token_id, scanner_id, org_id, code_ciphertext, code_digest, status,
                        issued_at, issued_by, expires_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
"""
TOKENS_REVOKE = """
    UPDATE tokens SET status = 'revoked', code_ciphertext = NULL, revoked_at = $2,
        revoked_by = $3, revoke_reason = $4
    WHERE token_id = $1 AND status = 'active'
    RETURNING token_id
"""
TOKENS_EXPIRE = f"""
    UPDATE tokens SET status = 'expired', code_ciphertext = NULL, expired_at = expires_at
    WHERE token_id = $1 AND status = 'active' AND expires_at <= $2
    RETURNING {_TOKENS_COLUMNS}
"""
TOKENS_REDEEM = """
    UPDATE tokens SET status = 'redeemed', code_ciphertext = NULL, redeemed_at = $2
    WHERE token_id = $1 AND status IN ('active', 'expired')
    RETURNING token_id
"""
TOKENS_DUE = """
    SELECT token_id, scanner_id FROM tokens
    WHERE status = 'active' AND expires_at <= $1
    ORDER BY expires_at LIMIT $2
"""


def _token(row: Record) -> Token:
    return Token(
        token_id=row["token_id"],
        scanner_id=row["scanner_id"],
        org_id=row["org_id"],
        code_ciphertext=row["code_ciphertext"],
        code_digest=row["code_digest"],
        status=cast(TokenStatus, row["status"]),
        issued_at=row["issued_at"],
        issued_by=row["issued_by"],
        expires_at=row["expires_at"],
        redeemed_at=row["redeemed_at"],
    )


def _audit_values(entry: AuditEntry) -> tuple[Any, ...]:
    return (
        entry.at,
        entry.actor_user_id,
        entry.actor_org_id,
        entry.action,
        entry.scanner_id,
        entry.token_id,
        entry.recipient_user_id,
        entry.notification_id,
    )


class PostgresTokens:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def add(self, token: Token, audit: AuditEntry) -> None:
        await self.conn.execute(
            TOKENS_ADD_AUDITED,
            token.token_id,
            token.scanner_id,
            token.org_id,
            token.code_ciphertext,
            token.code_digest,
            token.status,
            token.issued_at,
            token.issued_by,
            token.expires_at,
            *_audit_values(audit),
        )

    async def active(self, scanner_id: str) -> Token | None:
        row = await self.conn.fetchrow(TOKENS_ACTIVE, scanner_id)
        return None if row is None else _token(row)

    async def latest(self, scanner_id: str) -> Token | None:
        row = await self.conn.fetchrow(TOKENS_LATEST, scanner_id)
        return None if row is None else _token(row)

    async def get(self, token_id: str) -> Token | None:
        row = await self.conn.fetchrow(TOKENS_BY_ID, token_id)
        return None if row is None else _token(row)

    async def revoke(self, token_id: str, *, at: datetime, by: str, reason: RevokeReason) -> bool:
        return await self.conn.fetchval(TOKENS_REVOKE, token_id, at, by, reason) is not None

    async def expire(self, token_id: str, now: datetime) -> Token | None:
        row = await self.conn.fetchrow(TOKENS_EXPIRE, token_id, now)
        return None if row is None else _token(row)

    async def redeem(self, token_id: str, at: datetime) -> bool:
        return await self.conn.fetchval(TOKENS_REDEEM, token_id, at) is not None

    async def due(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        rows = await self.conn.fetch(TOKENS_DUE, now, limit)
        return [(row["token_id"], row["scanner_id"]) for row in rows]


# ------------------------------------------------------------------------------------ audit

RECORD_AUDIT = """
    INSERT INTO audit_log (at, actor_user_id, actor_org_id, action, scanner_id, token_id,
                           recipient_user_id, notification_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
"""


class PostgresAudit:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def record(self, entry: AuditEntry) -> None:
        await self.conn.execute(RECORD_AUDIT, *_audit_values(entry))


# ------------------------------------------------------------------------------------ email quota

# A transaction lock per address (released at commit or rollback): 64 bits of a hash of the
# address, in a namespace of its own. Two addresses sharing a hash only wait for each other.
EMAIL_LOCK_RECIPIENT = (
    "SELECT pg_advisory_xact_lock(hashtextextended('scanner-auth.email-recipient:' || $1, 0))"
)
# The n-th most recent request of the window, per code and per address (NULL: fewer than n).
# A separate statement from the lock: under READ COMMITTED it sees every request committed by
# whoever held the lock before.
EMAIL_FULL_SINCE = """
    SELECT
        (SELECT requested_at FROM email_requests WHERE token_id = $1 AND requested_at > $3
         ORDER BY requested_at DESC OFFSET $4::integer - 1 LIMIT 1) AS code_full_since,
        (SELECT requested_at FROM email_requests WHERE recipient = $2 AND requested_at > $3
         ORDER BY requested_at DESC OFFSET $5::integer - 1 LIMIT 1) AS recipient_full_since
"""
EMAIL_ADD = """
    INSERT INTO email_requests (notification_id, token_id, recipient, requested_at)
    VALUES ($1, $2, $3, $4)
"""
EMAIL_PURGE = "DELETE FROM email_requests WHERE requested_at < $1"


class PostgresEmailRequests:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def lock_recipient(self, recipient: str) -> None:
        await self.conn.execute(EMAIL_LOCK_RECIPIENT, recipient)

    async def full_since(
        self, token_id: str, recipient: str, since: datetime, *, per_code: int, per_recipient: int
    ) -> tuple[datetime | None, datetime | None]:
        row = await self.conn.fetchrow(
            EMAIL_FULL_SINCE, token_id, recipient, since, per_code, per_recipient
        )
        return row["code_full_since"], row["recipient_full_since"]

    async def add(self, notification_id: str, token_id: str, recipient: str, at: datetime) -> None:
        await self.conn.execute(EMAIL_ADD, notification_id, token_id, recipient, at)

    async def purge(self, before: datetime) -> int:
        status = await self.conn.execute(EMAIL_PURGE, before)
        return int(status.rpartition(" ")[2] or 0)


# ------------------------------------------------------------------------------------ unit of work


class PostgresUnitOfWork(uow.PostgresUnitOfWork):
    """One connection, one transaction, the token-issuer's repositories on it."""

    scanners: ScannerRepository
    people: PeopleRepository
    tokens: TokenRepository
    audit: AuditRepository
    emails: EmailRequestRepository

    def __init__(self, database: Database) -> None:
        super().__init__(database, source=SOURCE)

    def bind(self, conn: Connection) -> None:
        self.scanners = PostgresScanners(conn)
        self.people = PostgresPeople(conn)
        self.tokens = PostgresTokens(conn)
        self.audit = PostgresAudit(conn)
        self.emails = PostgresEmailRequests(conn)
