"""One behavioural suite per repository, run against both implementations: the memory fakes
every use-case test relies on (unit) and PostgreSQL (integration). The fakes are only worth
having if they behave as the real ones do."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from scanner_auth_shared.events import TokenExpired
from scanner_auth_shared.migrations import upgrade
from scanner_auth_shared.postgres import Database, asyncpg_dsn
from token_issuer.adapters import postgres
from token_issuer.adapters.memory import MemoryUnitOfWork, Store, UnlockedScannerEvent
from token_issuer.adapters.ports import UnitOfWork
from token_issuer.adapters.postgres import PostgresUnitOfWork
from token_issuer.domain import AuditEntry, Person, Scanner, SeenPrincipal, Token

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
MIGRATIONS = Path(postgres.__file__).parents[1] / "migrations"


@dataclass
class Rig:
    """A way to make units of work, and to see the columns no repository reads back."""

    new: Callable[[], UnitOfWork]
    audit_rows: Callable[[], Awaitable[list[AuditEntry]]]
    token_ending: Callable[[str], Awaitable[dict[str, Any]]]  # revoked_*, expired_at


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.unit),
        pytest.param("postgres", marks=pytest.mark.integration),
    ]
)
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    if request.param == "memory":
        store = Store()

        async def memory_audit() -> list[AuditEntry]:
            return list(store.audit_log)

        async def memory_ending(token_id: str) -> dict[str, Any]:
            r = store.tokens[token_id]
            return {
                "revoked_at": r.revoked_at,
                "revoked_by": r.revoked_by,
                "revoke_reason": r.revoke_reason,
                "expired_at": r.expired_at,
            }

        yield Rig(lambda: MemoryUnitOfWork(store), memory_audit, memory_ending)
        return
    url = request.getfixturevalue("database_url")
    await upgrade(url, MIGRATIONS)
    database = Database(url, pool_size=8)
    await database.connect()
    conn = await asyncpg.connect(asyncpg_dsn(url))

    async def pg_audit() -> list[AuditEntry]:
        rows = await conn.fetch(
            "SELECT at, actor_user_id, actor_org_id, action, scanner_id, token_id,"
            " recipient_user_id, notification_id FROM audit_log ORDER BY id"
        )
        return [AuditEntry(**dict(r.items())) for r in rows]

    async def pg_ending(token_id: str) -> dict[str, Any]:
        row = await conn.fetchrow(
            "SELECT revoked_at, revoked_by, revoke_reason, expired_at FROM tokens"
            " WHERE token_id = $1",
            token_id,
        )
        return dict(row.items())

    try:
        yield Rig(lambda: PostgresUnitOfWork(database), pg_audit, pg_ending)
    finally:
        await conn.close()
        await database.dispose()


def token(token_id: str, scanner_id: str = "sc-1", *, expires_in: float = 3600) -> Token:
    return Token(
        token_id=token_id, scanner_id=scanner_id, org_id="org-a", code_ciphertext=b"sealed",
        code_digest="d" * 64, status="active", issued_at=T0, issued_by="u-admin",
        expires_at=T0 + timedelta(seconds=expires_in),
    )  # fmt: skip


def generated(t: Token) -> AuditEntry:
    return AuditEntry(T0, t.issued_by, "org-a", "generated", t.scanner_id, t.token_id)


async def add_tokens(rig: Rig, *tokens: Token) -> None:
    async with rig.new() as uow:
        for t in tokens:
            await uow.tokens.add(t, generated(t))
        await uow.commit()


# ------------------------------------------------------------------------------------ scanners


async def test_a_scanner_reads_back_with_the_callers_grant(rig: Rig) -> None:
    async with rig.new() as uow:
        await uow.scanners.register("sc-1", "org-a", "LVS-1", "Loader", "LVS")
        await uow.people.grant("sc-1", "u-granted")
        await uow.commit()
    expected = Scanner("sc-1", "org-a", "LVS-1", "Loader", "LVS", registered=True)
    async with rig.new() as uow:
        assert await uow.scanners.get_with_grant("sc-1", "u-granted") == (expected, True)
        assert await uow.scanners.get_with_grant("sc-1", "u-other") == (expected, False)
        assert await uow.scanners.get_with_grant_for_update("sc-1", "u-granted") == (
            expected,
            True,
        )
        assert await uow.scanners.get_for_update("sc-1") == expected
        assert await uow.scanners.get_with_grant("sc-none", "u-granted") == (None, False)
        assert await uow.scanners.get_with_grant_for_update("sc-none", "u") == (None, False)
        assert await uow.scanners.get_for_update("sc-none") is None
    assert expected.visible


async def test_registering_again_updates_the_details_and_removal_is_final(rig: Rig) -> None:
    async with rig.new() as uow:
        await uow.scanners.register("sc-1", "org-a", "LVS-1", "Loader", "LVS")
        await uow.scanners.mark_removed("sc-1", T0)
        await uow.scanners.register("sc-1", "org-b", "MPS-2", "Renamed", "MPS")
        await uow.scanners.mark_removed("sc-none", T0)  # nothing to update
        await uow.commit()
    async with rig.new() as uow:
        scanner = await uow.scanners.get_for_update("sc-1")
        assert scanner == Scanner(
            "sc-1", "org-b", "MPS-2", "Renamed", "MPS", registered=True, removed_at=T0
        )
        assert scanner is not None and not scanner.visible
        assert await uow.scanners.get_for_update("sc-none") is None


async def test_a_scanner_known_before_its_registration_is_hidden_until_then(rig: Rig) -> None:
    async with rig.new() as uow:
        await uow.scanners.ensure("sc-1", "org-a")
        await uow.scanners.set_authorised(
            "sc-1", at=T0, credential_id="cred-1", serial_number="LVS-1"
        )
        await uow.scanners.ensure("sc-1", "org-other")  # changes nothing
        await uow.commit()
    async with rig.new() as uow:
        hidden = await uow.scanners.get_for_update("sc-1")
        assert hidden is not None and not hidden.visible and hidden.org_id == "org-a"
        await uow.scanners.register("sc-1", "org-a", "LVS-1", "Loader", "LVS")
        await uow.commit()
    async with rig.new() as uow:
        shown = await uow.scanners.get_for_update("sc-1")
        assert shown == Scanner(
            "sc-1", "org-a", "LVS-1", "Loader", "LVS", registered=True, authorised=True,
            authorised_at=T0, credential_id="cred-1", authorised_serial_number="LVS-1",
        )  # fmt: skip


async def test_authorised_rotated_and_deauthorised(rig: Rig) -> None:
    later = T0 + timedelta(minutes=5)
    async with rig.new() as uow:
        await uow.scanners.register("sc-1", "org-a", "LVS-1", "Loader", "LVS")
        await uow.scanners.set_authorised(
            "sc-1", at=T0, credential_id="cred-1", serial_number="LVS-1"
        )
        await uow.scanners.set_credential("sc-1", "cred-2")
        await uow.commit()
    async with rig.new() as uow:
        scanner = await uow.scanners.get_for_update("sc-1")
        assert scanner is not None and scanner.credential_id == "cred-2" and scanner.authorised
        await uow.scanners.set_deauthorised("sc-1", later)
        await uow.scanners.set_deauthorised("sc-1", T0)  # an earlier one: the later stays
        await uow.commit()
    async with rig.new() as uow:
        assert await uow.scanners.get_for_update("sc-1") == Scanner(
            "sc-1", "org-a", "LVS-1", "Loader", "LVS", registered=True, deauthorised_at=later
        )


async def test_the_list_prefilters_by_role_and_carries_the_latest_token(rig: Rig) -> None:
    async with rig.new() as uow:
        for scanner_id, org, name in (
            ("sc-a2", "org-a", "Bravo"), ("sc-a1", "org-a", "Alpha"),
            ("sc-b1", "org-b", "Charlie"), ("sc-gone", "org-a", "Delta"),
        ):  # fmt: skip
            await uow.scanners.register(scanner_id, org, f"S-{scanner_id}", name, "LVS")
        await uow.scanners.mark_removed("sc-gone", T0)
        await uow.scanners.ensure("sc-hidden", "org-a")
        await uow.people.grant("sc-a2", "u-user")
        await uow.people.grant("sc-b1", "u-user")  # across organisations: listed, not viewable
        await uow.scanners.set_authorised("sc-a1", at=T0, credential_id="c", serial_number="s")
        await uow.commit()
    first, second = token("t-1", "sc-a1"), token("t-2", "sc-a1", expires_in=60)
    await add_tokens(rig, first)
    async with rig.new() as uow:
        assert await uow.tokens.revoke("t-1", at=T0, by="u", reason="superseded")
        await uow.tokens.add(second, generated(second))
        await uow.commit()

    async def listed(user: str, org: str, *, support: bool = False, admin: bool = False) -> Any:
        async with rig.new() as uow:
            rows = await uow.scanners.listed_for(user, org, support=support, admin=admin)
        return [(r.scanner_id, r.has_grant, r.token_status) for r in rows]

    assert await listed("u-support", "loadscan", support=True) == [
        ("sc-a1", False, "active"), ("sc-a2", False, None), ("sc-b1", False, None),
    ]  # fmt: skip
    assert await listed("u-admin", "org-a", admin=True) == [
        ("sc-a1", False, "active"), ("sc-a2", False, None),
    ]  # fmt: skip
    assert await listed("u-user", "org-a") == [("sc-a2", True, None)]
    assert await listed("u-plain", "org-a") == []
    async with rig.new() as uow:
        (row, *_) = await uow.scanners.listed_for("u", "org-a", support=False, admin=True)
    assert (row.name, row.serial_number, row.model, row.org_id) == (
        "Alpha",
        "S-sc-a1",
        "LVS",
        "org-a",
    )
    assert (row.authorised, row.authorised_at, row.token_expires_at) == (
        True, T0, second.expires_at,
    )  # fmt: skip


# ------------------------------------------------------------------------------------ people


async def test_what_is_known_of_a_person(rig: Rig) -> None:
    seen = SeenPrincipal("u-seen", "org-a", ("admin",), "seen@jwt.example")
    async with rig.new() as uow:
        await uow.people.upsert_user("u-dir", "org-a", "old@dir.example", "Old")
        await uow.people.upsert_user("u-dir", "org-a", "dir@dir.example", "Dora")
        await uow.people.record_seen(seen, T0)
        await uow.people.grant("sc-1", "u-dir")
        await uow.people.grant("sc-1", "u-dir")  # idempotent
        await uow.commit()
    async with rig.new() as uow:
        assert await uow.people.person("u-nobody", "sc-1") is None
        assert await uow.people.person("u-dir", "sc-1") == Person(
            "u-dir", "org-a", "Dora", "dir@dir.example", has_grant=True, admin_seen_at=None
        )
        assert await uow.people.person("u-dir", "sc-2") == Person(
            "u-dir", "org-a", "Dora", "dir@dir.example", has_grant=False, admin_seen_at=None
        )
        assert await uow.people.person("u-seen", "sc-1") == Person(
            "u-seen", "org-a", "seen@jwt.example", "seen@jwt.example", False, T0
        )
        await uow.people.revoke_grant("sc-1", "u-dir")
        await uow.people.revoke_grant("sc-1", "u-dir")  # idempotent
        await uow.commit()
    async with rig.new() as uow:
        found = await uow.people.person("u-dir", "sc-1")
        assert found is not None and not found.has_grant


async def test_a_principal_seen_earlier_does_not_replace_one_seen_later(rig: Rig) -> None:
    later = T0 + timedelta(seconds=30)
    async with rig.new() as uow:
        await uow.people.record_seen(SeenPrincipal("u", "org-a", ("admin",), "new@x"), later)
        await uow.people.record_seen(SeenPrincipal("u", "org-a", (), "old@x"), T0)
        await uow.commit()
    async with rig.new() as uow:
        assert await uow.people.person("u", "sc") == Person(
            "u", "org-a", "new@x", "new@x", False, later
        )
        await uow.people.record_seen(SeenPrincipal("u", "org-b", (), None), later)  # same time
        await uow.commit()
    async with rig.new() as uow:
        assert await uow.people.person("u", "sc") == Person("u", "org-b", "", None, False, None)


async def test_who_is_around_a_scanner(rig: Rig) -> None:
    async with rig.new() as uow:
        await uow.people.upsert_user("u-b-granted", "org-a", "b@a.example", "Bea")
        await uow.people.grant("sc-1", "u-b-granted")
        await uow.people.grant("sc-1", "u-a-unknown")  # a grant before its user
        await uow.people.grant("sc-2", "u-elsewhere")
        await uow.people.record_seen(SeenPrincipal("u-c-admin", "org-a", ("admin",), "c@a"), T0)
        await uow.people.record_seen(SeenPrincipal("u-d-org-b", "org-b", ("admin",), "d@b"), T0)
        # Granted, directory in org A, last seen in org B as admin: that JWT tells nothing here.
        await uow.people.upsert_user("u-e-moved", "org-a", "", "Eve")
        await uow.people.grant("sc-1", "u-e-moved")
        await uow.people.record_seen(SeenPrincipal("u-e-moved", "org-b", ("admin",), "e@b"), T0)
        await uow.commit()
    async with rig.new() as uow:
        around = await uow.people.around("sc-1", "org-a")
    assert around == [
        Person("u-a-unknown", None, "", None, has_grant=True, admin_seen_at=None),
        Person("u-b-granted", "org-a", "Bea", "b@a.example", has_grant=True, admin_seen_at=None),
        Person("u-c-admin", "org-a", "c@a", "c@a", has_grant=False, admin_seen_at=T0),
        Person("u-e-moved", "org-a", "Eve", None, has_grant=True, admin_seen_at=None),
    ]


# ------------------------------------------------------------------------------------ tokens


async def test_a_token_and_its_audit_row_are_added_together(rig: Rig) -> None:
    first, second, other = token("t-1"), token("t-2"), token("t-3", "sc-2")
    await add_tokens(rig, first, other)
    async with rig.new() as uow:
        assert await uow.tokens.active("sc-1") == first
        assert await uow.tokens.latest("sc-1") == first
        assert await uow.tokens.get("t-3") == other
        assert await uow.tokens.get("t-none") is None
        assert await uow.tokens.active("sc-none") is None
        assert await uow.tokens.latest("sc-none") is None
        assert await uow.tokens.revoke("t-1", at=T0, by="u", reason="superseded")
        await uow.tokens.add(second, generated(second))
        await uow.commit()
    async with rig.new() as uow:
        assert await uow.tokens.active("sc-1") == second
        assert await uow.tokens.latest("sc-1") == second  # the one added last
    assert await rig.audit_rows() == [generated(first), generated(other), generated(second)]


async def test_a_scanner_has_one_active_token_at_most(rig: Rig) -> None:
    await add_tokens(rig, token("t-1"))
    with pytest.raises((asyncpg.UniqueViolationError, ValueError)):
        await add_tokens(rig, token("t-2"))
    async with rig.new() as uow:
        assert await uow.tokens.latest("sc-1") == token("t-1")
    assert len(await rig.audit_rows()) == 1  # the refused one's audit row went with it


async def test_revoking_ends_an_active_token_once(rig: Rig) -> None:
    await add_tokens(rig, token("t-1"))
    async with rig.new() as uow:
        assert await uow.tokens.revoke("t-1", at=T0, by="u-admin", reason="revoked")
        assert not await uow.tokens.revoke("t-1", at=T0, by="u-other", reason="superseded")
        assert not await uow.tokens.revoke("t-none", at=T0, by="u", reason="revoked")
        await uow.commit()
    async with rig.new() as uow:
        revoked = await uow.tokens.get("t-1")
        assert revoked is not None and (revoked.status, revoked.code_ciphertext) == (
            "revoked",
            None,
        )
        assert await uow.tokens.active("sc-1") is None
        assert not await uow.tokens.redeem("t-1", T0)  # a revoked token is never redeemed
    assert await rig.token_ending("t-1") == {
        "revoked_at": T0, "revoked_by": "u-admin", "revoke_reason": "revoked", "expired_at": None
    }  # fmt: skip


async def test_expiring_only_what_is_active_and_due_once(rig: Rig) -> None:
    due, later = token("t-due", "sc-1", expires_in=10), token("t-later", "sc-2", expires_in=99)
    await add_tokens(rig, due, later)
    now = T0 + timedelta(seconds=10)
    async with rig.new() as uow:
        assert await uow.tokens.due(now, 10) == [("t-due", "sc-1")]
        expired = await uow.tokens.expire("t-due", now)
        assert expired is not None
        assert (expired.token_id, expired.status, expired.code_ciphertext) == (
            "t-due",
            "expired",
            None,
        )
        assert (expired.scanner_id, expired.org_id, expired.expires_at) == (
            "sc-1", "org-a", due.expires_at,
        )  # fmt: skip
        assert await uow.tokens.expire("t-due", now) is None  # once
        assert await uow.tokens.expire("t-later", now) is None  # not due
        await uow.commit()
    async with rig.new() as uow:
        assert await uow.tokens.due(now, 10) == []
    assert (await rig.token_ending("t-due"))["expired_at"] == due.expires_at


async def test_due_tokens_come_oldest_first_a_batch_at_a_time(rig: Rig) -> None:
    tokens = [token(f"t-{n}", f"sc-{n}", expires_in=60 - n) for n in range(5)]
    await add_tokens(rig, *tokens)
    async with rig.new() as uow:
        now = T0 + timedelta(minutes=5)
        assert await uow.tokens.due(now, 3) == [("t-4", "sc-4"), ("t-3", "sc-3"), ("t-2", "sc-2")]
        assert await uow.tokens.due(T0 + timedelta(seconds=57), 10) == [
            ("t-4", "sc-4"),
            ("t-3", "sc-3"),
        ]


async def test_redeeming_an_active_or_expired_token(rig: Rig) -> None:
    await add_tokens(rig, token("t-1", "sc-1"), token("t-2", "sc-2", expires_in=1))
    at = T0 + timedelta(seconds=1)
    async with rig.new() as uow:
        assert await uow.tokens.redeem("t-1", at)
        assert not await uow.tokens.redeem("t-1", at)  # already redeemed
        assert await uow.tokens.expire("t-2", at) is not None
        assert await uow.tokens.redeem("t-2", at)  # swept before the redemption was heard of
        assert not await uow.tokens.redeem("t-none", at)
        await uow.commit()
    async with rig.new() as uow:
        for token_id in ("t-1", "t-2"):
            redeemed = await uow.tokens.get(token_id)
            assert redeemed is not None
            assert (redeemed.status, redeemed.redeemed_at, redeemed.code_ciphertext) == (
                "redeemed", at, None,
            )  # fmt: skip


# ------------------------------------------------------------------------------------ audit


async def test_audit_rows_are_kept_in_order_and_rolled_back_with_their_unit(rig: Rig) -> None:
    viewed = AuditEntry(T0, "u-1", "org-a", "viewed_code", "sc-1", "t-1")
    emailed = AuditEntry(T0, "u-1", None, "emailed", "sc-1", "t-1", "u-2", "n-1")
    async with rig.new() as uow:
        await uow.audit.record(viewed)
        await uow.audit.record(emailed)
        await uow.commit()
    async with rig.new() as uow:
        await uow.audit.record(AuditEntry(T0, "u-1", "org-a", "deauthorised", "sc-1"))
    assert await rig.audit_rows() == [viewed, emailed]


# ------------------------------------------------------------------------------------ the lock


async def test_units_that_lock_a_scanner_see_each_others_writes(rig: Rig) -> None:
    """Twenty units read a value under the scanner's lock and write it plus one: none is lost
    (without the lock, concurrent readers would read the same value)."""
    async with rig.new() as uow:
        await uow.scanners.ensure("sc-1", "org-a")
        await uow.scanners.set_credential("sc-1", "0")
        await uow.commit()

    async def increment() -> None:
        async with rig.new() as uow:
            scanner = await uow.scanners.get_for_update("sc-1")
            assert scanner is not None and scanner.credential_id is not None
            await uow.scanners.set_credential("sc-1", str(int(scanner.credential_id) + 1))
            await uow.commit()

    await asyncio.gather(*(increment() for _ in range(20)))
    async with rig.new() as uow:
        scanner = await uow.scanners.get_for_update("sc-1")
    assert scanner is not None and scanner.credential_id == "20"


@pytest.mark.unit
async def test_the_fake_refuses_an_event_for_a_scanner_whose_row_is_not_locked() -> None:
    store = Store()
    expired = TokenExpired(token_id="t", scanner_id="sc-1", org_id="o", expired_at=T0)
    async with MemoryUnitOfWork(store) as uow:
        await uow.scanners.ensure("sc-1", "org-a")
        await uow.commit()
    with pytest.raises(UnlockedScannerEvent):
        async with MemoryUnitOfWork(store) as uow:
            await uow.scanners.get_with_grant("sc-1", "u")  # read, not locked
            uow.emit(expired)
            await uow.commit()
    async with MemoryUnitOfWork(store) as uow:
        await uow.scanners.get_for_update("sc-1")
        uow.emit(expired)
        await uow.commit()
    assert store.data(TokenExpired) == [expired]


# ------------------------------------------------------------------------------------ email quota


async def test_email_requests_tell_when_a_quota_is_full(rig: Rig) -> None:
    since = T0 - timedelta(hours=1)
    async with rig.new() as uow:
        await uow.emails.lock_recipient("a@x")
        assert await uow.emails.full_since("t1", "a@x", since, per_code=2, per_recipient=3) == (
            None, None,
        )  # fmt: skip
        await uow.emails.add("n0", "t1", "a@x", since)  # on the window's edge: outside it
        for n, minutes in enumerate((10, 20, 30), start=1):
            await uow.emails.add(
                f"n{n}", "t1" if n < 3 else "t2", "a@x", T0 - timedelta(minutes=minutes)
            )
        await uow.commit()
    async with rig.new() as uow:
        # t1: n1 (-10), n2 (-20) in the window: the 2nd newest is n2; a@x: n1, n2, n3.
        assert await uow.emails.full_since("t1", "a@x", since, per_code=2, per_recipient=3) == (
            T0 - timedelta(minutes=20), T0 - timedelta(minutes=30),
        )  # fmt: skip
        assert await uow.emails.full_since("t1", "b@x", since, per_code=3, per_recipient=1) == (
            None, None,
        )  # fmt: skip
        assert await uow.emails.full_since("t2", "a@x", since, per_code=1, per_recipient=4) == (
            T0 - timedelta(minutes=30), None,
        )  # fmt: skip
        assert await uow.emails.purge(T0 - timedelta(minutes=25)) == 2  # n0, n3
        await uow.commit()
    async with rig.new() as uow:
        assert await uow.emails.full_since("t2", "a@x", since, per_code=1, per_recipient=2) == (
            None, T0 - timedelta(minutes=20),
        )  # fmt: skip
