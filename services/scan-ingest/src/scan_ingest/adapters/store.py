"""The gate writer's view of `gate_credentials` and `gate_deauthorisations`, in one transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from scanner_auth_shared.db import run_sql

from ..domain import CredentialFact, CredentialState, Standing
from .tables import GateCredential, GateDeauthorisation

NOTIFY_CHANNEL = "scan_ingest_gate"
# NOTIFY payloads are limited to 8000 bytes; a longer scanner id asks for a full reload.
FULL_RELOAD = "*"
_MAX_PAYLOAD = 7900

_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:scanner_id, 6))")
_INSERT_CREDENTIAL = text(
    """
    INSERT INTO gate_credentials (credential_digest, credential_id, scanner_id, org_id, issued_at,
                                  previous_credential_id, previous_valid_until, state)
    VALUES (:digest, :credential_id, :scanner_id, :org_id, :issued_at,
            :previous_credential_id, :previous_valid_until, 'active')
    ON CONFLICT (credential_digest) DO NOTHING
    RETURNING 1
    """
)
_DEAUTHORISE = text(
    """
    INSERT INTO gate_deauthorisations (scanner_id, deauthorised_at) VALUES (:scanner_id, :at)
    ON CONFLICT (scanner_id) DO UPDATE
    SET deauthorised_at = GREATEST(gate_deauthorisations.deauthorised_at, EXCLUDED.deauthorised_at)
    """
)
_SET_STANDING = text(
    "UPDATE gate_credentials SET state = :state, valid_until = :valid_until, updated_at = now() "
    "WHERE credential_digest = :digest"
)
_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


@dataclass(frozen=True, slots=True)
class ScannerFacts:
    credentials: list[CredentialFact]
    standings: dict[bytes, Standing]  # as stored now
    deauthorised_at: datetime | None


class GateStore:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def lock_scanner(self, scanner_id: str) -> None:
        """Serialise the writers of one scanner (two replicas during a rebalance, say)."""
        await run_sql(self.session, _LOCK, {"scanner_id": scanner_id})

    async def add_credential(self, fact: CredentialFact, *, scanner_id: str, org_id: str) -> bool:
        """Record a credential; False when its digest was already known."""
        result = await run_sql(
            self.session,
            _INSERT_CREDENTIAL,
            {
                "digest": fact.digest,
                "credential_id": fact.credential_id,
                "scanner_id": scanner_id,
                "org_id": org_id,
                "issued_at": fact.issued_at,
                "previous_credential_id": fact.previous_credential_id,
                "previous_valid_until": fact.previous_valid_until,
            },
        )
        return result.first() is not None

    async def record_deauthorisation(self, scanner_id: str, at: datetime) -> None:
        await run_sql(self.session, _DEAUTHORISE, {"scanner_id": scanner_id, "at": at})

    async def facts(self, scanner_id: str) -> ScannerFacts:
        rows = (
            await self.session.exec(
                select(GateCredential).where(col(GateCredential.scanner_id) == scanner_id)
            )
        ).all()
        deauthorisation = await self.session.get(GateDeauthorisation, scanner_id)
        return ScannerFacts(
            credentials=[
                CredentialFact(
                    digest=bytes(row.credential_digest),
                    credential_id=row.credential_id,
                    issued_at=row.issued_at,
                    previous_credential_id=row.previous_credential_id,
                    previous_valid_until=row.previous_valid_until,
                )
                for row in rows
            ],
            standings={
                bytes(row.credential_digest): Standing(
                    CredentialState.from_label(row.state), row.valid_until
                )
                for row in rows
            },
            deauthorised_at=deauthorisation.deauthorised_at if deauthorisation else None,
        )

    async def set_standing(self, digest: bytes, standing: Standing) -> None:
        await run_sql(
            self.session,
            _SET_STANDING,
            {
                "digest": digest,
                "state": standing.state.label,
                "valid_until": standing.valid_until,
            },
        )

    async def notify(self, scanner_id: str) -> None:
        """Tell every replica (at commit) to reload this scanner's credentials."""
        payload = scanner_id if len(scanner_id.encode()) <= _MAX_PAYLOAD else FULL_RELOAD
        await run_sql(self.session, _NOTIFY, {"channel": NOTIFY_CHANNEL, "payload": payload})
