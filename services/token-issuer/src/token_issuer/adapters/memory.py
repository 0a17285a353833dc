"""The token-issuer's repositories in memory: the fake every use-case test runs against, held
to the same behaviour as PostgreSQL by tests/test_repositories.py.

What the fake keeps of PostgreSQL's semantics, where it matters:
- a unit of work rolls back unless it commits (the shared `MemoryUnitOfWork`: the store is
  copied on entry and put back);
- units of work on one store run one at a time (`StoreLock`, held from entry to exit: the
  strongest lock there is), while every repository call yields to the event loop as a round
  trip would, so that concurrent use cases interleave between units of work as they do between
  transactions (two sweepers, fifty generates);
- the row lock that orders the outbox: committing an event for a scanner whose row this unit of
  work did not lock (`get_for_update`, `get_with_grant_for_update`) fails, as a reminder that on
  PostgreSQL its events could be published out of commit order.

Orders: the scanner list sorts by code points where PostgreSQL uses the database's collation
(the same for the names the tests use).
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from scanner_auth_shared import uow

from .. import SOURCE
from ..domain import (
    ACTIVE,
    EXPIRED,
    AuditEntry,
    DirectoryUser,
    ListedScanner,
    Person,
    RevokeReason,
    Scanner,
    SeenPrincipal,
    Token,
    person,
)
from .ports import (
    AuditRepository,
    EmailRequestRepository,
    PeopleRepository,
    ScannerRepository,
    TokenRepository,
)


class StoreLock:
    """One unit of work at a time on a store. Copying the store keeps the same lock."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()

    def __deepcopy__(self, memo: dict[int, Any]) -> StoreLock:
        return self


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token row: the token and the columns only the database reads."""

    token: Token
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None
    expired_at: datetime | None = None


@dataclass
class Store(uow.MemoryStore):
    scanners: dict[str, Scanner] = field(default_factory=dict)
    users: dict[str, DirectoryUser] = field(default_factory=dict)
    grants: set[tuple[str, str]] = field(default_factory=set)  # (scanner id, user id)
    seen: dict[str, tuple[SeenPrincipal, datetime]] = field(default_factory=dict)
    tokens: dict[str, TokenRecord] = field(default_factory=dict)  # in insertion (seq) order
    audit_log: list[AuditEntry] = field(default_factory=list)
    # notification id -> (token id, recipient, requested at)
    email_requests: dict[str, tuple[str, str, datetime]] = field(default_factory=dict)
    lock: StoreLock = field(default_factory=StoreLock)


async def _round_trip() -> None:
    await asyncio.sleep(0)


class _Repository:
    def __init__(self, store: Store, locked: set[str]) -> None:
        self.store = store
        self.locked = locked  # the scanner rows the unit of work holds


class MemoryScanners(_Repository):
    async def get_with_grant(self, scanner_id: str, user_id: str) -> tuple[Scanner | None, bool]:
        await _round_trip()
        scanner = self.store.scanners.get(scanner_id)
        if scanner is None:
            return None, False
        return scanner, (scanner_id, user_id) in self.store.grants

    async def get_with_grant_for_update(
        self, scanner_id: str, user_id: str
    ) -> tuple[Scanner | None, bool]:
        found = await self.get_with_grant(scanner_id, user_id)
        if found[0] is not None:
            self.locked.add(scanner_id)
        return found

    async def get_for_update(self, scanner_id: str) -> Scanner | None:
        await _round_trip()
        scanner = self.store.scanners.get(scanner_id)
        if scanner is not None:
            self.locked.add(scanner_id)
        return scanner

    async def listed_for(
        self, user_id: str, org_id: str, *, support: bool, admin: bool
    ) -> list[ListedScanner]:
        await _round_trip()
        listed = []
        for s in self.store.scanners.values():
            granted = (s.scanner_id, user_id) in self.store.grants
            if not s.visible or s.org_id is None:
                continue
            if not (support or (s.org_id == org_id and (admin or granted))):
                continue
            latest = self._latest_token(s.scanner_id)
            listed.append(
                ListedScanner(
                    scanner_id=s.scanner_id,
                    org_id=s.org_id,
                    name=s.name,
                    serial_number=s.serial_number,
                    model=s.model,
                    authorised=s.authorised,
                    authorised_at=s.authorised_at,
                    has_grant=granted,
                    token_status=latest.status if latest is not None else None,
                    token_expires_at=latest.expires_at if latest is not None else None,
                )
            )
        return sorted(listed, key=lambda s: (s.org_id, s.name, s.scanner_id))

    def _latest_token(self, scanner_id: str) -> Token | None:
        mine = [r.token for r in self.store.tokens.values() if r.token.scanner_id == scanner_id]
        return mine[-1] if mine else None

    async def register(
        self, scanner_id: str, org_id: str, serial_number: str, name: str, model: str
    ) -> None:
        await _round_trip()
        self._put(
            scanner_id,
            org_id=org_id,
            serial_number=serial_number,
            name=name,
            model=model,
            registered=True,
        )

    async def ensure(self, scanner_id: str, org_id: str) -> None:
        await _round_trip()
        if scanner_id not in self.store.scanners:
            self.store.scanners[scanner_id] = Scanner(scanner_id=scanner_id, org_id=org_id)

    async def mark_removed(self, scanner_id: str, at: datetime) -> None:
        await _round_trip()
        self._update(scanner_id, removed_at=at)

    async def set_authorised(
        self, scanner_id: str, *, at: datetime, credential_id: str, serial_number: str
    ) -> None:
        await _round_trip()
        self._update(
            scanner_id,
            authorised=True,
            authorised_at=at,
            credential_id=credential_id,
            authorised_serial_number=serial_number,
        )

    async def set_credential(self, scanner_id: str, credential_id: str) -> None:
        await _round_trip()
        self._update(scanner_id, credential_id=credential_id)

    async def set_deauthorised(self, scanner_id: str, at: datetime) -> None:
        await _round_trip()
        scanner = self.store.scanners.get(scanner_id)
        if scanner is None:
            return
        previous = scanner.deauthorised_at
        self._update(
            scanner_id,
            authorised=False,
            authorised_at=None,
            credential_id=None,
            authorised_serial_number=None,
            deauthorised_at=max(previous, at) if previous is not None else at,
        )

    def _put(self, scanner_id: str, **changes: Any) -> None:
        scanner = self.store.scanners.get(scanner_id, Scanner(scanner_id=scanner_id))
        self.store.scanners[scanner_id] = dataclasses.replace(scanner, **changes)

    def _update(self, scanner_id: str, **changes: Any) -> None:
        if scanner_id in self.store.scanners:
            self._put(scanner_id, **changes)


class MemoryPeople(_Repository):
    async def upsert_user(self, user_id: str, org_id: str, email: str, display_name: str) -> None:
        await _round_trip()
        self.store.users[user_id] = DirectoryUser(user_id, org_id, email, display_name)

    async def grant(self, scanner_id: str, user_id: str) -> None:
        await _round_trip()
        self.store.grants.add((scanner_id, user_id))

    async def revoke_grant(self, scanner_id: str, user_id: str) -> None:
        await _round_trip()
        self.store.grants.discard((scanner_id, user_id))

    async def record_seen(self, seen: SeenPrincipal, at: datetime) -> None:
        await _round_trip()
        known = self.store.seen.get(seen.user_id)
        if known is None or known[1] <= at:
            self.store.seen[seen.user_id] = (seen, at)

    async def person(self, user_id: str, scanner_id: str) -> Person | None:
        await _round_trip()
        user = self.store.users.get(user_id)
        seen = self.store.seen.get(user_id)
        if user is None and seen is None:
            return None
        granted = (scanner_id, user_id) in self.store.grants
        return person(user_id, user, _seen_at(seen), has_grant=granted)

    async def around(self, scanner_id: str, org_id: str) -> list[Person]:
        await _round_trip()
        granted = {u for s, u in self.store.grants if s == scanner_id}
        seen_here = {
            u: _seen_at((s, at)) for u, (s, at) in self.store.seen.items() if s.org_id == org_id
        }
        return [
            person(u, self.store.users.get(u), seen_here.get(u), has_grant=u in granted)
            for u in sorted(granted | set(seen_here))
        ]


def _seen_at(seen: tuple[SeenPrincipal, datetime] | None) -> SeenPrincipal | None:
    """The principal as read back: with the time it was recorded at (`last_seen_at`)."""
    return None if seen is None else dataclasses.replace(seen[0], seen_at=seen[1])


class MemoryTokens(_Repository):
    async def add(self, token: Token, audit: AuditEntry) -> None:
        await _round_trip()
        if token.token_id in self.store.tokens:
            raise ValueError(f"token {token.token_id} exists")  # the primary key
        if token.status == ACTIVE and self._active(token.scanner_id) is not None:
            raise ValueError("a scanner has one active token at most")  # tokens_one_active
        self.store.tokens[token.token_id] = TokenRecord(token)
        self.store.audit_log.append(audit)

    def _active(self, scanner_id: str) -> Token | None:
        return next(
            (
                r.token
                for r in self.store.tokens.values()
                if r.token.scanner_id == scanner_id and r.token.status == ACTIVE
            ),
            None,
        )

    async def active(self, scanner_id: str) -> Token | None:
        await _round_trip()
        return self._active(scanner_id)

    async def latest(self, scanner_id: str) -> Token | None:
        await _round_trip()
        mine = [r.token for r in self.store.tokens.values() if r.token.scanner_id == scanner_id]
        return mine[-1] if mine else None

    async def get(self, token_id: str) -> Token | None:
        await _round_trip()
        record = self.store.tokens.get(token_id)
        return record.token if record is not None else None

    async def revoke(self, token_id: str, *, at: datetime, by: str, reason: RevokeReason) -> bool:
        await _round_trip()
        record = self.store.tokens.get(token_id)
        if record is None or record.token.status != ACTIVE:
            return False
        token = dataclasses.replace(record.token, status="revoked", code_ciphertext=None)
        self.store.tokens[token_id] = dataclasses.replace(
            record, token=token, revoked_at=at, revoked_by=by, revoke_reason=reason
        )
        return True

    async def expire(self, token_id: str, now: datetime) -> Token | None:
        await _round_trip()
        record = self.store.tokens.get(token_id)
        if record is None or record.token.status != ACTIVE or record.token.expires_at > now:
            return None
        token = dataclasses.replace(record.token, status=EXPIRED, code_ciphertext=None)
        self.store.tokens[token_id] = dataclasses.replace(
            record, token=token, expired_at=token.expires_at
        )
        return token

    async def redeem(self, token_id: str, at: datetime) -> bool:
        await _round_trip()
        record = self.store.tokens.get(token_id)
        if record is None or record.token.status not in (ACTIVE, EXPIRED):
            return False
        token = dataclasses.replace(
            record.token, status="redeemed", code_ciphertext=None, redeemed_at=at
        )
        self.store.tokens[token_id] = dataclasses.replace(record, token=token)
        return True

    async def due(self, now: datetime, limit: int) -> list[tuple[str, str]]:
        await _round_trip()
        due = [
            r.token
            for r in self.store.tokens.values()
            if r.token.status == ACTIVE and r.token.expires_at <= now
        ]
        due.sort(key=lambda t: t.expires_at)
        return [(t.token_id, t.scanner_id) for t in due[:limit]]


class MemoryAudit(_Repository):
    async def record(self, entry: AuditEntry) -> None:
        await _round_trip()
        self.store.audit_log.append(entry)


class MemoryEmailRequests(_Repository):
    async def lock_recipient(self, recipient: str) -> None:
        await _round_trip()  # units of work on one store run one at a time already

    async def full_since(
        self, token_id: str, recipient: str, since: datetime, *, per_code: int, per_recipient: int
    ) -> tuple[datetime | None, datetime | None]:
        await _round_trip()
        recent = [r for r in self.store.email_requests.values() if r[2] > since]

        def nth_newest(times: list[datetime], n: int) -> datetime | None:
            times.sort(reverse=True)
            return times[n - 1] if len(times) >= n else None

        return (
            nth_newest([at for t, _, at in recent if t == token_id], per_code),
            nth_newest([at for _, r, at in recent if r == recipient], per_recipient),
        )

    async def add(self, notification_id: str, token_id: str, recipient: str, at: datetime) -> None:
        await _round_trip()
        if notification_id in self.store.email_requests:
            raise ValueError(f"email request {notification_id} exists")  # the primary key
        self.store.email_requests[notification_id] = (token_id, recipient, at)

    async def purge(self, before: datetime) -> int:
        await _round_trip()
        old = [n for n, (_, _, at) in self.store.email_requests.items() if at < before]
        for n in old:
            del self.store.email_requests[n]
        return len(old)


class UnlockedScannerEvent(AssertionError):
    """A unit of work emitted an event for a scanner whose row it had not locked."""


class MemoryUnitOfWork(uow.MemoryUnitOfWork):
    store: Store
    scanners: ScannerRepository
    people: PeopleRepository
    tokens: TokenRepository
    audit: AuditRepository
    emails: EmailRequestRepository

    def __init__(self, store: Store) -> None:
        super().__init__(store, source=SOURCE)
        self.locked: set[str] = set()

    async def __aenter__(self) -> Self:
        await self.store.lock.lock.acquire()
        try:
            await super().__aenter__()
        except BaseException:
            self.store.lock.lock.release()
            raise
        self.locked = set()
        self.scanners = MemoryScanners(self.store, self.locked)
        self.people = MemoryPeople(self.store, self.locked)
        self.tokens = MemoryTokens(self.store, self.locked)
        self.audit = MemoryAudit(self.store, self.locked)
        self.emails = MemoryEmailRequests(self.store, self.locked)
        return self

    async def commit(self) -> None:
        unlocked = {
            o.event.subject
            for o in self.pending
            if o.event.subject is not None and o.event.subject not in self.locked
        }
        if unlocked:
            raise UnlockedScannerEvent(f"events for {sorted(unlocked)} without the row lock")
        await super().commit()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await super().__aexit__(exc_type, exc, tb)
        finally:
            self.store.lock.lock.release()
