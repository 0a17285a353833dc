"""scan-ingest's repository over asyncpg (SQL with `$n`, one statement per method), and the unit
of work of the gate writer: the one way to its database.

`gate_credentials` holds one row per credential announced (the facts) with its derived
standing, until the purge forgets it; `gate_revocations` the credential ids a CredentialsRevoked
closed. (`gate_deauthorisations`, the time-based deauthorisations before issue 18, is no longer
read or written.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from scanner_auth_shared.postgres import Connection, Database
from scanner_auth_shared.uow import PostgresUnitOfWork

from ..domain import SOURCE, CredentialFact, CredentialState, ScannerFacts, Standing
from .gate import GateRow
from .gate_sync import NOTIFY_CHANNEL, notification_for
from .ports import Rows

LOCK_SCANNER = "SELECT pg_advisory_xact_lock(hashtextextended($1, 6))"
INSERT_CREDENTIAL = """
    INSERT INTO gate_credentials (credential_digest, credential_id, scanner_id, org_id, issued_at,
                                  previous_credential_id, previous_valid_until, state)
    VALUES ($1, $2, $3, $4, $5, $6, $7, 'active')
    ON CONFLICT (credential_digest) DO NOTHING
    RETURNING 1
"""
RECORD_REVOCATIONS = """
    INSERT INTO gate_revocations (credential_id, scanner_id)
    SELECT unnest($2::text[]), $1
    ON CONFLICT (credential_id) DO NOTHING
"""
# The scanner's credentials and its revoked ids in one round trip: a LEFT JOIN from a one-row
# VALUES, so that a scanner with revocations and no credential yet still returns them.
SCANNER_FACTS = """
    SELECT (SELECT array_agg(r.credential_id) FROM gate_revocations AS r
            WHERE r.scanner_id = s.scanner_id) AS revoked,
           c.credential_digest, c.credential_id, c.issued_at,
           c.previous_credential_id, c.previous_valid_until, c.state, c.valid_until
    FROM (VALUES ($1::text)) AS s (scanner_id)
    LEFT JOIN gate_credentials AS c ON c.scanner_id = s.scanner_id
"""
# Retention: one statement, each arm on its partial index (gate_credentials_rotated_until,
# gate_credentials_ended), so a purge that finds nothing reads nothing.
PURGE_ENDED = """
    WITH gone AS (
        DELETE FROM gate_credentials
        WHERE (state = 'rotating' AND valid_until < now() - make_interval(secs => $1))
           OR (state IN ('replaced', 'revoked') AND updated_at <= now() - make_interval(secs => $2))
        RETURNING 1
    ), forgotten AS (
        DELETE FROM gate_revocations WHERE revoked_at <= now() - make_interval(secs => $2)
    )
    SELECT count(*) FROM gone
"""
SET_STANDING = """
    UPDATE gate_credentials SET state = $2, valid_until = $3, updated_at = now()
    WHERE credential_digest = $1
"""
NOTIFY = "SELECT pg_notify($1, $2)"
# The gate's columns, in GateRow's order.
ALL_CREDENTIALS = """
    SELECT credential_digest, credential_id, scanner_id, org_id, state, valid_until
    FROM gate_credentials
"""
SCANNERS_CREDENTIALS = """
    SELECT credential_digest, credential_id, scanner_id, org_id, state, valid_until
    FROM gate_credentials WHERE scanner_id = ANY($1::text[])
"""


class PostgresGateCredentials:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def lock_scanner(self, scanner_id: str) -> None:
        await self.conn.execute(LOCK_SCANNER, scanner_id)

    async def add(self, fact: CredentialFact, *, scanner_id: str, org_id: str) -> bool:
        inserted = await self.conn.fetchval(
            INSERT_CREDENTIAL,
            fact.digest,
            fact.credential_id,
            scanner_id,
            org_id,
            fact.issued_at,
            fact.previous_credential_id,
            fact.previous_valid_until,
        )
        return inserted is not None

    async def record_revocations(self, scanner_id: str, credential_ids: Iterable[str]) -> None:
        await self.conn.execute(RECORD_REVOCATIONS, scanner_id, sorted(set(credential_ids)))

    async def facts(self, scanner_id: str) -> ScannerFacts:
        rows = await self.conn.fetch(SCANNER_FACTS, scanner_id)
        credentials = [
            CredentialFact(
                digest=bytes(row["credential_digest"]),
                credential_id=row["credential_id"],
                issued_at=row["issued_at"],
                previous_credential_id=row["previous_credential_id"],
                previous_valid_until=row["previous_valid_until"],
            )
            for row in rows
            if row["credential_digest"] is not None
        ]
        standings = {
            bytes(row["credential_digest"]): Standing(
                CredentialState.from_label(row["state"]), row["valid_until"]
            )
            for row in rows
            if row["credential_digest"] is not None
        }
        return ScannerFacts(credentials, standings, frozenset(rows[0]["revoked"] or ()))

    async def set_standing(self, digest: bytes, standing: Standing) -> None:
        await self.conn.execute(SET_STANDING, digest, standing.state.label, standing.valid_until)

    async def notify_replicas(self, scanner_id: str) -> None:
        # Inside the transaction: PostgreSQL delivers it at commit, and not at all on rollback.
        await self.conn.execute(NOTIFY, NOTIFY_CHANNEL, notification_for(scanner_id))

    async def purge_ended(self, *, rotated_after: float, ended_after: float) -> int:
        gone: int = await self.conn.fetchval(PURGE_ENDED, float(rotated_after), float(ended_after))
        return gone

    async def load_all(self, into: Callable[[Rows], object], *, chunk_rows: int) -> None:
        # The one place rows leave as asyncpg Records: straight into the gate's packer, which
        # unpacks each once (a full load is a million of them; a copy into tuples first would
        # be a tenth more of its time).
        async with self.conn.transaction(isolation="repeatable_read", readonly=True):
            cursor = await self.conn.cursor(ALL_CREDENTIALS)
            while rows := await cursor.fetch(chunk_rows):
                into(rows)

    async def of_scanners(self, scanner_ids: Sequence[str]) -> list[GateRow]:
        rows = await self.conn.fetch(SCANNERS_CREDENTIALS, list(scanner_ids))
        return [GateRow._make(row) for row in rows]


class PostgresGateUnitOfWork(PostgresUnitOfWork):
    credentials: PostgresGateCredentials

    def __init__(self, database: Database) -> None:
        super().__init__(database, source=SOURCE)

    def bind(self, conn: Connection) -> None:
        self.credentials = PostgresGateCredentials(conn)
