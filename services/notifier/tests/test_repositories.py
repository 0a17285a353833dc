"""One behavioural suite for the notifier's repositories, run against both implementations: the
fakes every unit test uses (adapters/memory.py) and PostgreSQL (adapters/postgres.py). The
fakes are only worth having if they behave as the real ones do. Real time on both sides (the
database's clock is its own)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from notifier.adapters import postgres
from notifier.adapters.memory import MemoryNotifierUnitOfWork, NotifierStore
from notifier.adapters.ports import NotifierUnitOfWork
from notifier.adapters.postgres import PostgresNotifierUnitOfWork
from notifier.domain import Claimed, EmailRequest, Status, TokenState
from scanner_auth_shared.events import utcnow
from scanner_auth_shared.migrations import upgrade
from scanner_auth_shared.postgres import Database

MIGRATIONS = Path(postgres.__file__).parents[1] / "migrations"

UnitOfWorkFactory = Callable[[], NotifierUnitOfWork]


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.unit),
        pytest.param("postgres", marks=pytest.mark.integration),
    ]
)
async def new(request: pytest.FixtureRequest) -> AsyncIterator[UnitOfWorkFactory]:
    if request.param == "memory":
        store = NotifierStore()
        yield lambda: MemoryNotifierUnitOfWork(store)
        return
    url = request.getfixturevalue("database_url")
    await upgrade(url, MIGRATIONS)
    database = Database(url)
    await database.connect()
    try:
        yield lambda: PostgresNotifierUnitOfWork(database)
    finally:
        await database.dispose()


def _request(n: int = 1, *, token_id: str = "tok-1", scanner_id: str = "scanner-1") -> EmailRequest:
    return EmailRequest(
        notification_id=f"n-{n}",
        token_id=token_id,
        scanner_id=scanner_id,
        org_id="org-1",
        recipient_user_id="user-ada",
        recipient_email="ada@example.test",
        requested_by="user-admin",
        scanner_name="Bay 3",
        serial_number="LVS-1",
        sealed_code=f"sealed-{n}",
        expires_at=utcnow() + timedelta(days=1),
    )


async def _add(new: UnitOfWorkFactory, *requests: EmailRequest) -> list[bool]:
    async with new() as uow:
        created = [await uow.notifications.add(r) for r in requests]
        await uow.commit()
    return created


async def _claim(new: UnitOfWorkFactory, limit: int = 10, lease: float = 60) -> list[Claimed]:
    async with new() as uow:
        claimed = await uow.notifications.claim_due(limit, lease)
        await uow.commit()
    return list(claimed)


async def test_a_request_is_added_once_pending_and_due_now(new: UnitOfWorkFactory) -> None:
    assert await _add(new, _request(1)) == [True]
    assert await _add(new, _request(1)) == [False]
    async with new() as uow:
        row = await uow.notifications.get("n-1")
        assert await uow.notifications.get("n-2") is None
        due_in = await uow.notifications.seconds_to_next_due()
    assert row is not None
    assert (row.status, row.attempts, row.sealed_code, row.claim_id) == (
        Status.PENDING,
        0,
        "sealed-1",
        None,
    )
    assert due_in is not None and -5 < due_in <= 0


async def test_claims_take_due_rows_oldest_first_under_a_lease_never_twice(
    new: UnitOfWorkFactory,
) -> None:
    await _add(new, _request(1))
    await asyncio.sleep(0.01)
    await _add(new, _request(2, token_id="tok-2"))
    async with new() as uow:
        await uow.tokens.ended("tok-2", "scanner-1", TokenState.REVOKED)
        await uow.commit()
    [first] = await _claim(new, limit=1)
    [second] = await _claim(new, limit=5)
    assert await _claim(new) == []
    assert [c.notification_id for c in (first, second)] == ["n-1", "n-2"]
    assert first.token_state is None and second.token_state is TokenState.REVOKED
    assert first.claim_id != second.claim_id
    assert first.sealed_code == "sealed-1" and first.attempts == 0
    async with new() as uow:
        row = await uow.notifications.get("n-1")
        assert await uow.notifications.seconds_to_next_due() is None
    assert row is not None and row.status is Status.SENDING
    assert row.lease_until is not None and row.lease_until > utcnow() + timedelta(seconds=30)


async def test_finishing_needs_the_claim_and_clears_the_seal(new: UnitOfWorkFactory) -> None:
    await _add(new, _request(1))
    [claimed] = await _claim(new)
    sent_at = utcnow()
    async with new() as uow:
        stale = replace(claimed, claim_id="someone-else")
        assert not await uow.notifications.finish(stale, Status.FAILED, attempts=9)
        assert await uow.notifications.finish(
            claimed,
            Status.SENT,
            attempts=1,
            sent_at=sent_at,
            smtp_message_id="<n-1@x>",
        )
        assert not await uow.notifications.finish(claimed, Status.FAILED, attempts=2)
        await uow.commit()
    async with new() as uow:
        row = await uow.notifications.get("n-1")
    assert row is not None
    assert (row.status, row.attempts, row.sealed_code, row.claim_id, row.lease_until) == (
        Status.SENT,
        1,
        None,
        None,
        None,
    )
    assert row.smtp_message_id == "<n-1@x>" and row.sent_at is not None


async def test_a_retry_is_due_after_its_delay_and_counts_the_attempt(
    new: UnitOfWorkFactory,
) -> None:
    await _add(new, _request(1), _request(2))
    one, two = await _claim(new)
    async with new() as uow:
        assert await uow.notifications.retry_later(one, attempts=1, delay_seconds=3600, error="451")
        assert await uow.notifications.retry_later(two, attempts=3, delay_seconds=0, error="421")
        await uow.commit()
    [again] = await _claim(new)
    assert again.notification_id == two.notification_id
    assert again.attempts == 3 and again.last_error == "421"
    async with new() as uow:
        row = await uow.notifications.get(one.notification_id)
        due_in = await uow.notifications.seconds_to_next_due()
    assert row is not None and row.status is Status.PENDING and row.attempts == 1
    assert row.last_error == "451" and row.claim_id is None and row.sealed_code == "sealed-1"
    assert due_in is not None and 3500 < due_in <= 3600


async def test_a_release_gives_a_claim_back_without_an_attempt(new: UnitOfWorkFactory) -> None:
    await _add(new, _request(1))
    [claimed] = await _claim(new)
    async with new() as uow:
        assert await uow.notifications.release(claimed, delay_seconds=0)
        assert not await uow.notifications.release(claimed, delay_seconds=0)
        await uow.commit()
    [again] = await _claim(new)
    assert again.attempts == 0 and again.claim_id != claimed.claim_id


async def test_leases_past_their_end_are_reaped_except_ones_own(new: UnitOfWorkFactory) -> None:
    await _add(new, _request(1), _request(2), _request(3))
    claims = await _claim(new, lease=0)
    mine = claims[0].claim_id
    await _claim(new)  # nothing more: all three are being sent
    await asyncio.sleep(0.01)  # past the leases' end, by either clock
    async with new() as uow:
        reaped = await uow.notifications.reap_expired_leases(mine=[mine], error="unknown", limit=1)
        reaped += await uow.notifications.reap_expired_leases(mine=[mine], error="unknown")
        await uow.commit()
    assert sorted(r.notification_id for r in reaped) == ["n-2", "n-3"]
    assert {(r.scanner_id, r.attempts) for r in reaped} == {("scanner-1", 1)}
    async with new() as uow:
        rows = [await uow.notifications.get(f"n-{n}") for n in (1, 2, 3)]
    assert [r.status for r in rows if r] == [Status.SENDING, Status.FAILED, Status.FAILED]
    assert rows[1] is not None and rows[1].sealed_code is None and rows[1].last_error == "unknown"
    assert await _claim(new) == []  # never sent again


async def test_a_tokens_pending_emails_are_cancelled_not_those_being_sent(
    new: UnitOfWorkFactory,
) -> None:
    await _add(new, _request(1))
    await _claim(new)
    await _add(new, _request(2), _request(3, token_id="tok-other"))
    async with new() as uow:
        cancelled = await uow.notifications.cancel_pending_of_token("tok-1", "over")
        await uow.commit()
    assert [(c.notification_id, c.scanner_id, c.attempts) for c in cancelled] == [
        ("n-2", "scanner-1", 0)
    ]
    async with new() as uow:
        statuses = [(await uow.notifications.get(f"n-{n}")) for n in (1, 2, 3)]
    assert [s.status for s in statuses if s] == [Status.SENDING, Status.CANCELLED, Status.PENDING]
    assert statuses[1] is not None and statuses[1].sealed_code is None


async def test_token_states_the_first_end_wins(new: UnitOfWorkFactory) -> None:
    async with new() as uow:
        await uow.tokens.issued("tok-1", "scanner-1")
        await uow.tokens.issued("tok-1", "scanner-1")
        await uow.tokens.ended("tok-2", "scanner-1", TokenState.EXPIRED)
        await uow.tokens.issued("tok-2", "scanner-1")
        await uow.commit()
    async with new() as uow:
        assert await uow.tokens.state_of("tok-1") is TokenState.ACTIVE
        assert await uow.tokens.state_of("tok-2") is TokenState.EXPIRED
        assert await uow.tokens.state_of("tok-3") is None
        await uow.tokens.ended("tok-1", "scanner-1", TokenState.REDEEMED)
        await uow.tokens.ended("tok-1", "scanner-1", TokenState.REVOKED)
        await uow.commit()
    async with new() as uow:
        assert await uow.tokens.state_of("tok-1") is TokenState.REDEEMED


async def test_a_unit_left_without_commit_changes_nothing(new: UnitOfWorkFactory) -> None:
    async with new() as uow:
        await uow.notifications.add(_request(1))
        await uow.tokens.issued("tok-1", "scanner-1")
    async with new() as uow:
        assert await uow.notifications.get("n-1") is None
        assert await uow.tokens.state_of("tok-1") is None
