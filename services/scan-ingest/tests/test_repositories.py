"""One behavioural suite for the repository (`ports.GateCredentials`), run against both
implementations: the fake the unit tests use (in memory) and PostgreSQL. The fake is only worth
having if it behaves as the real one does."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

import scan_ingest
from scan_ingest.adapters.gate import GateRow
from scan_ingest.adapters.gate_sync import NOTIFY_CHANNEL
from scan_ingest.adapters.memory import GateStore, MemoryGateCredentials, MemoryGateUnitOfWork
from scan_ingest.adapters.ports import GateCredentials, GateUnitOfWork
from scan_ingest.adapters.postgres import PostgresGateCredentials, PostgresGateUnitOfWork
from scan_ingest.domain import CredentialFact, CredentialState, Standing
from scanner_auth_shared.migrations import upgrade
from scanner_auth_shared.postgres import Database, asyncpg_dsn

from .conftest import eventually

MIGRATIONS = Path(scan_ingest.__file__).parent / "migrations"
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class Ports:
    unit: Callable[[], GateUnitOfWork]
    reader: GateCredentials  # outside any unit of work, as the gate sync reads
    heard: Callable[[str], Awaitable[list[str]]]  # the notifications, once `until` arrived


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.unit),
        pytest.param("postgres", marks=pytest.mark.integration),
    ]
)
async def ports(request: pytest.FixtureRequest) -> AsyncIterator[Ports]:
    if request.param == "memory":
        store = GateStore(clock=datetime.now(UTC))  # as PostgreSQL's now()

        async def notified(until: str) -> list[str]:
            assert until in store.notifications
            return list(store.notifications)

        yield Ports(lambda: MemoryGateUnitOfWork(store), MemoryGateCredentials(store), notified)
        return
    async with _postgres(request.getfixturevalue("database_url")) as ports:
        yield ports


@contextlib.asynccontextmanager
async def _postgres(url: str) -> AsyncIterator[Ports]:
    await upgrade(url, MIGRATIONS)
    database = Database(url)
    await database.connect()
    reader = await asyncpg.connect(asyncpg_dsn(url))
    heard: list[str] = []
    await reader.add_listener(NOTIFY_CHANNEL, lambda *args: heard.append(args[3]))

    async def listened(until: str) -> list[str]:
        assert await eventually(lambda: _arrived(heard, until), timeout=10)
        return list(heard)

    try:
        yield Ports(
            lambda: PostgresGateUnitOfWork(database), PostgresGateCredentials(reader), listened
        )
    finally:
        await reader.close()
        await database.dispose()


async def _arrived(heard: list[str], payload: str) -> bool:
    return payload in heard


def _digest(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def _fact(name: str, seconds: float = 0, previous: str | None = None) -> CredentialFact:
    return CredentialFact(
        digest=_digest(name),
        credential_id=f"cred-{name}",
        issued_at=T0 + timedelta(seconds=seconds),
        previous_credential_id=previous,
        previous_valid_until=T0 + timedelta(seconds=seconds + 60) if previous else None,
    )


async def _add(ports: Ports, scanner_id: str, *facts: CredentialFact) -> list[bool]:
    async with ports.unit() as uow:
        await uow.credentials.lock_scanner(scanner_id)
        added = [await uow.credentials.add(f, scanner_id=scanner_id, org_id="org-1") for f in facts]
        await uow.commit()
    return added


async def _load_all(ports: Ports, chunk_rows: int) -> list[list[tuple[Any, ...]]]:
    chunks: list[list[tuple[Any, ...]]] = []

    def into(rows: Sequence[Sequence[Any]]) -> None:
        chunks.append([tuple(row) for row in rows])

    await ports.reader.load_all(into, chunk_rows=chunk_rows)
    return chunks


async def test_a_credential_is_recorded_once_and_read_back_as_facts(ports: Ports) -> None:
    first, rotated = _fact("a"), _fact("b", 10, previous="cred-a")
    assert await _add(ports, "sc-1", first, rotated) == [True, True]
    assert await _add(ports, "sc-1", _fact("a", 99)) == [False]  # the same digest again
    async with ports.unit() as uow:
        facts = await uow.credentials.facts("sc-1")
        other = await uow.credentials.facts("sc-2")
    assert sorted(facts.credentials, key=lambda f: f.order) == [first, rotated]
    assert facts.standings == {first.digest: Standing(CredentialState.ACTIVE)} | {
        rotated.digest: Standing(CredentialState.ACTIVE)
    }
    assert facts.revoked == frozenset()
    assert (other.credentials, other.standings, other.revoked) == ([], {}, frozenset())


async def test_revocations_are_kept_by_id_even_before_the_credential(ports: Ports) -> None:
    async with ports.unit() as uow:
        await uow.credentials.record_revocations("sc-1", ["cred-a", "cred-x"])
        await uow.credentials.record_revocations("sc-1", ["cred-a"])  # again: nothing new
        await uow.credentials.record_revocations("sc-2", ["cred-y"])
        await uow.commit()
    async with ports.unit() as uow:
        facts = await uow.credentials.facts("sc-1")
    assert facts.revoked == frozenset({"cred-a", "cred-x"})
    assert facts.credentials == []
    await _add(ports, "sc-1", _fact("a"))
    async with ports.unit() as uow:
        await uow.credentials.record_revocations("sc-1", [])
        facts = await uow.credentials.facts("sc-1")
        other = await uow.credentials.facts("sc-2")
    assert facts.revoked == frozenset({"cred-a", "cred-x"})
    assert facts.credentials == [_fact("a")]
    assert other.revoked == frozenset({"cred-y"}) and other.credentials == []


async def test_the_purge_forgets_ended_credentials_and_old_revocations(ports: Ports) -> None:
    """Rotated-out credentials by the end of their grace, replaced and revoked ones by when they
    ended; active ones, and rotated ones in their grace, never."""
    now = datetime.now(UTC)
    names = ("active", "in-grace", "grace-over", "replaced", "revoked")
    await _add(ports, "sc-1", *(_fact(n) for n in names))
    standings = {
        "in-grace": Standing(CredentialState.ROTATING, now + timedelta(hours=1)),
        "grace-over": Standing(CredentialState.ROTATING, now - timedelta(seconds=30)),
        "replaced": Standing(CredentialState.REPLACED),
        "revoked": Standing(CredentialState.REVOKED),
    }
    async with ports.unit() as uow:
        for name, standing in standings.items():
            await uow.credentials.set_standing(_digest(name), standing)
        await uow.credentials.record_revocations("sc-1", ["cred-revoked"])
        await uow.commit()

    async def purge(rotated_after: float, ended_after: float) -> int:
        async with ports.unit() as uow:
            gone = await uow.credentials.purge_ended(
                rotated_after=rotated_after, ended_after=ended_after
            )
            await uow.commit()
        return gone

    async def left() -> set[str]:
        rows = await ports.reader.of_scanners(["sc-1"])
        return {row.credential_id.removeprefix("cred-") for row in rows}

    assert await purge(rotated_after=3600, ended_after=3600) == 0
    assert await left() == set(names)
    assert await purge(rotated_after=5, ended_after=3600) == 1
    assert await left() == {"active", "in-grace", "replaced", "revoked"}
    async with ports.unit() as uow:
        assert (await uow.credentials.facts("sc-1")).revoked == {"cred-revoked"}
    assert await purge(rotated_after=0, ended_after=0) == 2
    assert await left() == {"active", "in-grace"}
    async with ports.unit() as uow:
        assert (await uow.credentials.facts("sc-1")).revoked == frozenset()


async def test_a_standing_is_stored_and_read_by_the_gate(ports: Ports) -> None:
    await _add(ports, "sc-1", _fact("a"), _fact("b", 10, previous="cred-a"))
    until = T0 + timedelta(seconds=70)
    async with ports.unit() as uow:
        await uow.credentials.set_standing(_digest("a"), Standing(CredentialState.ROTATING, until))
        await uow.commit()
    async with ports.unit() as uow:
        facts = await uow.credentials.facts("sc-1")
    assert facts.standings[_digest("a")] == Standing(CredentialState.ROTATING, until)
    rows = sorted(row for chunk in await _load_all(ports, 100) for row in chunk)
    assert rows == sorted(
        [
            (_digest("a"), "cred-a", "sc-1", "org-1", "rotating", until),
            (_digest("b"), "cred-b", "sc-1", "org-1", "active", None),
        ]
    )


async def test_the_gate_reads_everything_in_chunks_or_some_scanners(ports: Ports) -> None:
    for n in range(5):
        await _add(ports, f"sc-{n}", _fact(f"c{n}", n))
    chunks = await _load_all(ports, 2)
    assert [len(chunk) for chunk in chunks] == [2, 2, 1]
    assert sorted(row[2] for chunk in chunks for row in chunk) == [f"sc-{n}" for n in range(5)]
    some = await ports.reader.of_scanners(["sc-1", "sc-3", "sc-unknown"])
    assert sorted(some, key=lambda row: row.scanner_id) == [
        GateRow(_digest("c1"), "cred-c1", "sc-1", "org-1", "active", None),
        GateRow(_digest("c3"), "cred-c3", "sc-3", "org-1", "active", None),
    ]
    assert all(isinstance(row, GateRow) for row in some)
    assert await ports.reader.of_scanners([]) == []


async def test_the_replicas_are_told_at_commit_and_never_on_rollback(ports: Ports) -> None:
    async with ports.unit() as uow:  # left without commit: rolled back
        await uow.credentials.add(_fact("a"), scanner_id="sc-gone", org_id="org-1")
        await uow.credentials.notify_replicas("sc-gone")
    async with ports.unit() as uow:
        await uow.credentials.notify_replicas("sc-1")
        await uow.commit()
    # Notifications arrive in commit order: had the rolled-back one been sent, it would be first.
    assert await ports.heard("sc-1") == ["sc-1"]
    async with ports.unit() as uow:
        assert (await uow.credentials.facts("sc-gone")).credentials == []


# ------------------------------------------------------------------------------ PostgreSQL only


@pytest.mark.integration
async def test_writers_of_one_scanner_wait_for_each_other(database_url: str) -> None:
    """Serialised per scanner (two replicas of the writer during a rebalance): a second unit of
    work's lock is granted only once the first one ended; another scanner's is not delayed.
    (The memory fake has nothing to serialise: one event loop, no I/O inside a unit of work.)"""
    async with _postgres(database_url) as ports:
        order: list[str] = []
        first_locked = asyncio.Event()

        async def first() -> None:
            async with ports.unit() as uow:
                await uow.credentials.lock_scanner("sc-1")
                first_locked.set()
                async with ports.unit() as other:
                    await other.credentials.lock_scanner("sc-2")
                    order.append("other scanner")
                # Long enough for the second lock to be granted, had it not waited.
                await asyncio.sleep(0.3)
                order.append("first done")
                await uow.commit()

        async def second() -> None:
            await first_locked.wait()
            async with ports.unit() as uow:
                await uow.credentials.lock_scanner("sc-1")
                order.append("second locked")

        await asyncio.gather(first(), second())
        assert order == ["other scanner", "first done", "second locked"]
