"""One behavioural suite per repository, run against both adapters: the fakes every use-case
test relies on (adapters/memory.py, unit) and PostgreSQL (adapters/postgres.py, integration).
The fakes are only worth having if they behave as the real ones do."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta

import pytest

from redeemer.adapters.memory import MemoryUnitOfWork, Store
from redeemer.adapters.ports import UnitOfWork
from redeemer.adapters.postgres import PostgresUnitOfWork
from redeemer.app import MIGRATIONS, SOURCE
from redeemer.domain import AddressThrottle, Credential, SerialThrottle
from scanner_auth_shared.migrations import upgrade
from scanner_auth_shared.postgres import Database

Ports = Callable[[], UnitOfWork]
SECOND = timedelta(seconds=1)


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.unit),
        pytest.param("postgres", marks=pytest.mark.integration),
    ]
)
async def ports(request: pytest.FixtureRequest) -> AsyncIterator[Ports]:
    if request.param == "memory":
        store = Store()
        yield lambda: MemoryUnitOfWork(store, source=SOURCE)
        return
    url = request.getfixturevalue("database_url")
    await upgrade(url, MIGRATIONS)
    database = Database(url, pool_size=2)
    await database.connect()
    try:
        yield lambda: PostgresUnitOfWork(database, source=SOURCE)
    finally:
        await database.dispose()


async def _now(ports: Ports) -> datetime:
    async with ports() as uow:
        return await uow.credentials.now()


# ------------------------------------------------------------------------------------ throttles


async def test_throttle_counters_are_kept_replaced_and_cleared(ports: Ports) -> None:
    async with ports() as uow:
        now = await uow.credentials.now()
        empty = await uow.throttles.state("lvs-1", "192.0.2.1")
        assert (empty.now, empty.serial, empty.address) == (
            now,
            SerialThrottle(),
            AddressThrottle(),
        )
        await uow.throttles.lock("lvs-1", "192.0.2.1")
        await uow.throttles.save_serial("lvs-1", SerialThrottle(3, now + 900 * SECOND), now)
        await uow.throttles.save_address(
            "192.0.2.1", AddressThrottle((now - 60 * SECOND, now), None), now
        )
        await uow.commit()
    async with ports() as uow:
        state = await uow.throttles.state("lvs-1", "192.0.2.1")
        assert state.serial == SerialThrottle(3, now + 900 * SECOND)
        assert state.address == AddressThrottle((now - 60 * SECOND, now), None)
        assert (await uow.throttles.state("lvs-2", "192.0.2.2")).serial == SerialThrottle()
        await uow.throttles.save_serial("lvs-1", SerialThrottle(4, None), now)
        await uow.throttles.save_address("192.0.2.1", AddressThrottle((), now + SECOND), now)
        await uow.commit()
    async with ports() as uow:
        state = await uow.throttles.state("lvs-1", "192.0.2.1")
        assert state.serial == SerialThrottle(4, None)
        assert state.address == AddressThrottle((), now + SECOND)
        await uow.throttles.clear_serial("lvs-1")
        await uow.throttles.clear_serial("never-seen")
        await uow.commit()
    async with ports() as uow:
        state = await uow.throttles.state("lvs-1", "192.0.2.1")
        assert state.serial == SerialThrottle() and state.address.locked_until == now + SECOND


async def test_throttle_counters_not_committed_are_not_kept(ports: Ports) -> None:
    async with ports() as uow:
        now = await uow.credentials.now()
        await uow.throttles.save_serial("lvs-1", SerialThrottle(1, None), now)
    async with ports() as uow:
        assert (await uow.throttles.state("lvs-1", "a")).serial == SerialThrottle()


async def test_idle_throttles_are_forgotten_once_unlocked(ports: Ports) -> None:
    now = await _now(ports)
    old = now - 7200 * SECOND
    async with ports() as uow:
        await uow.throttles.save_serial("idle", SerialThrottle(2, None), old)
        await uow.throttles.save_serial("lock-passed", SerialThrottle(0, old), old)
        await uow.throttles.save_serial("locked", SerialThrottle(0, now + 3600 * SECOND), old)
        await uow.throttles.save_serial("recent", SerialThrottle(1, None), now)
        await uow.throttles.save_address("idle", AddressThrottle((old,), None), old)
        await uow.throttles.save_address("locked", AddressThrottle((), now + 60 * SECOND), old)
        await uow.throttles.save_address("recent", AddressThrottle((now,), None), now)
        await uow.commit()
    async with ports() as uow:
        assert await uow.throttles.forget_stale_serials(3600) == 2
        assert await uow.throttles.forget_stale_addresses(3600) == 1
        await uow.commit()
    async with ports() as uow:
        kept = {
            k: (await uow.throttles.state(k, k))
            for k in ("idle", "lock-passed", "locked", "recent")
        }
    assert {k for k, s in kept.items() if s.serial != SerialThrottle()} == {"locked", "recent"}
    assert {k for k, s in kept.items() if s.address != AddressThrottle()} == {"locked", "recent"}


# ------------------------------------------------------------------------------------ tokens


async def _issue(
    uow: UnitOfWork,
    token_id: str,
    digest: str,
    issued_at: datetime,
    *,
    scanner_id: str = "sc-1",
    ttl: timedelta = timedelta(days=3),
) -> None:
    await uow.tokens.issued(
        token_id=token_id,
        scanner_id=scanner_id,
        org_id="o",
        code_digest=digest,
        issued_at=issued_at,
        expires_at=issued_at + ttl,
    )


async def test_a_token_is_found_by_its_digest_with_its_scanners_serial(ports: Ports) -> None:
    async with ports() as uow:
        now = await uow.credentials.now()
        assert await uow.tokens.by_digest("d1") is None
        await _issue(uow, "t1", "d1", now)
        view = await uow.tokens.by_digest("d1")
        assert view is not None and view == await uow.tokens.by_id("t1")
        assert (view.token_id, view.scanner_id, view.org_id, view.code_digest) == (
            "t1",
            "sc-1",
            "o",
            "d1",
        )
        assert (view.status, view.expires_at) == ("active", now + timedelta(days=3))
        assert (view.scanner_serial, view.scanner_removed) == (None, False)  # unknown scanner
        await uow.scanners.registered("sc-1", "o", "LVS-1")
        view = await uow.tokens.by_digest("d1")
        assert view is not None and (view.scanner_serial, view.scanner_removed) == ("LVS-1", False)
        await uow.scanners.registered("sc-1", "o", "LVS-1B")  # corrected by the directory
        await uow.scanners.removed("sc-1")
        await uow.scanners.registered("sc-1", "o", "LVS-1C")  # removed stays removed
        view = await uow.tokens.by_id("t1")
        assert view is not None and (view.scanner_serial, view.scanner_removed) == ("LVS-1C", True)
        await uow.scanners.removed("sc-never-registered")
        await uow.commit()


async def test_a_code_is_marked_redeemed_once_while_active_and_unexpired(ports: Ports) -> None:
    async with ports() as uow:
        now = await uow.credentials.now()
        await _issue(uow, "t1", "d1", now)
        await _issue(uow, "t2", "d2", now - timedelta(days=3), ttl=timedelta(days=3) - SECOND)
        await uow.commit()
    async with ports() as uow:
        assert await uow.tokens.mark_redeemed("t1") is True
        assert await uow.tokens.mark_redeemed("t1") is False
        assert await uow.tokens.mark_redeemed("t2") is False  # past its expiry
        assert await uow.tokens.mark_redeemed("t-unknown") is False
        await uow.commit()
    async with ports() as uow:
        t1, t2 = await uow.tokens.by_id("t1"), await uow.tokens.by_id("t2")
        assert t1 is not None and t1.status == "redeemed"
        assert t2 is not None and t2.status == "active"  # only judged expired


async def test_token_endings_apply_to_active_tokens_in_any_order(ports: Ports) -> None:
    async with ports() as uow:
        now = await uow.credentials.now()
        # Ended before it was issued: recorded, matching no code until its TokenIssued, which
        # leaves the status alone.
        await uow.tokens.ended(
            token_id="t1", scanner_id="sc-1", org_id="o", status="revoked", at=now
        )
        assert await uow.tokens.by_id("t1") is None
        await _issue(uow, "t1", "d1", now)
        view = await uow.tokens.by_digest("d1")
        assert view is not None and view.status == "revoked"
        # Ended once: a second ending changes nothing; a redeemed token stays redeemed.
        await _issue(uow, "t2", "d2", now)
        await uow.tokens.ended(
            token_id="t2", scanner_id="sc-1", org_id="o", status="expired", at=now
        )
        await uow.tokens.ended(
            token_id="t2", scanner_id="sc-1", org_id="o", status="revoked", at=now
        )
        await _issue(uow, "t3", "d3", now)
        assert await uow.tokens.mark_redeemed("t3")
        await uow.tokens.ended(
            token_id="t3", scanner_id="sc-1", org_id="o", status="revoked", at=now
        )
        statuses = [(await uow.tokens.by_id(t)) for t in ("t2", "t3")]
        assert [v.status if v else None for v in statuses] == ["expired", "redeemed"]
        await uow.commit()


async def test_a_digest_on_several_tokens_finds_the_active_one_else_the_latest(
    ports: Ports,
) -> None:
    async with ports() as uow:
        now = await uow.credentials.now()
        await _issue(uow, "old", "d", now - 2 * SECOND)
        await _issue(uow, "newer", "d", now - SECOND)
        await uow.tokens.ended(
            token_id="newer", scanner_id="sc-1", org_id="o", status="revoked", at=now
        )
        found = await uow.tokens.by_digest("d")
        assert found is not None and found.token_id == "old"  # active first
        assert await uow.tokens.mark_redeemed("old")
        found = await uow.tokens.by_digest("d")
        assert found is not None and found.token_id == "newer"  # then the latest issued
        await uow.commit()


# ------------------------------------------------------------------------------------ credentials


def _credential(
    credential_id: str,
    issued_at: datetime,
    *,
    scanner_id: str = "sc-1",
    status: str = "active",
    **more: object,
) -> Credential:
    return Credential(
        credential_id=credential_id,
        scanner_id=scanner_id,
        org_id="o",
        credential_digest=f"digest-{credential_id}",
        status=status,  # type: ignore[arg-type]
        issued_at=issued_at,
        **more,
    )  # type: ignore[arg-type]


async def test_credentials_are_kept_and_found_by_id_and_digest(ports: Ports) -> None:
    async with ports() as uow:
        now = await uow.credentials.now()
        first = _credential("c1", now, token_id="t1")
        second = _credential("c2", now, previous_credential_id="c1", valid_until=now + SECOND)
        await uow.credentials.add(first)
        await uow.credentials.add(second)
        await uow.commit()
    async with ports() as uow:
        assert await uow.credentials.by_id("c1") == first
        assert await uow.credentials.by_digest("digest-c2") == second
        assert await uow.credentials.by_id("c-unknown") is None
        assert await uow.credentials.by_digest("digest-unknown") is None


async def test_a_new_credential_is_stamped_by_the_databases_clock(ports: Ports) -> None:
    async with ports() as uow:
        now = await uow.credentials.now()
        assert await uow.credentials.lock_scanner("sc-1") >= now
        await uow.commit()


async def test_recent_rotations_are_counted_per_scanner(ports: Ports) -> None:
    async with ports() as uow:
        now = await uow.credentials.now()
        for credential in (
            _credential("redeemed", now - 50 * SECOND, token_id="t1"),
            _credential("r-old", now - 40 * SECOND, previous_credential_id="redeemed"),
            _credential("r-new", now - 10 * SECOND, previous_credential_id="r-old"),
            _credential(
                "elsewhere", now - 10 * SECOND, scanner_id="sc-2", previous_credential_id="x"
            ),
        ):
            await uow.credentials.add(credential)
        recent = sorted(await uow.credentials.rotations_since("sc-1", now - 30 * SECOND))
        assert recent == [now - 10 * SECOND]
        every = sorted(await uow.credentials.rotations_since("sc-1", now - 60 * SECOND))
        assert every == [now - 40 * SECOND, now - 10 * SECOND]
        assert await uow.credentials.rotations_since("sc-3", now - 60 * SECOND) == []
        await uow.commit()


async def test_live_credentials_are_replaced_rotated_and_revoked(ports: Ports) -> None:
    async with ports() as uow:
        now = await uow.credentials.now()
        for credential in (
            _credential("active", now - 3 * SECOND),
            _credential("rotating", now - 3 * SECOND, status="rotating", valid_until=now),
            _credential("ended", now - 3 * SECOND, status="revoked"),
            _credential("other", now - 3 * SECOND, scanner_id="sc-2"),
        ):
            await uow.credentials.add(credential)
        assert await uow.credentials.replace_live("sc-1", now) == 2
        statuses = {
            c: (await uow.credentials.by_id(c)) for c in ("active", "rotating", "ended", "other")
        }
        assert {c: v.status if v else None for c, v in statuses.items()} == {
            "active": "replaced",
            "rotating": "replaced",
            "ended": "revoked",
            "other": "active",
        }

        await uow.credentials.add(_credential("current", now - 2 * SECOND))
        await uow.credentials.start_grace("current", now + 60 * SECOND)
        await uow.credentials.start_grace("ended", now + 60 * SECOND)  # not active: untouched
        rotating = await uow.credentials.by_id("current")
        assert rotating is not None
        assert (rotating.status, rotating.valid_until) == ("rotating", now + 60 * SECOND)
        ended = await uow.credentials.by_id("ended")
        assert ended is not None and (ended.status, ended.valid_until) == ("revoked", None)

        # Revoked: every live one of the scanner, whenever it was issued (a future one too).
        await uow.credentials.add(_credential("later", now + 60 * SECOND))
        assert await uow.credentials.revoke_live("sc-1") == ["current", "later"]
        after = {c: (await uow.credentials.by_id(c)) for c in ("current", "later", "other")}
        assert {c: v.status if v else None for c, v in after.items()} == {
            "current": "revoked",
            "later": "revoked",
            "other": "active",
        }
        assert await uow.credentials.revoke_live("sc-1") == []
        await uow.commit()
