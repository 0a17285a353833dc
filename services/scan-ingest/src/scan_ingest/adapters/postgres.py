"""scan-ingest's repository over asyncpg (SQL with `$n`, one statement per method), and the unit
of work of the gate writer: the one way to its database.

`gate_credentials` holds one row per credential ever announced (the facts) with its derived
standing; `gate_deauthorisations` the latest deauthorisation seen per scanner.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

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
RECORD_DEAUTHORISATION = """
    INSERT INTO gate_deauthorisations (scanner_id, deauthorised_at) VALUES ($1, $2)
    ON CONFLICT (scanner_id) DO UPDATE
    SET deauthorised_at = GREATEST(gate_deauthorisations.deauthorised_at, EXCLUDED.deauthorised_at)
"""
# The scanner's credentials and its deauthorisation in one round trip: a LEFT JOIN from a
# one-row VALUES, so that a scanner with a deauthorisation and no credential yet (it arrived
# first) still returns its time.
SCANNER_FACTS = """
    SELECT d.deauthorised_at, c.credential_digest, c.credential_id, c.issued_at,
           c.previous_credential_id, c.previous_valid_until, c.state, c.valid_until
    FROM (VALUES ($1::text)) AS s (scanner_id)
    LEFT JOIN gate_deauthorisations AS d ON d.scanner_id = s.scanner_id
    LEFT JOIN gate_credentials AS c ON c.scanner_id = s.scanner_id
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

    async def record_deauthorisation(self, scanner_id: str, at: datetime) -> None:
        await self.conn.execute(RECORD_DEAUTHORISATION, scanner_id, at)

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
        return ScannerFacts(credentials, standings, rows[0]["deauthorised_at"])

    async def set_standing(self, digest: bytes, standing: Standing) -> None:
        await self.conn.execute(SET_STANDING, digest, standing.state.label, standing.valid_until)

    async def notify_replicas(self, scanner_id: str) -> None:
        # Inside the transaction: PostgreSQL delivers it at commit, and not at all on rollback.
        await self.conn.execute(NOTIFY, NOTIFY_CHANNEL, notification_for(scanner_id))

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
