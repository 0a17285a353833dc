"""The fakes every unit test uses: scan-ingest's tables in a `MemoryStore`, a repository with the
PostgreSQL one's behaviour (`tests/test_repositories.py` runs one suite against both), and the
gate writer's unit of work over them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from scanner_auth_shared.uow import MemoryStore, MemoryUnitOfWork

from ..domain import SOURCE, CredentialFact, CredentialState, ScannerFacts, Standing
from .gate import GateRow
from .gate_sync import notification_for
from .ports import Rows

_ACTIVE = Standing(CredentialState.ACTIVE)


@dataclass(frozen=True, slots=True)
class StoredCredential:
    """One row of `gate_credentials`."""

    scanner_id: str
    org_id: str
    fact: CredentialFact
    standing: Standing = _ACTIVE

    def row(self) -> GateRow:
        return GateRow(
            self.fact.digest,
            self.fact.credential_id,
            self.scanner_id,
            self.org_id,
            self.standing.state.label,
            self.standing.valid_until,
        )


@dataclass
class GateStore(MemoryStore):
    credentials: dict[bytes, StoredCredential] = field(default_factory=dict)
    deauthorisations: dict[str, datetime] = field(default_factory=dict)
    # The payloads committed units of work sent to the replicas (NOTIFY), in order.
    notifications: list[str] = field(default_factory=list)


class MemoryGateCredentials:
    def __init__(self, store: GateStore) -> None:
        self.store = store

    async def lock_scanner(self, scanner_id: str) -> None:
        """Nothing to do: one event loop, and a memory unit of work never awaits I/O."""

    async def add(self, fact: CredentialFact, *, scanner_id: str, org_id: str) -> bool:
        if fact.digest in self.store.credentials:
            return False
        self.store.credentials[fact.digest] = StoredCredential(scanner_id, org_id, fact)
        return True

    async def record_deauthorisation(self, scanner_id: str, at: datetime) -> None:
        known = self.store.deauthorisations.get(scanner_id)
        self.store.deauthorisations[scanner_id] = at if known is None else max(known, at)

    async def facts(self, scanner_id: str) -> ScannerFacts:
        rows = [c for c in self.store.credentials.values() if c.scanner_id == scanner_id]
        return ScannerFacts(
            credentials=[c.fact for c in rows],
            standings={c.fact.digest: c.standing for c in rows},
            deauthorised_at=self.store.deauthorisations.get(scanner_id),
        )

    async def set_standing(self, digest: bytes, standing: Standing) -> None:
        stored = self.store.credentials.get(digest)
        if stored is not None:
            self.store.credentials[digest] = StoredCredential(
                stored.scanner_id, stored.org_id, stored.fact, standing
            )

    async def notify_replicas(self, scanner_id: str) -> None:
        # Part of the store: kept if the unit of work commits, rolled back with it otherwise.
        self.store.notifications.append(notification_for(scanner_id))

    async def load_all(self, into: Callable[[Rows], object], *, chunk_rows: int) -> None:
        rows = [c.row() for c in self.store.credentials.values()]
        for start in range(0, len(rows), chunk_rows):
            into(rows[start : start + chunk_rows])

    async def of_scanners(self, scanner_ids: Sequence[str]) -> list[GateRow]:
        wanted = set(scanner_ids)
        return [c.row() for c in self.store.credentials.values() if c.scanner_id in wanted]


class MemoryGateUnitOfWork(MemoryUnitOfWork):
    store: GateStore

    def __init__(self, store: GateStore) -> None:
        super().__init__(store, source=SOURCE)
        self.credentials = MemoryGateCredentials(store)
