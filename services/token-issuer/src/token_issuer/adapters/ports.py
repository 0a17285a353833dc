"""The ports of the token-issuer: its unit of work and one protocol per repository.

Implemented twice, with the same behaviour: over PostgreSQL (`postgres.py`) and in memory
(`memory.py`, the fake every use-case test runs against; `tests/test_repositories.py` holds
both to the same assertions).

Ordering: the outbox relay publishes in outbox-id order, which must be commit order per
scanner. So every unit of work that emits an event for a scanner first locks that scanner's row
(`get_for_update`, `get_with_grant_for_update`), until it ends.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from scanner_auth_shared import uow

from ..domain import (
    AuditEntry,
    ListedScanner,
    Person,
    RevokeReason,
    Scanner,
    SeenPrincipal,
    Token,
)


class ScannerRepository(Protocol):
    async def get_with_grant(self, scanner_id: str, user_id: str) -> tuple[Scanner | None, bool]:
        """The scanner and whether `user_id` holds a grant on it (one round trip)."""
        ...

    async def get_with_grant_for_update(
        self, scanner_id: str, user_id: str
    ) -> tuple[Scanner | None, bool]:
        """`get_with_grant`, the scanner's row locked until the unit of work ends."""
        ...

    async def get_for_update(self, scanner_id: str) -> Scanner | None:
        """The scanner, its row locked until the unit of work ends."""
        ...

    async def listed_for(
        self, user_id: str, org_id: str, *, support: bool, admin: bool
    ) -> list[ListedScanner]:
        """Visible scanners `user_id` may be able to view, with their latest token, ordered by
        organisation, name and id. A pre-filter only: `domain.summary` decides."""
        ...

    async def register(
        self, scanner_id: str, org_id: str, serial_number: str, name: str, model: str
    ) -> None:
        """Create or update the directory's scanner (a removed one stays removed)."""
        ...

    async def ensure(self, scanner_id: str, org_id: str) -> None:
        """A row for a scanner not (yet) registered, to lock and to hold its authorisation."""
        ...

    async def mark_removed(self, scanner_id: str, at: datetime) -> None: ...

    async def set_authorised(
        self, scanner_id: str, *, at: datetime, credential_id: str, serial_number: str
    ) -> None: ...

    async def set_credential(self, scanner_id: str, credential_id: str) -> None: ...

    async def set_deauthorised(self, scanner_id: str, at: datetime) -> None:
        """Unauthorised; `deauthorised_at` becomes the later of `at` and its previous value."""
        ...


class PeopleRepository(Protocol):
    """The directory's users and grants, and who was seen authenticating."""

    async def upsert_user(
        self, user_id: str, org_id: str, email: str, display_name: str
    ) -> None: ...

    async def grant(self, scanner_id: str, user_id: str) -> None:
        """Idempotent."""
        ...

    async def revoke_grant(self, scanner_id: str, user_id: str) -> None:
        """Idempotent."""
        ...

    async def record_seen(self, seen: SeenPrincipal, at: datetime) -> None:
        """Remember `seen`, unless something seen later is already recorded."""
        ...

    async def person(self, user_id: str, scanner_id: str) -> Person | None:
        """What is known of `user_id`, relative to one scanner; None if nothing."""
        ...

    async def around(self, scanner_id: str, org_id: str) -> list[Person]:
        """Who might view the scanner, by user id: those with a grant on it and those seen in
        its organisation. `domain.person_can_view` decides which of them really can."""
        ...


class TokenRepository(Protocol):
    async def add(self, token: Token, audit: AuditEntry) -> None:
        """A new active token and its `generated` audit row."""
        ...

    async def active(self, scanner_id: str) -> Token | None: ...

    async def latest(self, scanner_id: str) -> Token | None:
        """The token added last for the scanner."""
        ...

    async def get(self, token_id: str) -> Token | None: ...

    async def revoke(self, token_id: str, *, at: datetime, by: str, reason: RevokeReason) -> bool:
        """Revoke the token if it is active (its code erased); whether this call did."""
        ...

    async def expire(self, token_id: str, now: datetime) -> Token | None:
        """Mark the token expired (at its expiry time) if it is active and due at `now`; the
        token only if this call did it."""
        ...

    async def redeem(self, token_id: str, at: datetime) -> bool:
        """Mark an active or expired token redeemed at `at`; whether this call did."""
        ...

    async def due(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        """(token id, scanner id) of active tokens due at `now`, the oldest first."""
        ...


class AuditRepository(Protocol):
    async def record(self, entry: AuditEntry) -> None: ...


class EmailRequestRepository(Protocol):
    """The email requests of the last hour, counted against the email quotas. A code's requests
    are serialised by its scanner's row lock; an address's by `lock_recipient`."""

    async def lock_recipient(self, recipient: str) -> None:
        """Hold a lock on the address until the unit of work ends: concurrent requests for one
        address (from any scanner, any replica) count one after the other."""
        ...

    async def full_since(
        self, token_id: str, recipient: str, since: datetime, *, per_code: int, per_recipient: int
    ) -> tuple[datetime | None, datetime | None]:
        """(the `per_code`-th most recent request for the token after `since`, the
        `per_recipient`-th most recent to the address after `since`), each None if there are
        fewer: when they are not None, the quota is used up until that request is an hour old."""
        ...

    async def add(
        self, notification_id: str, token_id: str, recipient: str, at: datetime
    ) -> None: ...

    async def purge(self, before: datetime) -> int:
        """Forget the requests made before `before`; how many."""
        ...


class UnitOfWork(uow.UnitOfWork, Protocol):
    scanners: ScannerRepository
    people: PeopleRepository
    tokens: TokenRepository
    audit: AuditRepository
    emails: EmailRequestRepository
