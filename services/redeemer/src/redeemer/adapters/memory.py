"""The fakes of the redeemer's ports: its tables in a `MemoryStore`, repositories with the same
behaviour as `postgres.py` (`tests/test_repositories.py` runs one suite against both), and the
unit of work that binds them. What every use-case test runs on.

The store's `clock` is the database's clock (PostgreSQL's `now()` and `clock_timestamp()`): a
test moves it with `advance()`. One event loop and no awaits that suspend: the fakes never
interleave, so the locks of the real repositories are no-ops here (the concurrency guarantees
are the integration tests' business).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from scanner_auth_shared.uow import MemoryStore
from scanner_auth_shared.uow import MemoryUnitOfWork as BaseMemoryUnitOfWork

from ..domain import (
    AddressThrottle,
    AttemptState,
    Credential,
    SerialThrottle,
    TokenStatus,
    TokenView,
)

_NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass
class TokenRow:
    token_id: str
    scanner_id: str
    org_id: str
    status: TokenStatus
    code_digest: str | None = None
    issued_at: datetime | None = None
    expires_at: datetime | None = None
    redeemed_at: datetime | None = None
    ended_at: datetime | None = None


@dataclass
class ScannerRow:
    org_id: str | None = None
    serial_number: str | None = None
    removed: bool = False


@dataclass
class Store(MemoryStore):
    clock: datetime = field(default_factory=lambda: datetime(2025, 5, 1, 12, 0, tzinfo=UTC))
    tokens: dict[str, TokenRow] = field(default_factory=dict)
    scanners: dict[str, ScannerRow] = field(default_factory=dict)
    # scanner_credential_state: the scanners that have one
    credential_states: set[str] = field(default_factory=set)
    credentials: dict[str, Credential] = field(default_factory=dict)
    # throttles: key -> (state, updated_at)
    serials: dict[str, tuple[SerialThrottle, datetime]] = field(default_factory=dict)
    addresses: dict[str, tuple[AddressThrottle, datetime]] = field(default_factory=dict)

    def advance(self, seconds: float) -> datetime:
        self.clock += timedelta(seconds=seconds)
        return self.clock


def _stale(updated_at: datetime, locked_until: datetime | None, now: datetime, keep: float) -> bool:
    return updated_at < now - timedelta(seconds=keep) and (
        locked_until is None or locked_until < now
    )


class MemoryThrottles:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def state(self, serial_key: str, address: str) -> AttemptState:
        serial = self.store.serials.get(serial_key)
        addr = self.store.addresses.get(address)
        return AttemptState(
            now=self.store.clock,
            serial=serial[0] if serial else SerialThrottle(),
            address=addr[0] if addr else AddressThrottle(),
        )

    async def lock(self, serial_key: str, address: str) -> None:
        pass  # nothing runs in between (see the module's docstring)

    async def save_serial(self, serial_key: str, state: SerialThrottle, now: datetime) -> None:
        self.store.serials[serial_key] = (state, now)

    async def save_address(self, address: str, state: AddressThrottle, now: datetime) -> None:
        self.store.addresses[address] = (state, now)

    async def clear_serial(self, serial_key: str) -> None:
        self.store.serials.pop(serial_key, None)

    async def forget_stale_serials(self, retention_seconds: float) -> int:
        now = self.store.clock
        stale = [
            key
            for key, (state, updated_at) in self.store.serials.items()
            if _stale(updated_at, state.locked_until, now, retention_seconds)
        ]
        for key in stale:
            del self.store.serials[key]
        return len(stale)

    async def forget_stale_addresses(self, retention_seconds: float) -> int:
        now = self.store.clock
        stale = [
            key
            for key, (state, updated_at) in self.store.addresses.items()
            if _stale(updated_at, state.locked_until, now, retention_seconds)
        ]
        for key in stale:
            del self.store.addresses[key]
        return len(stale)


class MemoryTokens:
    def __init__(self, store: Store) -> None:
        self.store = store

    def _view(self, row: TokenRow) -> TokenView | None:
        if row.code_digest is None or row.expires_at is None:
            return None
        scanner = self.store.scanners.get(row.scanner_id)
        return TokenView(
            token_id=row.token_id,
            scanner_id=row.scanner_id,
            org_id=row.org_id,
            code_digest=row.code_digest,
            status=row.status,
            expires_at=row.expires_at,
            scanner_serial=scanner.serial_number if scanner else None,
            scanner_removed=scanner.removed if scanner else False,
        )

    async def by_digest(self, code_digest: str) -> TokenView | None:
        matching = [r for r in self.store.tokens.values() if r.code_digest == code_digest]
        if not matching:
            return None
        # Active first, then the latest issued (PostgreSQL: NULLS LAST for an unknown issue).
        matching.sort(
            key=lambda r: (r.status == "active", r.issued_at or _NEVER),
            reverse=True,
        )
        return self._view(matching[0])

    async def by_id(self, token_id: str) -> TokenView | None:
        row = self.store.tokens.get(token_id)
        return None if row is None else self._view(row)

    async def mark_redeemed(self, token_id: str) -> bool:
        row = self.store.tokens.get(token_id)
        now = self.store.clock
        if row is None or row.status != "active" or not (row.expires_at and row.expires_at > now):
            return False
        row.status, row.redeemed_at = "redeemed", now
        return True

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
        row = self.store.tokens.setdefault(
            token_id, TokenRow(token_id, scanner_id, org_id, status="active")
        )
        row.scanner_id, row.org_id, row.code_digest = scanner_id, org_id, code_digest
        row.issued_at, row.expires_at = issued_at, expires_at

    async def ended(
        self, *, token_id: str, scanner_id: str, org_id: str, status: str, at: datetime
    ) -> None:
        assert status in ("revoked", "expired")
        row = self.store.tokens.get(token_id)
        if row is None:
            row = self.store.tokens[token_id] = TokenRow(token_id, scanner_id, org_id, "active")
        if row.status == "active":
            row.status = "revoked" if status == "revoked" else "expired"
            row.ended_at = at


class MemoryScanners:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def registered(self, scanner_id: str, org_id: str, serial_number: str) -> None:
        row = self.store.scanners.setdefault(scanner_id, ScannerRow())
        row.org_id, row.serial_number = org_id, serial_number

    async def removed(self, scanner_id: str) -> None:
        self.store.scanners.setdefault(scanner_id, ScannerRow()).removed = True


class MemoryCredentials:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def lock_scanner(self, scanner_id: str) -> datetime:
        self.store.credential_states.add(scanner_id)
        return self.store.clock

    def _live(self, scanner_id: str) -> list[Credential]:
        return [
            c
            for c in self.store.credentials.values()
            if c.scanner_id == scanner_id and c.status in ("active", "rotating")
        ]

    async def revoke_live(self, scanner_id: str) -> list[str]:
        ending = self._live(scanner_id)
        for c in ending:
            self.store.credentials[c.credential_id] = dataclasses.replace(c, status="revoked")
        return sorted(c.credential_id for c in ending)

    async def rotations_since(self, scanner_id: str, since: datetime) -> list[datetime]:
        return [
            c.issued_at
            for c in self.store.credentials.values()
            if c.scanner_id == scanner_id
            and c.previous_credential_id is not None
            and c.issued_at > since
        ]

    async def replace_live(self, scanner_id: str, at: datetime) -> int:
        live = self._live(scanner_id)
        for c in live:
            self.store.credentials[c.credential_id] = dataclasses.replace(c, status="replaced")
        return len(live)

    async def add(self, credential: Credential) -> None:
        taken = {c.credential_digest for c in self.store.credentials.values()}
        if credential.credential_id in self.store.credentials or (
            credential.credential_digest in taken
        ):
            raise ValueError("duplicate credential")  # PostgreSQL: a unique violation
        self.store.credentials[credential.credential_id] = credential

    async def by_digest(self, credential_digest: str) -> Credential | None:
        return next(
            (
                c
                for c in self.store.credentials.values()
                if c.credential_digest == credential_digest
            ),
            None,
        )

    async def by_id(self, credential_id: str) -> Credential | None:
        return self.store.credentials.get(credential_id)

    async def start_grace(self, credential_id: str, valid_until: datetime) -> None:
        c = self.store.credentials.get(credential_id)
        if c is not None and c.status == "active":
            self.store.credentials[credential_id] = dataclasses.replace(
                c, status="rotating", valid_until=valid_until
            )

    async def now(self) -> datetime:
        return self.store.clock


class MemoryUnitOfWork(BaseMemoryUnitOfWork):
    store: Store

    def __init__(self, store: Store, *, source: str) -> None:
        super().__init__(store, source=source)
        self.throttles = MemoryThrottles(store)
        self.tokens = MemoryTokens(store)
        self.scanners = MemoryScanners(store)
        self.credentials = MemoryCredentials(store)
