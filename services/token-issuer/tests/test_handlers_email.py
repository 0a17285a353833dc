"""Emailing a code, in memory: who may send it to whom, the sealed code in TokenEmailRequested,
the audit row; and the list of people who can view a scanner."""

from __future__ import annotations

import dataclasses

import pytest
from memory_world import TTL, World
from token_issuer_support import (
    A1,
    A2,
    ADMIN_A,
    ADMIN_B,
    CROSS_B,
    PLAIN_A,
    SCANNERS,
    SUPPORT,
    USER_A,
    Who,
)

from scanner_auth_shared.crypto import SealBroken, sealed_code_context
from scanner_auth_shared.events import (
    NOTIFICATIONS_TOPIC,
    ScannerAccessGranted,
    TokenEmailRequested,
    UserUpserted,
)
from token_issuer import domain
from token_issuer.domain import AuditEntry, Viewer

pytestmark = pytest.mark.unit

# An admin of organisation A the directory does not know: known from their JWTs only.
SECOND_ADMIN_A = Who("u-admin-a2", "org-a", ("admin",), "second.admin@a.example")
NO_MAIL_A = Who("u-no-mail", "org-a", ("admin",), None)  # seen, no address anywhere


@pytest.fixture
async def emailing(orgs: World) -> World:
    await orgs.authenticated(ADMIN_A, SECOND_ADMIN_A, ADMIN_B, NO_MAIL_A)
    return orgs


async def test_the_request_carries_the_code_sealed_for_the_notifier(emailing: World) -> None:
    w = emailing
    token = await w.generate(ADMIN_A, A1)
    notification_id = await w.email(ADMIN_A, A1, USER_A.sub)

    (requested,) = w.store.data(TokenEmailRequested)
    assert w.store.published[-1].topic == NOTIFICATIONS_TOPIC
    assert w.store.events()[-1].subject == A1
    sealed = requested.sealed_code
    assert token.code is not None and token.code not in sealed
    assert w.ctx.keys.for_notifier.open(sealed, sealed_code_context(token.token_id)) == token.code
    with pytest.raises(SealBroken):
        w.ctx.keys.for_notifier.open(sealed, sealed_code_context("another-token"))
    assert requested.model_dump(exclude={"sealed_code"}) == {
        "notification_id": notification_id, "token_id": token.token_id, "scanner_id": A1,
        "org_id": "org-a", "recipient_user_id": USER_A.sub, "recipient_email": USER_A.email,
        "requested_by": ADMIN_A.sub, "expires_at": token.expires_at,
        "scanner_name": SCANNERS[A1].name, "serial_number": SCANNERS[A1].serial_number,
    }  # fmt: skip
    assert w.store.audit_log[-1] == AuditEntry(
        w.clock.now, ADMIN_A.sub, "org-a", "emailed", A1, token.token_id, USER_A.sub,
        notification_id,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("sender", "recipient", "address"),
    [
        (ADMIN_A, USER_A.sub, USER_A.email),  # a manager, to a granted viewer
        (
            ADMIN_A,
            SECOND_ADMIN_A.sub,
            SECOND_ADMIN_A.email,
        ),  # to an admin seen, not in the directory
        (SUPPORT, ADMIN_A.sub, ADMIN_A.email),  # support, to an admin of the scanner's organisation
        (USER_A, None, USER_A.email),  # a viewer, to oneself: the directory's address
        (USER_A, USER_A.sub, USER_A.email),  # the same, named
        (SUPPORT, None, SUPPORT.email),  # oneself, unknown to the directory: the JWT's address
    ],
)
async def test_who_may_receive_the_code(
    emailing: World, sender: Who, recipient: str | None, address: str
) -> None:
    await emailing.generate(ADMIN_A, A1)
    await emailing.email(sender, A1, recipient)
    (requested,) = emailing.store.data(TokenEmailRequested)
    assert (requested.recipient_user_id, requested.recipient_email) == (
        recipient or sender.sub, address,
    )  # fmt: skip
    assert requested.requested_by == sender.sub


@pytest.mark.parametrize(
    ("sender", "recipient", "refusal"),
    [
        (ADMIN_A, PLAIN_A.sub, domain.RecipientRefused),  # cannot view
        (ADMIN_A, CROSS_B.sub, domain.RecipientRefused),  # a grant across organisations
        (ADMIN_A, ADMIN_B.sub, domain.RecipientRefused),  # an admin of the other organisation
        (ADMIN_A, "u-nobody", domain.RecipientRefused),  # unknown
        (ADMIN_A, NO_MAIL_A.sub, domain.RecipientRefused),  # can view, no address known
        (USER_A, ADMIN_A.sub, domain.ManageForbidden),  # a viewer sends only to themselves
        (PLAIN_A, None, domain.ScannerNotFound),  # cannot view the scanner at all
    ],
)
async def test_who_may_not(
    emailing: World, sender: Who, recipient: str | None, refusal: type[Exception]
) -> None:
    await emailing.generate(ADMIN_A, A1)
    with pytest.raises(refusal):
        await emailing.email(sender, A1, recipient)
    assert emailing.store.data(TokenEmailRequested) == []
    assert [e.action for e in emailing.store.audit_log] == ["generated"]


async def test_a_caller_without_any_address_is_refused(emailing: World) -> None:
    await emailing.generate(ADMIN_A, A1)
    with pytest.raises(domain.RecipientRefused, match="no email address"):
        await emailing.email(NO_MAIL_A, A1)


async def test_no_active_token_no_email(emailing: World) -> None:
    w = emailing
    with pytest.raises(domain.NoActiveToken):
        await w.email(USER_A, A1)  # none ever issued
    await w.generate(ADMIN_A, A1)
    await w.revoke(ADMIN_A, A1)
    with pytest.raises(domain.NoActiveToken):
        await w.email(USER_A, A1)  # revoked
    await w.generate(ADMIN_A, A1)
    w.clock.advance(seconds=TTL)
    with pytest.raises(domain.NoActiveToken):
        await w.email(USER_A, A1)  # past its expiry, before the sweeper ran
    assert w.store.data(TokenEmailRequested) == []


async def test_who_can_view_a_scanner(emailing: World) -> None:
    w = emailing
    assert await w.viewers(ADMIN_A, A1) == [
        Viewer(ADMIN_A.sub, "Ada Admin", ADMIN_A.email or ""),
        Viewer(SECOND_ADMIN_A.sub, SECOND_ADMIN_A.email or "", SECOND_ADMIN_A.email or ""),
        Viewer(USER_A.sub, "Uma User", USER_A.email or ""),
    ]  # not the user without a grant, the cross-org grantee, support, org B, the address-less
    assert await w.viewers(SUPPORT, A2) == [
        Viewer(ADMIN_A.sub, "Ada Admin", ADMIN_A.email or ""),
        Viewer(SECOND_ADMIN_A.sub, SECOND_ADMIN_A.email or "", SECOND_ADMIN_A.email or ""),
    ]
    # The directory's address and name win over the JWT's once it knows the user.
    await w.apply(UserUpserted(user_id=SECOND_ADMIN_A.sub, org_id="org-a",
                               email="named@a.example", display_name="Sam Second"))  # fmt: skip
    assert Viewer(SECOND_ADMIN_A.sub, "Sam Second", "named@a.example") in await w.viewers(
        ADMIN_A, A1
    )


# ------------------------------------------------------------------------------ issue 18: limits


async def test_one_code_is_emailed_at_most_per_code_times_an_hour(emailing: World) -> None:
    w = emailing
    await w.generate(ADMIN_A, A1)
    per_code = w.ctx.email_quota.per_code
    for _ in range(per_code):
        await w.email(ADMIN_A, A1, USER_A.sub)
        w.clock.advance(minutes=1)
    with pytest.raises(domain.EmailRateLimited) as refused:
        await w.email(USER_A, A1)  # another recipient, the same code
    # The first request leaves the hour in 60 - per_code minutes: a slot frees then.
    assert refused.value.retry_after_seconds == (60 - per_code) * 60
    assert refused.value.headers == {"Retry-After": str((60 - per_code) * 60)}
    assert len(w.store.data(TokenEmailRequested)) == per_code  # nothing for the refused one
    w.clock.advance(seconds=refused.value.retry_after_seconds)
    await w.email(USER_A, A1)  # a slot is free
    with pytest.raises(domain.EmailRateLimited) as again:
        await w.email(USER_A, A1)
    assert again.value.retry_after_seconds == 60  # the second request leaves a minute later
    await w.generate(ADMIN_A, A1)  # a new code has a quota of its own
    await w.email(USER_A, A1)


async def test_one_address_gets_at_most_per_recipient_codes_an_hour(emailing: World) -> None:
    w = emailing
    w.ctx = dataclasses.replace(w.ctx, email_quota=domain.EmailQuota(per_code=2, per_recipient=3))
    sent = 0
    while sent < 3:  # a new code whenever the code's quota is used, always to USER_A
        await w.generate(ADMIN_A, A1)
        for _ in range(min(2, 3 - sent)):
            await w.email(ADMIN_A, A1, USER_A.sub)
            sent += 1
    await w.generate(ADMIN_A, A1)
    with pytest.raises(domain.EmailRateLimited) as refused:
        await w.email(ADMIN_A, A1, USER_A.sub)
    assert refused.value.retry_after_seconds == 3600
    assert "recipient" in str(refused.value)
    # The same address written another way is the same mailbox.
    await w.apply(UserUpserted(user_id="u-alias", org_id="org-a", email="User.A@A.example"))
    await w.apply(ScannerAccessGranted(scanner_id=A1, user_id="u-alias"))
    with pytest.raises(domain.EmailRateLimited):
        await w.email(ADMIN_A, A1, "u-alias")
    await w.email(ADMIN_A, A1, ADMIN_A.sub)  # someone else still gets it


async def test_an_admin_seen_only_in_a_jwt_stops_being_a_recipient(emailing: World) -> None:
    """SECOND_ADMIN_A is known as an admin only from their JWTs (not in the directory)."""
    w = emailing
    ttl = w.ctx.admin_flag_ttl
    await w.generate(ADMIN_A, A1)
    await w.email(ADMIN_A, A1, SECOND_ADMIN_A.sub)
    assert SECOND_ADMIN_A.sub in {v.user_id for v in await w.viewers(ADMIN_A, A1)}

    w.clock.advance(seconds=ttl.total_seconds() + 1)
    await w.authenticated(ADMIN_A)  # the sender signs in again; the other admin does not
    with pytest.raises(domain.RecipientRefused):
        await w.email(ADMIN_A, A1, SECOND_ADMIN_A.sub)
    assert SECOND_ADMIN_A.sub not in {v.user_id for v in await w.viewers(ADMIN_A, A1)}
    # A directory event says nothing of roles: it does not bring the flag back.
    await w.apply(UserUpserted(user_id=SECOND_ADMIN_A.sub, org_id="org-a", email="s@a.example"))
    with pytest.raises(domain.RecipientRefused):
        await w.email(ADMIN_A, A1, SECOND_ADMIN_A.sub)
    # A newer sign-in as admin does.
    await w.authenticated(SECOND_ADMIN_A)
    await w.email(ADMIN_A, A1, SECOND_ADMIN_A.sub)
