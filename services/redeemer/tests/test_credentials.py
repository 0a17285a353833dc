"""Credentials after redemption: rotation with a grace period, replacement by a new redemption,
revocation by ScannerDeauthorised. Real PostgreSQL, the real broker, the service in-process."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from datetime import UTC, datetime, timedelta

import pytest

from scanner_auth_shared.crypto import CREDENTIAL_PREFIX

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


async def test_scanner_deauthorised_revokes_every_credential_issued_up_to_then(start: Start):
    async with start() as h:
        await h.register("sc-1", "LVS-0001")
        await h.register("sc-2", "LVS-0002")
        c1 = (await _authorised(h))["credential"]
        c2 = (await h.rotate(c1)).json()["credential"]  # c1 in grace, c2 current
        other = (await _authorised(h, "sc-2", "LVS-0002"))["credential"]

        await h.deauthorise("sc-1")
        assert await eventually(lambda: _ended(h, c1, c2))
        assert (await h.rotate(c2)).status_code == 403
        assert await h.standing(other) == "current"  # another scanner

        # A credential issued after the deauthorisation is not touched by it, even when the
        # event comes again (redelivered) or late.
        c3 = (await _authorised(h))["credential"]
        late = await h.deauthorise("sc-1", at=datetime.now(UTC) - timedelta(seconds=30))
        await h.wait_processed(late)
        assert await h.standing(c3) == "current"


async def _ended(h: Harness, *credentials: str) -> bool:
    return all([await h.standing(c) == "ended" for c in credentials])


async def test_deauthorisation_names_a_credential_or_runs_ahead_of_our_clock(start: Start):
    async with start() as h:
        await h.register("sc-1", "LVS-0001")
        first = await _authorised(h)
        # The token-issuer's clock is behind ours, but it names the credential: revoked anyway.
        await h.deauthorise(
            "sc-1",
            at=datetime.now(UTC) - timedelta(minutes=5),
            credential_id=first["credential_id"],
        )
        assert await eventually(lambda: _ended(h, first["credential"]))

        # The token-issuer's clock runs ahead of ours: a credential issued after the
        # deauthorisation was applied must still be born alive (stamped after it).
        ahead = datetime.now(UTC) + timedelta(minutes=1)
        await h.deauthorise("sc-1", at=ahead)
        assert await eventually(
            lambda: h.scalar(
                "SELECT deauthorised_at = $1 FROM scanner_credential_state "
                "WHERE scanner_id = 'sc-1'",
                ahead,
            )
        )
        second = await _authorised(h)
        assert datetime.fromisoformat(second["authorised_at"]) > ahead
        assert await h.standing(second["credential"]) == "current"
        event = next(
            e
            for e in await h.wait_events("ScannerAuthorised", 2)
            if e.data["credential_id"] == second["credential_id"]
        )
        assert datetime.fromisoformat(event.data["authorised_at"]) > ahead
