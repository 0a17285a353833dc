"""The directory view and the authorisation view, in memory: any order of directory events, what
follows from a scanner being removed, authorised, rotated or deauthorised."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta

import pytest
from memory_world import TTL, World
from token_issuer_support import A1, A2, ADMIN_A, B1, SCANNERS, SUPPORT, USER_A

from scanner_auth_shared.events import (
    CredentialRotated,
    ScannerAccessGranted,
    ScannerAccessRevoked,
    ScannerAuthorised,
    ScannerDeauthorised,
    ScannerRegistered,
    ScannerRemoved,
    TokenRevoked,
    UserUpserted,
)
from token_issuer import domain
from token_issuer.domain import AuthorisationView

pytestmark = pytest.mark.unit

UNAUTHORISED = AuthorisationView("unauthorised", None, None, None)


def authorised(
    scanner_id: str, token_id: str, credential_id: str, at: datetime, org: str = "org-a"
) -> ScannerAuthorised:
    return ScannerAuthorised(
        scanner_id=scanner_id, org_id=org, token_id=token_id,
        serial_number=SCANNERS[scanner_id].serial_number if scanner_id in SCANNERS else "S-1",
        credential_id=credential_id, credential_digest="0" * 64, authorised_at=at,
    )  # fmt: skip


def rotated(scanner_id: str, credential_id: str, at: datetime) -> CredentialRotated:
    return CredentialRotated(
        scanner_id=scanner_id, org_id="org-a", credential_id=credential_id,
        credential_digest="0" * 64, previous_credential_id="cred-1",
        previous_valid_until=at + timedelta(hours=1), rotated_at=at,
    )  # fmt: skip


# ------------------------------------------------------------------------------------ directory


async def test_directory_events_in_any_order_give_the_same_view() -> None:
    events = [
        ScannerAccessGranted(scanner_id=A1, user_id=USER_A.sub),
        SCANNERS[A1],
        UserUpserted(user_id=USER_A.sub, org_id="org-a", email="uma@a.example", display_name="Uma"),
        ScannerRemoved(scanner_id="sc-ghost"),  # never seen: nothing
        ScannerAccessRevoked(scanner_id="sc-ghost", user_id=USER_A.sub),  # nor this
    ]
    views = set()
    for order in itertools.permutations(events):
        w = World()
        await w.apply(*order)
        await w.authenticated(ADMIN_A)
        listed = tuple((s.scanner_id, s.name, s.can_manage) for s in await w.list_for(USER_A))
        viewers = tuple(await w.viewers(ADMIN_A, A1))
        views.add((listed, viewers, tuple(sorted(w.store.scanners))))
        assert w.store.published == []
    (view,) = views  # the same, whatever the order
    listed, viewers, stored = view
    assert listed == ((A1, SCANNERS[A1].name, False),)
    assert [v.user_id for v in viewers] == [ADMIN_A.sub, USER_A.sub]
    assert stored == (A1,)  # no row for the ghost


async def test_a_new_registration_updates_the_details_and_a_revoked_grant_hides(
    orgs: World,
) -> None:
    w = orgs
    await w.apply(SCANNERS[A1].model_copy(update={"name": "Alpha renamed"}))
    assert [s.name for s in await w.list_for(USER_A)] == ["Alpha renamed"]
    await w.apply(ScannerAccessRevoked(scanner_id=A1, user_id=USER_A.sub))
    assert await w.list_for(USER_A) == []
    with pytest.raises(domain.ScannerNotFound):
        await w.authorisation(USER_A, A1)


async def test_removing_a_scanner_revokes_its_token_deauthorises_it_and_hides_it(
    orgs: World,
) -> None:
    w = orgs
    first = await w.generate(ADMIN_A, A1)
    await w.apply(authorised(A1, first.token_id, "cred-1", w.clock()))
    pending = await w.generate(ADMIN_A, A1)
    w.clock.advance(minutes=1)
    before = len(w.store.published)
    await w.apply(ScannerRemoved(scanner_id=A1))

    assert [t for t, _ in w.published()[before:]] == ["TokenRevoked", "ScannerDeauthorised"]
    assert w.store.data(TokenRevoked)[-1] == TokenRevoked(
        token_id=pending.token_id, scanner_id=A1, org_id="org-a", revoked_by="directory",
        reason="revoked", revoked_at=w.clock(),
    )  # fmt: skip
    assert w.store.data(ScannerDeauthorised) == [
        ScannerDeauthorised(
            scanner_id=A1,
            org_id="org-a",
            credential_id="cred-1",
            deauthorised_by="directory",
            reason="scanner_removed",
            deauthorised_at=w.clock(),
        )
    ]
    for who in (ADMIN_A, SUPPORT, USER_A):
        assert A1 not in {s.scanner_id for s in await w.list_for(who)}
        for use_case in (w.latest, w.authorisation, w.generate, w.viewers, w.deauthorise):
            with pytest.raises(domain.ScannerNotFound):
                await use_case(who, A1)

    after = len(w.store.published)
    await w.apply(ScannerRemoved(scanner_id=A1), SCANNERS[A1])  # again; registered again
    assert len(w.store.published) == after
    assert A1 not in {s.scanner_id for s in await w.list_for(SUPPORT)}  # removal is final


async def test_removing_a_scanner_never_authorised_only_revokes(orgs: World) -> None:
    w = orgs
    await w.generate(ADMIN_A, A2)
    await w.apply(ScannerRemoved(scanner_id=A2), ScannerRemoved(scanner_id=B1))
    assert [t for t, _ in w.published()] == ["TokenIssued", "TokenRevoked"]


async def test_a_batch_of_directory_events_applies_in_one_unit_of_work(orgs: World) -> None:
    w = orgs
    await w.generate(ADMIN_A, A1)
    await w.generate(ADMIN_A, A2)
    commits = w.store.commits
    extra = ScannerRegistered(scanner_id="sc-new", org_id="org-b", serial_number="N-1")
    await w.apply_batch(ScannerRemoved(scanner_id=A1), ScannerRemoved(scanner_id=A2), extra)
    assert w.store.commits == commits + 1
    assert [e.subject for e in w.store.events(TokenRevoked)] == [A1, A2]
    assert "sc-new" in {s.scanner_id for s in await w.list_for(SUPPORT)}


# ------------------------------------------------------------------------------------ authorisation


async def test_a_redemption_redeems_the_token_and_authorises_the_scanner(orgs: World) -> None:
    w = orgs
    token = await w.generate(ADMIN_A, A1)
    at = w.clock()
    await w.apply(authorised(A1, token.token_id, "cred-1", at))
    shown = await w.latest(USER_A, A1)
    assert (shown.status, shown.code, shown.redeemed_at) == ("redeemed", None, at)
    assert w.store.tokens[token.token_id].token.code_ciphertext is None
    assert await w.authorisation(USER_A, A1) == AuthorisationView(
        "authorised", at, "cred-1", SCANNERS[A1].serial_number
    )
    (listed,) = await w.list_for(USER_A)
    assert (listed.authorisation_status, listed.authorised_at, listed.token_status) == (
        "authorised", at, "redeemed",
    )  # fmt: skip
    assert w.store.published[-1].event.type == "TokenIssued"  # the views publish nothing


async def test_a_redemption_heard_after_the_sweeper_expired_the_token(orgs: World) -> None:
    w = orgs
    in_time = await w.generate(ADMIN_A, A1)
    too_late = await w.generate(ADMIN_A, A2)
    w.clock.advance(seconds=TTL)
    assert await w.sweep() == 2
    # A1 was redeemed a second before its expiry; A2's redemption claims a time after it.
    await w.apply(
        authorised(A1, in_time.token_id, "cred-a1", in_time.expires_at - timedelta(seconds=1)),
        authorised(A2, too_late.token_id, "cred-a2", too_late.expires_at + timedelta(seconds=1)),
    )
    assert w.stored_status(in_time.token_id) == "redeemed"
    assert w.stored_status(too_late.token_id) == "expired"
    assert (await w.authorisation(ADMIN_A, A1)).credential_id == "cred-a1"


async def test_a_redemption_naming_another_scanners_token_leaves_that_token_alone(
    orgs: World,
) -> None:
    w = orgs
    a2_token = await w.generate(ADMIN_A, A2)
    await w.apply(authorised(A1, a2_token.token_id, "cred-1", w.clock()))
    assert w.stored_status(a2_token.token_id) == "active"
    assert (await w.authorisation(ADMIN_A, A1)).status == "authorised"


async def test_an_authorisation_after_removal_is_withdrawn_at_once(orgs: World) -> None:
    w = orgs
    token = await w.generate(ADMIN_A, A1)
    await w.apply(ScannerRemoved(scanner_id=A1))
    w.clock.advance(seconds=5)
    await w.apply(authorised(A1, token.token_id, "cred-late", w.clock() - timedelta(seconds=10)))
    assert w.store.data(ScannerDeauthorised) == [
        ScannerDeauthorised(
            scanner_id=A1,
            org_id="org-a",
            credential_id="cred-late",
            deauthorised_by="directory",
            reason="scanner_removed",
            deauthorised_at=w.clock(),
        )
    ]
    scanner = w.store.scanners[A1]
    assert not scanner.authorised and scanner.deauthorised_at == w.clock()


async def test_stale_and_superseded_authorisations_change_nothing(orgs: World) -> None:
    w = orgs
    t0 = w.clock()
    await w.apply(authorised(A1, "t-x", "cred-1", t0))
    await w.apply(authorised(A1, "t-y", "cred-0", t0 - timedelta(minutes=1)))  # older
    assert (await w.authorisation(ADMIN_A, A1)).credential_id == "cred-1"
    w.clock.advance(minutes=1)
    await w.deauthorise(ADMIN_A, A1)
    await w.apply(authorised(A1, "t-z", "cred-2", w.clock()))  # at the deauthorisation: stale
    assert await w.authorisation(ADMIN_A, A1) == UNAUTHORISED
    await w.apply(authorised(A1, "t-w", "cred-3", w.clock() + timedelta(seconds=1)))
    assert (await w.authorisation(ADMIN_A, A1)).credential_id == "cred-3"


async def test_rotations_follow_the_credential_unless_deauthorised(orgs: World) -> None:
    w = orgs
    t0 = w.clock()
    await w.apply(rotated(A1, "cred-r", t0))  # not authorised: ignored
    assert await w.authorisation(ADMIN_A, A1) == UNAUTHORISED
    await w.apply(authorised(A1, "t-1", "cred-1", t0), rotated(A1, "cred-2", t0))
    assert (await w.authorisation(ADMIN_A, A1)).credential_id == "cred-2"

    w.clock.advance(minutes=1)
    await w.deauthorise(ADMIN_A, A1)
    await w.apply(rotated(A1, "cred-3", w.clock() - timedelta(seconds=1)))  # after: ignored
    assert await w.authorisation(ADMIN_A, A1) == UNAUTHORISED
    await w.apply(rotated("sc-unknown", "cred-4", w.clock()))  # unknown scanner: nothing
    assert "sc-unknown" not in w.store.scanners


async def test_a_scanner_authorised_before_its_registration_shows_once_registered() -> None:
    w = World()
    await w.apply(authorised("sc-new", "t-new", "cred-new", w.clock()))
    await w.authenticated(ADMIN_A)
    assert await w.list_for(ADMIN_A) == []
    with pytest.raises(domain.ScannerNotFound):
        await w.authorisation(ADMIN_A, "sc-new")
    await w.apply(ScannerRegistered(scanner_id="sc-new", org_id="org-a", serial_number="S-1"))
    shown = await w.authorisation(ADMIN_A, "sc-new")
    assert (shown.status, shown.credential_id) == ("authorised", "cred-new")


# ------------------------------------------------------------------------------------ deauthorise


async def test_deauthorise_always_emits_and_fails_closed(orgs: World) -> None:
    w = orgs
    await w.deauthorise(ADMIN_A, A2)  # never authorised as far as we know: emitted anyway
    await w.apply(authorised(A1, "t-1", "cred-1", w.clock() - timedelta(seconds=1)))
    await w.deauthorise(SUPPORT, A1)
    await w.deauthorise(SUPPORT, A1)  # again: still emitted, no credential known any more
    assert [(d.scanner_id, d.credential_id, d.deauthorised_by, d.reason) for d in w.store.data(
        ScannerDeauthorised
    )] == [
        (A2, None, ADMIN_A.sub, "deauthorised"),
        (A1, "cred-1", SUPPORT.sub, "deauthorised"),
        (A1, None, SUPPORT.sub, "deauthorised"),
    ]  # fmt: skip
    assert await w.authorisation(USER_A, A1) == UNAUTHORISED
    assert [(e.action, e.actor_user_id, e.scanner_id) for e in w.store.audit_log] == [
        ("deauthorised", ADMIN_A.sub, A2),
        ("deauthorised", SUPPORT.sub, A1),
        ("deauthorised", SUPPORT.sub, A1),
    ]


async def test_deauthorising_leaves_the_token_alone(orgs: World) -> None:
    w = orgs
    token = await w.generate(ADMIN_A, A1)
    await w.deauthorise(ADMIN_A, A1)
    assert w.stored_status(token.token_id) == "active"
