"""The expiry sweep, in memory: exactly one TokenExpired per token whatever the number of
replicas sweeping; and the throttled record of who authenticated."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from datetime import datetime
from typing import Self

import pytest
from memory_world import TTL, World, principal
from token_issuer_support import A1, ADMIN_A, ADMIN_B, SCANNERS, USER_A

from scanner_auth_shared.events import ScannerRegistered, TokenExpired
from token_issuer import handlers
from token_issuer.adapters.memory import MemoryPeople, MemoryUnitOfWork
from token_issuer.domain import SeenPrincipal

pytestmark = pytest.mark.unit


def extra_scanners(n: int) -> list[ScannerRegistered]:
    return [
        SCANNERS[A1].model_copy(update={"scanner_id": f"sc-x{i}", "name": f"Extra {i}"})
        for i in range(n)
    ]


async def test_the_sweeper_expires_what_is_due_once(orgs: World) -> None:
    w = orgs
    await w.apply(*extra_scanners(3))
    early = [await w.generate(ADMIN_A, f"sc-x{i}") for i in range(3)]
    w.clock.advance(hours=1)
    late = await w.generate(ADMIN_A, A1)
    assert await w.sweep() == 0  # nothing due yet

    w.clock.advance(seconds=TTL - 1)  # the early ones are due, not the late one
    assert await w.sweep() == 3
    assert await w.sweep() == 0  # once
    assert sorted(e.token_id for e in w.store.data(TokenExpired)) == sorted(
        t.token_id for t in early
    )
    for t in early:
        assert w.stored_status(t.token_id) == "expired"
        record = w.store.tokens[t.token_id]
        assert record.token.code_ciphertext is None and record.expired_at == t.expires_at
        assert TokenExpired(
            token_id=t.token_id, scanner_id=t.scanner_id, org_id="org-a", expired_at=t.expires_at
        ) in w.store.data(TokenExpired)
    assert w.stored_status(late.token_id) == "active"


async def test_full_batches_are_swept_one_after_another(orgs: World) -> None:
    w = orgs
    w.ctx = dataclasses.replace(w.ctx, sweep_batch=2)
    await w.apply(*extra_scanners(5))
    for i in range(5):
        await w.generate(ADMIN_A, f"sc-x{i}")
    w.clock.advance(seconds=TTL)
    assert await w.sweep() == 5  # 2 + 2 + 1, in one round of the periodic task
    assert len(w.store.data(TokenExpired)) == 5


async def test_replicas_sweeping_at_once_expire_each_token_exactly_once(orgs: World) -> None:
    w = orgs
    await w.apply(*extra_scanners(12))
    tokens = [await w.generate(ADMIN_A, f"sc-x{i}") for i in range(12)]
    w.clock.advance(seconds=TTL)
    # Three replicas on one database: each reads the same twelve due tokens (units of work
    # take turns, and every repository call yields), then tries to expire each of them; only
    # the first try for a token finds it still active.
    counts = await asyncio.gather(*(w.sweep() for _ in range(3)))
    assert sum(counts) == 12
    assert Counter(e.token_id for e in w.store.data(TokenExpired)) == Counter(
        t.token_id for t in tokens
    )


async def test_a_token_superseded_while_the_sweeper_works_is_not_expired_too(orgs: World) -> None:
    w = orgs
    token = await w.generate(ADMIN_A, A1)
    w.clock.advance(seconds=TTL)
    # The generate expires it (it is past its time) between the sweeper's read and its update.
    await asyncio.gather(w.sweep(), w.generate(ADMIN_A, A1))
    assert [e.token_id for e in w.store.data(TokenExpired)] == [token.token_id]


# ------------------------------------------------------------------------------------ principals


async def test_who_authenticated_is_recorded_at_most_once_a_minute_unless_it_changed(
    orgs: World,
) -> None:
    w = orgs
    await w.authenticated(ADMIN_A)
    recorded_at = w.store.seen[ADMIN_A.sub][1]
    w.clock.advance(seconds=30)
    await w.authenticated(ADMIN_A)  # the same claims within the minute: not written
    assert w.store.seen[ADMIN_A.sub][1] == recorded_at
    commits = w.store.commits
    await w.authenticated(ADMIN_A)
    assert w.store.commits == commits  # not even a unit of work

    changed = dataclasses.replace(ADMIN_A, roles=())  # lost the admin role: written at once
    await w.authenticated(changed)
    assert w.store.seen[ADMIN_A.sub][0].roles == ()
    w.clock.advance(seconds=61)
    await w.authenticated(changed)  # a minute later: written again
    assert w.store.seen[ADMIN_A.sub][1] == w.clock.now
    await w.authenticated(ADMIN_B, USER_A)  # per user
    assert set(w.store.seen) == {ADMIN_A.sub, ADMIN_B.sub, USER_A.sub}


class PeopleOutage(MemoryPeople):
    async def record_seen(self, seen: SeenPrincipal, at: datetime) -> None:
        raise ConnectionResetError("the database went away")


class OutageUnitOfWork(MemoryUnitOfWork):
    """A unit of work whose people repository cannot write."""

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        self.people = PeopleOutage(self.store, self.locked)
        return self


async def test_a_record_that_failed_is_tried_again_on_the_next_request(orgs: World) -> None:
    w = orgs
    with pytest.raises(ConnectionResetError):
        await handlers.record_principal(OutageUnitOfWork(w.store), w.ctx, principal(ADMIN_A))
    assert ADMIN_A.sub not in w.store.seen
    await w.authenticated(ADMIN_A)  # not throttled: the failed attempt did not count
    assert ADMIN_A.sub in w.store.seen
