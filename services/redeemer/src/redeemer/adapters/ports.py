"""The redeemer's ports: its unit of work and one protocol per repository. Two adapters
implement every one of them with the same behaviour: `postgres.py` (the service) and `memory.py`
(the fakes of the unit tests); `tests/test_repositories.py` holds them to it.

Lock order, never violated by any use case (so that no two redeemer transactions deadlock):
attempt locks (serial, then address) → token row → the scanner's credential state → its
credentials.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from scanner_auth_shared.uow import UnitOfWork as BaseUnitOfWork

from ..domain import (
    AddressThrottle,
    AttemptState,
    Credential,
    SerialThrottle,
    TokenView,
)


class Throttles(Protocol):
    """The brute-force counters of serial numbers and client addresses."""

    async def state(self, serial_key: str, address: str) -> AttemptState:
        """Both counters, and the database's clock (the transaction's start)."""
        ...

    async def lock(self, serial_key: str, address: str) -> None:
        """Serialise the attempts on one serial number and from one address until commit, the
        serial's lock always first: the state read next cannot go stale, so a burst of parallel
        guesses gets no more tries than a sequence would."""
        ...

    async def save_serial(self, serial_key: str, state: SerialThrottle, now: datetime) -> None: ...

    async def save_address(self, address: str, state: AddressThrottle, now: datetime) -> None: ...

    async def clear_serial(self, serial_key: str) -> None:
        """A success: the serial's consecutive failures start again from zero."""
        ...

    async def forget_stale_serials(self, retention_seconds: float) -> int:
        """Delete serial counters untouched for that long whose lock (if any) has passed."""
        ...

    async def forget_stale_addresses(self, retention_seconds: float) -> int:
        """The same for addresses."""
        ...


class Tokens(Protocol):
    """The redeemer's own view of tokens (from the token-issuer's events), with the directory's
    serial number of each token's scanner."""

    async def by_digest(self, code_digest: str) -> TokenView | None:
        """The token of this code digest (an active one first, else the latest issued); None
        when none has it."""
        ...

    async def by_id(self, token_id: str) -> TokenView | None: ...

    async def mark_redeemed(self, token_id: str) -> bool:
        """The single statement that makes a code single-use: True for the one attempt that
        found the token active and unexpired (by the database's clock), False for every other,
        however many run at once."""
        ...

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
        """A TokenIssued: the token becomes known; one already ended (its TokenRevoked or
        TokenExpired overtook it) keeps its status."""
        ...

    async def ended(
        self, *, token_id: str, scanner_id: str, org_id: str, status: str, at: datetime
    ) -> None:
        """A TokenRevoked or TokenExpired (`status` revoked or expired): ends an active token
        only; recorded, without a digest, when its TokenIssued has not arrived."""
        ...


class Scanners(Protocol):
    """The redeemer's own view of the directory's scanners (their serial numbers)."""

    async def registered(self, scanner_id: str, org_id: str, serial_number: str) -> None: ...

    async def removed(self, scanner_id: str) -> None:
        """Sticky: a ScannerRegistered arriving later does not bring it back."""
        ...


class Credentials(Protocol):
    """Scanner credentials (digests only), and each scanner's credential state row."""

    async def lock_scanner(self, scanner_id: str) -> datetime:
        """Lock the scanner's credential state (creating it) until commit: every change of the
        scanner's credentials, and every event about the scanner, comes after it (so the
        outbox publishes them in this order). Returns the time to stamp a new credential with:
        the database's clock."""
        ...

    async def revoke_live(self, scanner_id: str) -> list[str]:
        """Revoke every live (active or rotating) credential of the scanner, whenever it was
        issued: the ids revoked, sorted."""
        ...

    async def rotations_since(self, scanner_id: str, since: datetime) -> list[datetime]:
        """The issue times of the scanner's credentials that came from a rotation, issued
        after `since` (the rotation limit)."""
        ...

    async def replace_live(self, scanner_id: str, at: datetime) -> int:
        """Every live (active or rotating) credential of the scanner becomes replaced."""
        ...

    async def add(self, credential: Credential) -> None: ...

    async def by_digest(self, credential_digest: str) -> Credential | None: ...

    async def by_id(self, credential_id: str) -> Credential | None: ...

    async def start_grace(self, credential_id: str, valid_until: datetime) -> None:
        """An active credential becomes rotating, working until `valid_until`."""
        ...

    async def now(self) -> datetime:
        """The database's clock."""
        ...


class UnitOfWork(BaseUnitOfWork, Protocol):
    @property
    def throttles(self) -> Throttles: ...

    @property
    def tokens(self) -> Tokens: ...

    @property
    def scanners(self) -> Scanners: ...

    @property
    def credentials(self) -> Credentials: ...
