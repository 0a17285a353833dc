"""Generating, superseding, revoking and showing tokens, in memory: the events each use case
publishes, the state it leaves, what it audits."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from memory_world import TTL, World
from token_issuer_support import A1, A2, ADMIN_A, CODE_SHAPE, SUPPORT, USER_A

from scanner_auth_shared import crypto
from scanner_auth_shared.crypto import stored_code_context
from scanner_auth_shared.events import TokenExpired, TokenIssued, TokenRevoked
from token_issuer import domain
from token_issuer.domain import AuditEntry

pytestmark = pytest.mark.unit


async def test_generate_issues_an_active_token_with_its_code(orgs: World) -> None:
    w = orgs
    view = await w.generate(ADMIN_A, A1)
    assert view.code is not None and CODE_SHAPE.match(view.code)
    assert (view.scanner_id, view.status, view.issued_by) == (A1, "active", ADMIN_A.sub)
    assert (view.issued_at, view.expires_at) == (w.clock.now, w.clock.now + timedelta(seconds=TTL))
    assert view.redeemed_at is None

    (issued,) = w.store.data(TokenIssued)
    assert issued == TokenIssued(
        token_id=view.token_id, scanner_id=A1, org_id="org-a", issued_by=ADMIN_A.sub,
        issued_at=view.issued_at, expires_at=view.expires_at,
        code_digest=w.ctx.keys.digest(view.code),
    )  # fmt: skip
    assert w.store.events(TokenIssued)[0].subject == A1
    stored = w.store.tokens[view.token_id].token
    assert stored.code_digest == crypto.code_digest(
        w.ctx.keys.pepper, crypto.normalise_code(view.code)
    )
    assert stored.code_ciphertext is not None and view.code.encode() not in stored.code_ciphertext
    opened = w.ctx.keys.at_rest.open_bytes(
        stored.code_ciphertext, stored_code_context(view.token_id)
    )
    assert opened == view.code
    assert w.store.audit_log == [
        AuditEntry(w.clock.now, ADMIN_A.sub, "org-a", "generated", A1, view.token_id)
    ]


async def test_generating_again_supersedes_the_active_token(orgs: World) -> None:
    w = orgs
    first = await w.generate(ADMIN_A, A1)
    w.clock.advance(minutes=1)
    second = await w.generate(SUPPORT, A1)
    assert first.code != second.code
    assert [t for t, _ in w.published()] == ["TokenIssued", "TokenRevoked", "TokenIssued"]
    revoked = w.store.data(TokenRevoked)[0]
    assert revoked == TokenRevoked(
        token_id=first.token_id, scanner_id=A1, org_id="org-a", revoked_by=SUPPORT.sub,
        reason="superseded", revoked_at=w.clock.now,
    )  # fmt: skip
    assert w.stored_status(first.token_id) == "revoked"
    assert w.store.tokens[first.token_id].token.code_ciphertext is None  # erased
    assert w.store.tokens[first.token_id].revoke_reason == "superseded"
    assert (await w.latest(USER_A, A1)).token_id == second.token_id


async def test_superseding_a_token_past_its_expiry_expires_it(orgs: World) -> None:
    w = orgs
    first = await w.generate(ADMIN_A, A1)
    w.clock.advance(seconds=TTL)
    await w.generate(ADMIN_A, A1)
    assert [t for t, _ in w.published()][-3:] == ["TokenIssued", "TokenExpired", "TokenIssued"]
    assert w.store.data(TokenExpired) == [
        TokenExpired(
            token_id=first.token_id, scanner_id=A1, org_id="org-a", expired_at=first.expires_at
        )
    ]
    assert w.stored_status(first.token_id) == "expired"
    assert w.store.data(TokenRevoked) == []


async def test_revoking_is_idempotent(orgs: World) -> None:
    w = orgs
    token = await w.generate(ADMIN_A, A1)
    await w.revoke(ADMIN_A, A1)
    after_first = len(w.store.published)
    await w.revoke(SUPPORT, A1)  # nothing active any more: no event, no audit row
    await w.revoke(ADMIN_A, A2)  # never had a token
    assert len(w.store.published) == after_first
    (revoked,) = w.store.data(TokenRevoked)
    assert (revoked.token_id, revoked.reason, revoked.revoked_by) == (
        token.token_id, "revoked", ADMIN_A.sub,
    )  # fmt: skip
    assert [e.action for e in w.store.audit_log] == ["generated", "revoked"]
    shown = await w.latest(USER_A, A1)
    assert (shown.status, shown.code) == ("revoked", None)


async def test_the_latest_token_shows_its_code_only_while_active(orgs: World) -> None:
    w = orgs
    with pytest.raises(domain.TokenNotFound):
        await w.latest(USER_A, A1)  # none was ever issued
    token = await w.generate(ADMIN_A, A1)
    shown = await w.latest(USER_A, A1)
    assert shown == token
    assert w.store.audit_log[-1] == AuditEntry(
        w.clock.now, USER_A.sub, "org-a", "viewed_code", A1, token.token_id
    )

    w.clock.advance(seconds=TTL)  # past its expiry, before the sweeper ran
    expired = await w.latest(USER_A, A1)
    assert (expired.status, expired.code, expired.token_id) == ("expired", None, token.token_id)
    assert w.stored_status(token.token_id) == "active"
    assert [e.action for e in w.store.audit_log] == ["generated", "viewed_code"]  # not again
    listed = {s.scanner_id: s for s in await w.list_for(USER_A)}
    assert listed[A1].token_status == "expired"


async def test_fifty_concurrent_generates_leave_one_active_token_and_ordered_events(
    orgs: World,
) -> None:
    w = orgs
    before = len(w.store.published)
    views = await asyncio.gather(*(w.generate(ADMIN_A, A1) for _ in range(50)))
    assert len({v.token_id for v in views}) == 50 and len({v.code for v in views}) == 50
    active = [r.token for r in w.store.tokens.values() if r.token.status == "active"]
    assert len(active) == 1
    events = w.store.events()[before:]
    assert [e.type for e in events] == ["TokenIssued", *["TokenRevoked", "TokenIssued"] * 49]
    for previous, revoked in zip(events[::2], events[1::2], strict=False):
        assert revoked.data["token_id"] == previous.data["token_id"]
    assert events[-1].data["token_id"] == active[0].token_id
