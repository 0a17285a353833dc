"""The unit of work: one transaction around a use case, with the outbox and the inbox in it.

A use case (a service's `handlers.py`) is written against the `UnitOfWork` protocol of its
service, which adds that service's repositories to the two ports every service has:

- `uow.emit(data, subject=…, key=…)`: an event to publish if, and only if, this unit of work
  commits (the transactional outbox; `outbox.OutboxRelay` publishes it);
- `await uow.inbox.claim(consumer, event_ids)`: which of these events this consumer sees for the
  first time, recorded in the same transaction as their effect (idempotent consumers).

`async with uow: …; await uow.commit()`: leaving the block without `commit()` rolls back.

Two implementations of every port: `PostgresUnitOfWork` (one pooled connection, one
transaction, the outbox written in one statement at commit) and `MemoryUnitOfWork` (a
`MemoryStore`, copied on entry and restored on rollback), the fake every unit test uses. A
service subclasses both with its repositories (`adapters/postgres.py`, `adapters/memory.py`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self

from .events import CloudEvent, EventData, new_event
from .postgres import Connection, Database

# ------------------------------------------------------------------------------ the ports


@dataclass(frozen=True, slots=True)
class Outgoing:
    """An event waiting in the outbox: its topic and its Kafka key (the scanner id)."""

    event: CloudEvent
    topic: str
    key: str | None


class Inbox(Protocol):
    async def claim(self, consumer: str, event_ids: Iterable[str]) -> set[str]:
        """The ids among `event_ids` that `consumer` has not processed before, now recorded as
        processed (in this unit of work)."""
        ...


class UnitOfWork(Protocol):
    inbox: Inbox

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def commit(self) -> None: ...

    def emit(
        self, data: EventData, *, subject: str | None = None, key: str | None = None
    ) -> CloudEvent: ...


class _Emitting:
    """`emit`, shared by both implementations: events wait in `self.pending` until commit."""

    source: str
    pending: list[Outgoing]
    inbox: Inbox  # the port's type, so that subclasses satisfy `UnitOfWork` (mypy)

    def emit(
        self, data: EventData, *, subject: str | None = None, key: str | None = None
    ) -> CloudEvent:
        """Queue `data` for publication on its topic at commit. `subject` defaults to the
        data's scanner id (CloudEvents subject), `key` to the subject."""
        if subject is None:
            subject = getattr(data, "scanner_id", None)
        event = new_event(data, source=self.source, subject=subject)
        self.pending.append(Outgoing(event, data.topic, key if key is not None else subject))
        return event


# ------------------------------------------------------------------------------ PostgreSQL

# The outbox rows of one commit in one statement, in emit order (ids follow it).
_OUTBOX_INSERT = """
    INSERT INTO outbox (event_id, event_type, topic, key, payload)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[])
"""
_CLAIM = """
    INSERT INTO processed_events (consumer, event_id)
    SELECT $1, id FROM unnest($2::text[]) AS id
    ON CONFLICT DO NOTHING
    RETURNING event_id
"""


class PostgresInbox:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def claim(self, consumer: str, event_ids: Iterable[str]) -> set[str]:
        ids = list(dict.fromkeys(event_ids))
        if not ids:
            return set()
        rows = await self.conn.fetch(_CLAIM, consumer, ids)
        return {row["event_id"] for row in rows}


async def write_outbox(conn: Connection, outgoing: list[Outgoing]) -> None:
    """The outbox rows of `outgoing`, in order, in the connection's transaction."""
    if not outgoing:
        return
    await conn.execute(
        _OUTBOX_INSERT,
        [o.event.id for o in outgoing],
        [o.event.type for o in outgoing],
        [o.topic for o in outgoing],
        [o.key for o in outgoing],
        [o.event.to_bytes() for o in outgoing],
    )


class PostgresUnitOfWork(_Emitting):
    """One pooled connection and one transaction. Subclasses add their repositories in
    `bind(conn)`."""

    def __init__(self, database: Database, *, source: str) -> None:
        self.database = database
        self.source = source
        self.pending = []
        self._acquired: Any = None
        self._transaction: Any = None
        self._conn: Connection | None = None
        self._done = False

    @property
    def conn(self) -> Connection:
        if self._conn is None:
            raise RuntimeError("the unit of work is not open (use `async with uow:`)")
        return self._conn

    def bind(self, conn: Connection) -> None:
        """Create the service's repositories on `conn` (subclasses)."""

    async def __aenter__(self) -> Self:
        self._acquired = self.database.pool.acquire()
        conn: Connection = await self._acquired.__aenter__()
        try:
            self._transaction = conn.transaction()
            await self._transaction.start()
        except BaseException as exc:
            await self._acquired.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self._conn = conn
        self.pending = []
        self._done = False
        self.inbox = PostgresInbox(conn)
        self.bind(conn)
        return self

    async def commit(self) -> None:
        await write_outbox(self.conn, self.pending)
        await self._transaction.commit()
        self._done = True

    async def rollback(self) -> None:
        if not self._done:
            self._done = True
            await self._transaction.rollback()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if not self._done:
                try:
                    await self.rollback()
                except Exception:
                    if exc is None:
                        raise  # otherwise the first error is the one worth raising
        finally:
            self._conn = None
            acquired, self._acquired = self._acquired, None
            await acquired.__aexit__(exc_type, exc, tb)


# ------------------------------------------------------------------------------ in memory


@dataclass
class MemoryStore:
    """What a fake database holds: a service's tables (attributes a subclass adds), the events
    committed units of work published, and the processed-event table."""

    published: list[Outgoing] = field(default_factory=list)
    processed: set[tuple[str, str]] = field(default_factory=set)
    commits: int = 0

    def events(self, type_: type[EventData] | None = None) -> list[CloudEvent]:
        """The events committed so far, in order, optionally of one type."""
        return [
            o.event for o in self.published if type_ is None or o.event.type == type_.event_type
        ]

    def data(self, type_: type[EventData]) -> list[Any]:
        """The data of the committed events of one type, parsed."""
        return [type_.model_validate(e.data) for e in self.events(type_)]


class MemoryInbox:
    def __init__(self, store: MemoryStore) -> None:
        self.store = store

    async def claim(self, consumer: str, event_ids: Iterable[str]) -> set[str]:
        fresh = set()
        for event_id in event_ids:
            if (consumer, event_id) not in self.store.processed:
                self.store.processed.add((consumer, event_id))
                fresh.add(event_id)
        return fresh


class MemoryUnitOfWork(_Emitting):
    """A unit of work over a `MemoryStore`: a copy of the store is taken on entry and put back
    unless the unit of work commits, so a fake rolls back as PostgreSQL does."""

    def __init__(self, store: MemoryStore, *, source: str) -> None:
        self.store = store
        self.source = source
        self.pending = []
        self.inbox = MemoryInbox(store)
        self._saved: dict[str, Any] | None = None
        self._done = False

    async def __aenter__(self) -> Self:
        saved = {k: v for k, v in vars(self.store).items() if k != "published"}
        self._saved = copy.deepcopy(saved)
        self.pending = []
        self._done = False
        return self

    async def commit(self) -> None:
        self.store.published.extend(self.pending)
        self.store.commits += 1
        self.pending = []
        self._done = True

    async def rollback(self) -> None:
        if not self._done and self._saved is not None:
            for name, value in self._saved.items():
                setattr(self.store, name, value)
        self._done = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.rollback()
