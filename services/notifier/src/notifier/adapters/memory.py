"""The fakes of the notifier's ports, for unit tests: the same behaviour as PostgreSQL
(tests/test_repositories.py runs one suite against both), a relay, a read barrier and the
sender's wake-ups, all in memory.

The store's tables are accessed through `self.store` only: the unit of work copies the store on
entry and puts the copy back on rollback.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import getaddresses
from typing import Any

from scanner_auth_shared.events import utcnow
from scanner_auth_shared.uow import MemoryStore, MemoryUnitOfWork

from ..domain import (
    SOURCE,
    Claimed,
    Delivered,
    EmailRequest,
    Finished,
    Notification,
    SendResult,
    Status,
    TokenState,
)

Clock = Callable[[], datetime]


@dataclass
class NotificationRecord:
    """A row of `notifications`."""

    request: EmailRequest
    status: Status
    attempts: int
    sealed_code: str | None
    next_attempt_at: datetime
    requested_at: datetime
    claim_id: str | None = None
    lease_until: datetime | None = None
    last_error: str | None = None
    smtp_message_id: str | None = None
    sent_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass
class TokenRecord:
    scanner_id: str
    state: TokenState
    updated_at: datetime


@dataclass
class NotifierStore(MemoryStore):
    notifications: dict[str, NotificationRecord] = field(default_factory=dict)
    token_states: dict[str, TokenRecord] = field(default_factory=dict)


class MemoryNotifications:
    def __init__(self, store: NotifierStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def add(self, request: EmailRequest) -> bool:
        if request.notification_id in self.store.notifications:
            return False
        now = self.clock()
        self.store.notifications[request.notification_id] = NotificationRecord(
            request=request,
            status=Status.PENDING,
            attempts=0,
            sealed_code=request.sealed_code,
            next_attempt_at=now,
            requested_at=now,
        )
        return True

    async def get(self, notification_id: str) -> Notification | None:
        row = self.store.notifications.get(notification_id)
        if row is None:
            return None
        r = row.request
        return Notification(
            notification_id=r.notification_id,
            token_id=r.token_id,
            scanner_id=r.scanner_id,
            recipient_email=r.recipient_email,
            status=row.status,
            attempts=row.attempts,
            sealed_code=row.sealed_code,
            expires_at=r.expires_at,
            next_attempt_at=row.next_attempt_at,
            claim_id=row.claim_id,
            lease_until=row.lease_until,
            last_error=row.last_error,
            smtp_message_id=row.smtp_message_id,
            sent_at=row.sent_at,
        )

    async def claim_due(self, limit: int, lease_seconds: float) -> list[Claimed]:
        now = self.clock()
        due = sorted(
            (
                row
                for row in self.store.notifications.values()
                if row.status is Status.PENDING and row.next_attempt_at <= now
            ),
            key=lambda row: row.next_attempt_at,
        )[: max(limit, 0)]
        claimed = []
        for row in due:
            row.status = Status.SENDING
            row.claim_id = str(uuid.uuid4())
            row.lease_until = now + timedelta(seconds=lease_seconds)
            claimed.append(self._claimed(row))
        return claimed

    def _claimed(self, row: NotificationRecord) -> Claimed:
        r = row.request
        token = self.store.token_states.get(r.token_id)
        assert row.claim_id is not None
        return Claimed(
            notification_id=r.notification_id,
            claim_id=row.claim_id,
            token_id=r.token_id,
            scanner_id=r.scanner_id,
            recipient_email=r.recipient_email,
            scanner_name=r.scanner_name,
            serial_number=r.serial_number,
            sealed_code=row.sealed_code,
            expires_at=r.expires_at,
            attempts=row.attempts,
            token_state=None if token is None else token.state,
            last_error=row.last_error,
        )

    async def seconds_to_next_due(self) -> float | None:
        due = [
            row.next_attempt_at
            for row in self.store.notifications.values()
            if row.status is Status.PENDING
        ]
        return None if not due else (min(due) - self.clock()).total_seconds()

    def _held(self, claimed: Claimed) -> NotificationRecord | None:
        row = self.store.notifications.get(claimed.notification_id)
        if row is None or row.status is not Status.SENDING or row.claim_id != claimed.claim_id:
            return None
        return row

    async def finish(
        self,
        claimed: Claimed,
        status: Status,
        *,
        attempts: int,
        error: str | None = None,
        sent_at: datetime | None = None,
        smtp_message_id: str | None = None,
    ) -> bool:
        row = self._held(claimed)
        if row is None:
            return False
        row.status, row.attempts, row.sealed_code = status, attempts, None
        row.lease_until = row.claim_id = None
        row.finished_at = self.clock()
        row.last_error = error if error is not None else row.last_error
        row.sent_at, row.smtp_message_id = sent_at, smtp_message_id
        return True

    async def retry_later(
        self, claimed: Claimed, *, attempts: int, delay_seconds: float, error: str
    ) -> bool:
        row = self._held(claimed)
        if row is None:
            return False
        row.status, row.attempts, row.last_error = Status.PENDING, attempts, error
        row.next_attempt_at = self.clock() + timedelta(seconds=delay_seconds)
        row.lease_until = row.claim_id = None
        return True

    async def release(self, claimed: Claimed, *, delay_seconds: float) -> bool:
        row = self._held(claimed)
        if row is None:
            return False
        row.status = Status.PENDING
        row.next_attempt_at = self.clock() + timedelta(seconds=delay_seconds)
        row.lease_until = row.claim_id = None
        return True

    async def reap_expired_leases(
        self, *, mine: Sequence[str], error: str, limit: int = 100
    ) -> list[Finished]:
        now = self.clock()
        dead = sorted(
            (
                row
                for row in self.store.notifications.values()
                if row.status is Status.SENDING
                and row.lease_until is not None
                and row.lease_until < now
                and row.claim_id not in mine
            ),
            key=lambda row: row.lease_until or now,
        )[:limit]
        for row in dead:
            row.status, row.attempts, row.sealed_code = Status.FAILED, row.attempts + 1, None
            row.lease_until = row.claim_id = None
            row.finished_at, row.last_error = now, error
        return [_finished(row) for row in dead]

    async def cancel_pending_of_token(self, token_id: str, error: str) -> list[Finished]:
        now = self.clock()
        rows = [
            row
            for row in self.store.notifications.values()
            if row.request.token_id == token_id and row.status is Status.PENDING
        ]
        for row in rows:
            row.status, row.sealed_code, row.finished_at = Status.CANCELLED, None, now
            row.last_error, row.lease_until = error, None
        return [_finished(row) for row in rows]


class MemoryTokenStates:
    def __init__(self, store: NotifierStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def issued(self, token_id: str, scanner_id: str) -> None:
        if token_id not in self.store.token_states:
            self.store.token_states[token_id] = TokenRecord(
                scanner_id, TokenState.ACTIVE, self.clock()
            )

    async def ended(self, token_id: str, scanner_id: str, state: TokenState) -> None:
        known = self.store.token_states.get(token_id)
        if known is None or known.state is TokenState.ACTIVE:
            self.store.token_states[token_id] = TokenRecord(scanner_id, state, self.clock())

    async def state_of(self, token_id: str) -> TokenState | None:
        known = self.store.token_states.get(token_id)
        return None if known is None else known.state


class MemoryNotifierUnitOfWork(MemoryUnitOfWork):
    store: NotifierStore

    def __init__(self, store: NotifierStore, *, clock: Clock = utcnow) -> None:
        super().__init__(store, source=SOURCE)
        self.notifications = MemoryNotifications(store, clock)
        self.tokens = MemoryTokenStates(store, clock)


def _finished(row: NotificationRecord) -> Finished:
    return Finished(row.request.notification_id, row.request.scanner_id, row.attempts)


# ------------------------------------------------------------------------------ the relay


class MemoryMailer:
    """A relay that answers what it is told to (`script`, then 250), optionally holding a
    recipient's messages until released (`hold`), and keeps every message it was given."""

    def __init__(self, *script: SendResult) -> None:
        self.script = list(script)
        self.attempts: list[EmailMessage] = []
        self.delivered: list[EmailMessage] = []
        self.hold: dict[str, asyncio.Event] = {}
        self.at_once = 0
        self.most_at_once = 0

    async def send(self, message: EmailMessage) -> SendResult:
        self.attempts.append(message)
        (_, address), *_ = getaddresses([str(message["To"])])
        self.at_once += 1
        self.most_at_once = max(self.most_at_once, self.at_once)
        try:
            gate = self.hold.get(address)
            if gate is not None:
                await gate.wait()
        finally:
            self.at_once -= 1
        result = self.script.pop(0) if self.script else Delivered()
        if isinstance(result, Delivered):
            self.delivered.append(message)
        return result

    def to(self, address: str) -> list[EmailMessage]:
        """The messages delivered to `address`."""
        return [m for m in self.delivered if address in str(m["To"])]


# ------------------------------------------------------------------------------ the barrier


class MemoryReadBarrier:
    """Token events per scanner: how many are on the topic (`published`) and how many the
    token-state consumer has applied (`applied`). A wait is caught up once `applied` reaches
    what was published when it began; later events are not waited for."""

    def __init__(self) -> None:
        self.published: Counter[str] = Counter()
        self.applied: Counter[str] = Counter()
        self.waits: list[str] = []

    def publish(self, scanner_id: str, count: int = 1) -> None:
        self.published[scanner_id] += count

    def apply(self, scanner_id: str) -> None:
        """The consumer has caught up with everything published for `scanner_id`."""
        self.applied[scanner_id] = self.published[scanner_id]

    async def wait_caught_up(self, scanner_id: str, timeout: float) -> bool:
        target = self.published[scanner_id]
        self.waits.append(scanner_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.applied[scanner_id] < target:
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.sleep(min(left, 0.002))
        return True


# ------------------------------------------------------------------------------ wake-ups


class MemoryWakeups:
    """The sender's listener without a database: `wake()` ends an `idle`."""

    def __init__(self) -> None:
        self.connected = True
        self._wake: asyncio.Event | None = None

    async def run(self, session: Callable[[Any], Awaitable[None]]) -> None:
        await session(None)

    async def idle(self, seconds: float) -> bool:
        wake = self._event()
        try:
            await asyncio.wait_for(wake.wait(), seconds)
            return True
        except TimeoutError:
            return False
        finally:
            wake.clear()

    def wake(self) -> None:
        self._event().set()

    def _event(self) -> asyncio.Event:
        if self._wake is None:
            self._wake = asyncio.Event()
        return self._wake


__all__ = [
    "MemoryMailer",
    "MemoryNotifierUnitOfWork",
    "MemoryReadBarrier",
    "MemoryWakeups",
    "NotifierStore",
]
