"""Generating, superseding, revoking and reading tokens; one active token per scanner, also
under 50 concurrent generate requests."""

from __future__ import annotations

import asyncio
import base64

import asyncpg
import pytest
from token_issuer_support import A1, A2, ADMIN_A, CODE_SHAPE, SUPPORT, USER_A, Harness

from scanner_auth_shared import crypto
from scanner_auth_shared.crypto import SecretBox, stored_code_context
from scanner_auth_shared.events import PUBLIC_TOPIC
from scanner_auth_shared.testing.kafka import events_on, wait_for_events

pytestmark = pytest.mark.integration


def digest(h: Harness, code: str) -> str:
    pepper = h.settings.token_pepper.get_secret_value().encode()
    return crypto.code_digest(pepper, crypto.normalise_code(code))


async def test_generate_supersede_revoke_and_read(two_orgs: Harness) -> None:
    h = two_orgs
    path = f"/v1/scanners/{A1}/authorisation-token"
    assert (await h.call(ADMIN_A, "GET", path)).status_code == 404  # none ever issued

    first = await h.generate(ADMIN_A, A1)
    assert set(first) == {
        "token_id",
        "scanner_id",
        "code",
        "status",
        "issued_at",
        "issued_by",
        "expires_at",
        "redeemed_at",
    }
    assert CODE_SHAPE.match(first["code"])
    flat = first["code"].replace("-", "")
    assert crypto.luhn32_check_symbol(flat[:11]) == flat[11]
    assert first["status"] == "active" and first["issued_by"] == ADMIN_A.sub
    assert first["redeemed_at"] is None and first["scanner_id"] == A1

    second = await h.generate(SUPPORT, A1)
    assert second["code"] != first["code"]
    shown = await h.call(USER_A, "GET", path)
    assert shown.status_code == 200 and shown.headers["cache-control"] == "no-store"
    assert shown.json() == second

    rows = {r["token_id"]: r for r in await h.fetch("SELECT * FROM tokens")}
    assert rows[first["token_id"]]["status"] == "revoked"
    assert rows[first["token_id"]]["revoke_reason"] == "superseded"
    assert rows[first["token_id"]]["revoked_by"] == SUPPORT.sub
    assert rows[first["token_id"]]["code_ciphertext"] is None  # erased once not active
    assert rows[second["token_id"]]["status"] == "active"
    # At rest: encrypted under CODE_ENCRYPTION_KEY, bound to the token id, plus the digest.
    box = SecretBox(base64.b64decode(h.settings.code_encryption_key.get_secret_value()))
    stored = bytes(rows[second["token_id"]]["code_ciphertext"])
    assert box.open_bytes(stored, stored_code_context(second["token_id"])) == second["code"]
    with pytest.raises(crypto.SealBroken):
        box.open_bytes(stored, stored_code_context(first["token_id"]))
    assert rows[second["token_id"]]["code_digest"] == digest(h, second["code"])

    assert (await h.call(USER_A, "DELETE", path)).status_code == 403
    assert (await h.call(ADMIN_A, "DELETE", path)).status_code == 204
    revoked = (await h.call(USER_A, "GET", path)).json()
    assert revoked["token_id"] == second["token_id"]
    assert revoked["status"] == "revoked" and revoked["code"] is None
    assert (await h.call(ADMIN_A, "DELETE", path)).status_code == 204  # idempotent, no event

    await h.drained()  # the idempotent DELETE wrote nothing: nothing more can come
    events = [
        e
        for e in await events_on(h.bootstrap, PUBLIC_TOPIC)
        if e.type in ("TokenIssued", "TokenRevoked")
    ]
    assert [
        (e.type, e.data["token_id"], e.data.get("reason"), e.data.get("revoked_by")) for e in events
    ] == [
        ("TokenIssued", first["token_id"], None, None),
        ("TokenRevoked", first["token_id"], "superseded", SUPPORT.sub),
        ("TokenIssued", second["token_id"], None, None),
        ("TokenRevoked", second["token_id"], "revoked", ADMIN_A.sub),
    ]
    issued = events[2]
    assert issued.source == "scanner-auth/token-issuer" and issued.subject == A1
    assert issued.data == {
        "token_id": second["token_id"],
        "scanner_id": A1,
        "org_id": "org-a",
        "issued_by": SUPPORT.sub,
        "issued_at": second["issued_at"],
        "expires_at": second["expires_at"],
        "code_digest": digest(h, second["code"]),
    }
    assert (
        await h.call(ADMIN_A, "GET", f"/v1/scanners/{A2}/authorisation-token")
    ).status_code == 404


async def test_fifty_concurrent_generates_leave_exactly_one_active_token(two_orgs: Harness) -> None:
    h = two_orgs
    path = f"/v1/scanners/{A1}/authorisation-token"
    responses = await asyncio.gather(*(h.call(ADMIN_A, "POST", path) for _ in range(50)))
    assert [r.status_code for r in responses] == [201] * 50
    issued = {r.json()["token_id"]: r.json()["code"] for r in responses}
    assert len(issued) == 50 and len(set(issued.values())) == 50

    active = await h.fetch(
        "SELECT token_id FROM tokens WHERE scanner_id = $1 AND status = 'active'", A1
    )
    assert len(active) == 1
    latest = (await h.call(ADMIN_A, "GET", path)).json()
    assert latest["token_id"] == active[0]["token_id"]
    assert latest["code"] == issued[latest["token_id"]]
    counts = await h.fetch("SELECT status, count(*) AS n FROM tokens GROUP BY status")
    assert {r["status"]: r["n"] for r in counts} == {"active": 1, "revoked": 49}

    # The database itself refuses a second active token.
    with pytest.raises(asyncpg.UniqueViolationError):
        await h.fetch(
            "INSERT INTO tokens (token_id, scanner_id, org_id, code_ciphertext, code_digest,"
            " status, issued_at, issued_by, expires_at) VALUES ('x', $1, 'org-a', '\\x00', 'd',"
            " 'active', now(), 'u', now() + interval '1 day')",
            A1,
        )

    # Events: issued, superseded, issued, superseded, ... in commit order for the scanner.
    await wait_for_events(h.bootstrap, PUBLIC_TOPIC, "TokenIssued", count=50, timeout=30)
    await wait_for_events(h.bootstrap, PUBLIC_TOPIC, "TokenRevoked", count=49, timeout=30)
    events = [
        e
        for e in await events_on(h.bootstrap, PUBLIC_TOPIC)
        if e.type in ("TokenIssued", "TokenRevoked")
    ]
    assert len(events) == 99
    for n, event in enumerate(events):
        assert event.type == ("TokenIssued" if n % 2 == 0 else "TokenRevoked")
        if n % 2:
            assert event.data["token_id"] == events[n - 1].data["token_id"]
            assert event.data["reason"] == "superseded"
    assert events[-1].data["token_id"] == latest["token_id"]
