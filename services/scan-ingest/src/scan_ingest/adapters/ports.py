"""scan-ingest's ports: what its use cases (handlers.py) and its gate sync need from the outside.

- `GateCredentials`: the credential facts and standings (`gate_credentials`,
  `gate_revocations`): the gate writer's side (one scanner at a time, in a unit of work)
  and the readers' side (every row, or some scanners' rows, for the gate in memory).
  PostgreSQL: `postgres.PostgresGateCredentials`; in memory: `memory.MemoryGateCredentials`.
- `GateUnitOfWork`: the unit of work of the gate writer's consumer.
- `Gate`: the credentials in memory, as an upload reads them (`gate.CredentialGate`).
- `ScanPublisher`: `ScanIngested` onto Kafka, acknowledged (`kafka.ScanBatches`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

from scanner_auth_shared.uow import UnitOfWork

from ..domain import Admission, CredentialFact, ScannerFacts, Standing
from .gate import GateRow

# Rows in GateRow's column order, as a full load hands them over (see `load_all`).
Rows = Iterable[Sequence[Any]]


class GateCredentials(Protocol):
    # ------------------------------------------------------------ the writer (in a unit of work)

    async def lock_scanner(self, scanner_id: str) -> None:
        """Serialise the writers of one scanner until the unit of work ends (two replicas of
        the writer during a rebalance)."""
        ...

    async def add(self, fact: CredentialFact, *, scanner_id: str, org_id: str) -> bool:
        """Record a credential as `active`; False (nothing changed) when its digest is known."""
        ...

    async def record_revocations(self, scanner_id: str, credential_ids: Iterable[str]) -> None:
        """Remember these credential ids of the scanner as revoked (an id already known as
        revoked, or not yet announced, is fine: the fact stands on its own)."""
        ...

    async def facts(self, scanner_id: str) -> ScannerFacts:
        """Every credential fact of the scanner, their stored standings, its revoked ids."""
        ...

    async def set_standing(self, digest: bytes, standing: Standing) -> None: ...

    async def notify_replicas(self, scanner_id: str) -> None:
        """Tell every replica's gate, when the unit of work commits, to reload this scanner."""
        ...

    # ------------------------------------------------------------ retention (in a unit of work)

    async def purge_ended(self, *, rotated_after: float, ended_after: float) -> int:
        """Forget credentials past any use: rotated-out ones `rotated_after` seconds after their
        grace ended, replaced and revoked ones `ended_after` seconds after they ended (and
        revocations as old). How many credentials were forgotten."""
        ...

    # ------------------------------------------------------------ the readers (the gate sync)

    async def load_all(self, into: Callable[[Rows], object], *, chunk_rows: int) -> None:
        """Every credential, from one consistent snapshot, handed to `into` in chunks of at
        most `chunk_rows` rows (so that a million never sit in memory as rows at once)."""
        ...

    async def of_scanners(self, scanner_ids: Sequence[str]) -> list[GateRow]:
        """The credentials of these scanners."""
        ...


class GateUnitOfWork(UnitOfWork, Protocol):
    @property
    def credentials(self) -> GateCredentials: ...


class Gate(Protocol):
    """The credentials in memory: what an upload asks, without I/O."""

    @property
    def loaded(self) -> bool:
        """True once a full load completed."""
        ...

    def lookup(self, digest: bytes, now: float) -> Admission | None:
        """The credential with this SHA-256 digest, and whether it admits an upload at `now`."""
        ...


class ScanPublisher(Protocol):
    def publish(self, key: bytes, value: bytes) -> Awaitable[None]:
        """Publish one `ScanIngested` record (`value`, its CloudEvents bytes) under `key` (the
        scanner id); the awaitable completes once Kafka acknowledged it and raises otherwise
        (not acknowledged in time, refused, the publisher stopping)."""
        ...
