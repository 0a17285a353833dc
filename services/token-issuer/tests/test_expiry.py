"""Expiry: a token past its time reads expired at once; the sweeper records it and emits
exactly one TokenExpired per token, also with two replicas sweeping the same database."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from token_issuer_support import (
    A1,
    ADMIN_A,
    SUPPORT,
    USER_A,
    Harness,
    directory_of_two_orgs,
    eventually,
)

from scanner_auth_shared.events import PUBLIC_TOPIC, ScannerRegistered
from scanner_auth_shared.testing.kafka import events_on, wait_for_events

pytestmark = pytest.mark.integration


async def test_an_expired_token_reads_expired_before_the_sweeper_ran(make_service: Any) -> None:
    h: Harness = await make_service(token_ttl_seconds=1, expiry_sweep_interval_seconds=3600)
    await h.directory(*directory_of_two_orgs())
    path = f"/v1/scanners/{A1}/authorisation-token"
    token = await h.generate(ADMIN_A, A1)

    async def expired() -> Any:
        body = (await h.call(USER_A, "GET", path)).json()
        return body if body["status"] == "expired" else None

    body = await eventually(expired, timeout=10)
    assert body["code"] is None and body["token_id"] == token["token_id"]
    stored = await h.fetch("SELECT status, code_ciphertext FROM tokens")
    assert [r["status"] for r in stored] == ["active"]  # the sweeper has not run
    listed = (await h.call(USER_A, "GET", "/v1/scanners")).json()
    assert listed[0]["token_status"] == "expired"
    email = await h.call(USER_A, "POST", f"{path}/email")
    assert email.status_code == 409 and email.headers["content-type"] == "application/problem+json"

    # Generating again ends the dead token as expired, not as superseded.
    again = await h.generate(SUPPORT, A1)
    rows = {r["token_id"]: r["status"] for r in await h.fetch("SELECT * FROM tokens")}
    assert rows == {token["token_id"]: "expired", again["token_id"]: "active"}
    await wait_for_events(h.bootstrap, PUBLIC_TOPIC, "TokenExpired")
    assert not [e for e in await events_on(h.bootstrap, PUBLIC_TOPIC, "TokenRevoked")]


async def test_two_replicas_sweep_each_token_exactly_once(make_service: Any) -> None:
    settings: dict[str, Any] = {"token_ttl_seconds": 2, "expiry_sweep_interval_seconds": 0.05}
    # Two replicas on one database, started together (one consumer-group rebalance).
    first, second = await asyncio.gather(make_service(**settings), make_service(**settings))
    extra = [
        ScannerRegistered(
            scanner_id=f"sc-x{i}",
            org_id="org-a",
            serial_number=f"X-{i}",
            name=f"Extra {i}",
            model="LVS",
        )
        for i in range(12)
    ]
    await first.directory(*directory_of_two_orgs(), *extra)

    scanners = [A1, *(e.scanner_id for e in extra)]
    tokens = await asyncio.gather(*(first.generate(ADMIN_A, s) for s in scanners))
    ids = {t["token_id"] for t in tokens}

    await wait_for_events(first.bootstrap, PUBLIC_TOPIC, "TokenExpired", count=len(ids), timeout=30)

    async def all_expired() -> bool:
        rows = await first.fetch("SELECT count(*) AS n FROM tokens WHERE status = 'active'")
        return bool(rows[0]["n"] == 0)

    # Once no token is active, no sweeper can write another TokenExpired (the UPDATE only
    # expires an active token); once the outbox is empty, all that was written is on the topic.
    await eventually(all_expired, 30)
    await first.drained()
    expired = await events_on(first.bootstrap, PUBLIC_TOPIC, "TokenExpired")
    assert Counter(e.data["token_id"] for e in expired) == Counter(ids)
    by_id = {t["token_id"]: t for t in tokens}
    for event in expired:
        token = by_id[event.data["token_id"]]
        assert event.data == {
            "token_id": token["token_id"],
            "scanner_id": token["scanner_id"],
            "org_id": "org-a",
            "expired_at": token["expires_at"],
        }
    rows = await first.fetch("SELECT status, code_ciphertext, expired_at FROM tokens")
    assert {r["status"] for r in rows} == {"expired"}
    assert all(r["code_ciphertext"] is None and r["expired_at"] is not None for r in rows)
    shown = (await second.call(ADMIN_A, "GET", f"/v1/scanners/{A1}/authorisation-token")).json()
    assert shown["status"] == "expired" and shown["code"] is None
