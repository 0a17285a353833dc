"""The fakes every unit test uses: scan-ingest's tables in a `MemoryStore`, a repository with the
PostgreSQL one's behaviour (`tests/test_repositories.py` runs one suite against both), and the
gate writer's unit of work over them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

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
    updated_at: datetime | None = None  # when its standing was last set (None: announced)

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
    # The database's clock (PostgreSQL's now()): a test moves it with `advance()`.
    clock: datetime = field(default_factory=lambda: datetime(2026, 1, 1, 12, 0, tzinfo=UTC))
    credentials: dict[bytes, StoredCredential] = field(default_factory=dict)
    # gate_revocations: credential id -> (scanner id, when it was recorded)
    revocations: dict[str, tuple[str, datetime]] = field(default_factory=dict)
    # The payloads committed units of work sent to the replicas (NOTIFY), in order.
    notifications: list[str] = field(default_factory=list)

    def advance(self, seconds: float) -> datetime:
        self.clock += timedelta(seconds=seconds)
        return self.clock


class MemoryGateCredentials:
    def __init__(self, store: GateStore) -> None:
        self.store = store

    async def lock_scanner(self, scanner_id: str) -> None:
        """Nothing to do: one event loop, and a memory unit of work never awaits I/O."""

    async def add(self, fact: CredentialFact, *, scanner_id: str, org_id: str) -> bool:
        if fact.digest in self.store.credentials:
            return False
        self.store.credentials[fact.digest] = StoredCredential(
            scanner_id, org_id, fact, updated_at=self.store.clock
        )
        return True

    async def record_revocations(self, scanner_id: str, credential_ids: Iterable[str]) -> None:
        for credential_id in credential_ids:
            self.store.revocations.setdefault(credential_id, (scanner_id, self.store.clock))

    async def facts(self, scanner_id: str) -> ScannerFacts:
        rows = [c for c in self.store.credentials.values() if c.scanner_id == scanner_id]
        return ScannerFacts(
            credentials=[c.fact for c in rows],
            standings={c.fact.digest: c.standing for c in rows},
            revoked=frozenset(
                i for i, (owner, _) in self.store.revocations.items() if owner == scanner_id
            ),
        )

    async def set_standing(self, digest: bytes, standing: Standing) -> None:
        stored = self.store.credentials.get(digest)
        if stored is not None:
            self.store.credentials[digest] = StoredCredential(
                stored.scanner_id, stored.org_id, stored.fact, standing, self.store.clock
            )

    async def purge_ended(self, *, rotated_after: float, ended_after: float) -> int:
        now = self.store.clock
        rotated_cutoff = now - timedelta(seconds=rotated_after)
        ended_cutoff = now - timedelta(seconds=ended_after)

        def ended(c: StoredCredential) -> bool:
            state, until = c.standing.state, c.standing.valid_until
            if state == CredentialState.ROTATING:
                return until is not None and until < rotated_cutoff
            if state >= CredentialState.REPLACED:
                return c.updated_at is not None and c.updated_at <= ended_cutoff
            return False

        gone = [d for d, c in self.store.credentials.items() if ended(c)]
        for digest in gone:
            del self.store.credentials[digest]
        for credential_id in [
            i for i, (_, at) in self.store.revocations.items() if at <= ended_cutoff
        ]:
            del self.store.revocations[credential_id]
        return len(gone)

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
