"""Credentials after redemption: rotation with a grace period, replacement by a new redemption,
revocation by ScannerDeauthorised. Real PostgreSQL, the real broker, the service in-process."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from datetime import UTC, datetime, timedelta

import pytest

from scanner_auth_shared.crypto import CREDENTIAL_PREFIX
from scanner_auth_shared.events import PUBLIC_TOPIC

from .conftest import ORG, Harness, Start, eventually

pytestmark = pytest.mark.integration


async def _authorised(h: Harness, scanner_id: str = "sc-1", serial: str = "LVS-0001") -> dict:
    issued = await h.issue(scanner_id)
    answer = await h.redeem(issued.code, serial)
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def _digest(credential: str) -> str:
    return hashlib.sha256(credential.encode()).hexdigest()


async def test_rotation_gives_a_new_credential_and_the_old_one_works_until_its_grace_ends(
    start: Start,
):
    async with start(credential_rotation_grace_seconds=2) as h:
        await h.register("sc-1", "LVS-0001")
        first = await _authorised(h)
        c1 = first["credential"]
        assert await h.standing(c1) == "current"

        answer = await h.rotate(c1)
        assert answer.status_code == 201, answer.text
        assert answer.headers["cache-control"] == "no-store"
        body = answer.json()
        assert set(body) == {"credential_id", "credential", "previous_valid_until"}
        c2 = body["credential"]
        assert c2 != c1 and c2.startswith(CREDENTIAL_PREFIX)
        valid_until = datetime.fromisoformat(body["previous_valid_until"])
        assert timedelta(seconds=1) < valid_until - datetime.now(UTC) <= timedelta(seconds=2)

        # The new one works at once; the old one still works, but only until its grace ends.
        assert await h.standing(c2) == "current"
        assert await h.standing(c1) == "grace"
        assert (await h.rotate(c1)).status_code == 403  # a rotated-out credential cannot rotate

        [event] = await h.wait_events("CredentialRotated", 1)
        assert event.subject == "sc-1" and event.source == "scanner-auth/redeemer"
        assert event.data == {
            "scanner_id": "sc-1",
            "org_id": ORG,
            "credential_id": body["credential_id"],
            "credential_digest": _digest(c2),
            "previous_credential_id": first["credential_id"],
            "previous_valid_until": event.data["previous_valid_until"],
            "rotated_at": event.data["rotated_at"],
        }
        assert datetime.fromisoformat(event.data["previous_valid_until"]) == valid_until

        await asyncio.sleep(max(0.0, (valid_until - datetime.now(UTC)).total_seconds()) + 0.1)
        assert await h.standing(c1) == "ended"
        assert (await h.rotate(c1)).status_code == 403
        assert await h.standing(c2) == "current"

        # The new one rotates in turn.
        third = await h.rotate(c2)
        assert third.status_code == 201
        assert await h.standing(third.json()["credential"]) == "current"
        assert await h.standing(c2) == "grace"


async def test_rotation_refuses_what_it_did_not_issue(start: Start):
    async with start() as h:
        client = h.client()
        unknown = f"{CREDENTIAL_PREFIX}{secrets.token_urlsafe(32)}"
        for headers in (
            {},
            {"Authorization": "Bearer"},
            {"Authorization": "Basic abc"},
            {"Authorization": "Bearer not-a-credential"},
            {"Authorization": f"Bearer {unknown}"},
        ):
            answer = await client.post("/v1/credentials/rotate", headers=headers)
            assert answer.status_code == 401, headers
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.headers["www-authenticate"] == "Bearer"
            assert CREDENTIAL_PREFIX not in answer.text


async def test_a_new_redemption_replaces_every_earlier_credential(start: Start):
    async with start() as h:
        await h.register("sc-1", "LVS-0001")
        c1 = (await _authorised(h))["credential"]
        rotated = (await h.rotate(c1)).json()["credential"]  # c1 in grace, rotated current
        c3 = (await _authorised(h))["credential"]
        assert await h.standing(c1) == "ended"
        assert await h.standing(rotated) == "ended"
        assert await h.standing(c3) == "current"
        assert (await h.rotate(rotated)).status_code == 403
        assert (await h.rotate(c3)).status_code == 201
        statuses = sorted(r[0] for r in await h.query("SELECT status FROM credentials"))
        assert statuses == ["active", "replaced", "replaced", "rotating"]


async def test_scanner_deauthorised_revokes_every_live_credential_and_says_which(start: Start):
    async with start() as h:
        await h.register("sc-1", "LVS-0001")
        await h.register("sc-2", "LVS-0002")
        first = await _authorised(h)
        c1 = first["credential"]
        rotation = (await h.rotate(c1)).json()  # c1 in grace, c2 current
        c2 = rotation["credential"]
        other = (await _authorised(h, "sc-2", "LVS-0002"))["credential"]

        # The token-issuer's clock 10 minutes behind ours: still revoked (issue 18).
        deauthorised = await h.deauthorise("sc-1", at=datetime.now(UTC) - timedelta(minutes=10))
        assert await eventually(lambda: _ended(h, c1, c2))
        assert (await h.rotate(c2)).status_code == 403
        assert await h.standing(other) == "current"  # another scanner
        [revoked] = await h.wait_events("CredentialsRevoked", 1)
        assert revoked.source == "scanner-auth/redeemer" and revoked.subject == "sc-1"
        assert revoked.data["credential_ids"] == sorted(
            [first["credential_id"], rotation["credential_id"]]
        )
        assert revoked.data["cause_event_id"] == deauthorised.id
        assert revoked.data["reason"] == "deauthorised"

        # A credential issued after the deauthorisation was applied is born alive, stamped by
        # our clock, even when the token-issuer's clock runs ahead; a redelivery of the old
        # event has no second effect.
        c3 = await _authorised(h)
        assert abs(datetime.fromisoformat(c3["authorised_at"]) - datetime.now(UTC)) < timedelta(
            seconds=30
        )
        await h.publish(PUBLIC_TOPIC, deauthorised)
        await h.issue("sc-1")  # after the redelivery on the scanner's partition: applied
        assert await h.standing(c3["credential"]) == "current"
        ahead = await h.deauthorise("sc-2", at=datetime.now(UTC) + timedelta(minutes=10))
        await h.wait_processed(ahead)
        events = await h.wait_events("CredentialsRevoked", 2)
        assert len(events) == 2, "the redelivered ScannerDeauthorised had a second effect"
        assert events[1].data["credential_ids"] != []  # sc-2's, whatever the clock ahead


async def _ended(h: Harness, *credentials: str) -> bool:
    return all([await h.standing(c) == "ended" for c in credentials])


async def test_rotations_beyond_the_hourly_limit_are_refused_with_retry_after(start: Start):
    async with start(rotation_limit_per_hour=2) as h:
        await h.register("sc-1", "LVS-0001")
        current = (await _authorised(h))["credential"]
        for _ in range(2):
            answer = await h.rotate(current)
            assert answer.status_code == 201, answer.text
            current = answer.json()["credential"]
        refused = await h.rotate(current)
        assert refused.status_code == 429, refused.text
        assert refused.headers["content-type"] == "application/problem+json"
        assert 3590 <= int(refused.headers["retry-after"]) <= 3600
        assert refused.json()["status"] == 429
        assert current not in refused.text
        assert await h.standing(current) == "current"  # it keeps working
        rotations = await h.scalar(
            "SELECT count(*) FROM credentials WHERE previous_credential_id IS NOT NULL"
        )
        assert rotations == 2
