"""Who may do what, use case by use case, for every role and organisation against every kind of
scanner, in memory. Each combination runs in a world of its own, so that no outcome depends on
what an earlier call did (each starts from a copy of the same state)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from memory_world import World, principal
from token_issuer_support import (
    A1,
    A2,
    ADMIN_A,
    ADMIN_B,
    B1,
    CROSS_B,
    PLAIN_A,
    SCANNERS,
    SUPPORT,
    USER_A,
    Who,
    directory_of_two_orgs,
)

from scanner_auth_shared.events import ScannerAuthorised, ScannerRemoved
from token_issuer import domain, handlers

pytestmark = pytest.mark.unit

PRINCIPALS = {
    "admin of org A": ADMIN_A,
    "support (Loadscan)": SUPPORT,
    "user of A granted A1": USER_A,
    "user of A without a grant": PLAIN_A,
    "admin of org B": ADMIN_B,
    "user of B granted A1 (across organisations)": CROSS_B,
}
REMOVED, HIDDEN, MISSING = "sc-removed", "sc-hidden", "sc-never-heard-of"
SCANNER_KINDS = {
    "A1 (org A)": A1,
    "B1 (org B)": B1,
    "removed": REMOVED,
    "authorised, never registered": HIDDEN,
    "unknown": MISSING,
}
MANAGERS = {A1: {ADMIN_A, SUPPORT}, B1: {ADMIN_B, SUPPORT}}
VIEWERS = {A1: {USER_A}}


def level(who: Who, scanner_id: str) -> str:
    if who in MANAGERS.get(scanner_id, set()):
        return "manage"
    return "view" if who in VIEWERS.get(scanner_id, set()) else "none"


async def a_world() -> World:
    """Two organisations; A1 and B1 with an active token each (issued by support); a removed
    scanner of org A; a scanner of org A the redeemer authorised before the directory told us
    of it."""
    world = World()
    removed = SCANNERS[A2].model_copy(update={"scanner_id": REMOVED})
    await world.apply(*directory_of_two_orgs(), removed, ScannerRemoved(scanner_id=REMOVED))
    hidden = ScannerAuthorised(
        scanner_id=HIDDEN, org_id="org-a", token_id="t-elsewhere", serial_number="S-H",
        credential_id="cred-h", credential_digest="0" * 64, authorised_at=world.clock(),
    )  # fmt: skip
    await world.apply(hidden)
    await world.authenticated(ADMIN_A, ADMIN_B)  # the admins each recipient_for() names
    for scanner_id in (A1, B1):
        await world.generate(SUPPORT, scanner_id)
    return world


UseCase = Callable[[World, Who, str], Awaitable[object]]


def recipient_for(scanner_id: str) -> str:
    return ADMIN_B.sub if scanner_id == B1 else ADMIN_A.sub


USE_CASES: dict[str, tuple[UseCase, dict[str, str]]] = {
    "show the latest token": (
        lambda w, who, s: w.latest(who, s),
        {"manage": "ok", "view": "ok", "none": "404"},
    ),
    "show the authorisation": (
        lambda w, who, s: handlers.show_authorisation(w.uow(), principal(who), s),
        {"manage": "ok", "view": "ok", "none": "404"},
    ),
    "email the code to oneself": (
        lambda w, who, s: w.email(who, s),
        {"manage": "ok", "view": "ok", "none": "404"},
    ),
    "email the code to another viewer": (
        lambda w, who, s: w.email(who, s, recipient_for(s)),
        {"manage": "ok", "view": "403", "none": "404"},
    ),
    "list who can view": (
        lambda w, who, s: handlers.list_viewers(w.uow(), w.ctx, principal(who), s),
        {"manage": "ok", "view": "403", "none": "404"},
    ),
    "generate a token": (
        lambda w, who, s: w.generate(who, s),
        {"manage": "ok", "view": "403", "none": "404"},
    ),
    "revoke the token": (
        lambda w, who, s: w.revoke(who, s),
        {"manage": "ok", "view": "403", "none": "404"},
    ),
    "deauthorise": (
        lambda w, who, s: w.deauthorise(who, s),
        {"manage": "ok", "view": "403", "none": "404"},
    ),
}


async def outcome(use_case: UseCase, world: World, who: Who, scanner_id: str) -> str:
    try:
        await use_case(world, who, scanner_id)
    except domain.ScannerNotFound:
        return "404"
    except domain.ManageForbidden:
        return "403"
    return "ok"


@pytest.mark.parametrize("name", list(USE_CASES))
async def test_the_access_matrix(name: str) -> None:
    use_case, expected = USE_CASES[name]
    mismatches = []
    base = await a_world()
    for label, who in PRINCIPALS.items():
        for kind, scanner_id in SCANNER_KINDS.items():
            world = base.fork()
            before = len(world.store.published)
            got = await outcome(use_case, world, who, scanner_id)
            want = expected[level(who, scanner_id)]
            if got != want:
                mismatches.append(f"{label} on {kind}: {got}, expected {want}")
            if got != "ok":  # a refusal changes nothing and publishes nothing
                assert len(world.store.published) == before, (label, kind)
    assert not mismatches, "\n".join(mismatches)


async def test_the_list_holds_exactly_what_each_caller_can_view() -> None:
    world = await a_world()
    visible = {
        ADMIN_A: {A1: True, A2: True},
        SUPPORT: {A1: True, A2: True, B1: True},
        USER_A: {A1: False},
        PLAIN_A: {},
        ADMIN_B: {B1: True},
        CROSS_B: {},
    }
    for label, who in PRINCIPALS.items():
        listed = await handlers.list_scanners(world.uow(), world.ctx, principal(who))
        assert {s.scanner_id: s.can_manage for s in listed} == visible[who], label


async def test_refusals_of_the_access_policy_say_nothing_of_the_scanner() -> None:
    world = await a_world()
    with pytest.raises(domain.ScannerNotFound) as other_org:
        await world.latest(ADMIN_B, A1)
    with pytest.raises(domain.ScannerNotFound) as unknown:
        await world.latest(ADMIN_B, MISSING)
    assert str(other_org.value) == str(unknown.value) == "no such scanner"
