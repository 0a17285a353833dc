"""The redeemer's own views of tokens and scanners, built from events: idempotent, tolerant of
order. Real PostgreSQL, the real broker, the service in-process."""

from __future__ import annotations

import pytest

from redeemer.api import UNIFORM_REFUSAL
from scanner_auth_shared.events import PUBLIC_TOPIC

from .conftest import Start

pytestmark = pytest.mark.integration


async def test_a_revocation_that_overtakes_its_token_issued_keeps_the_token_revoked(start: Start):
    async with start() as h:
        await h.register("sc-1", "LVS-0001")
        issued, data = h.token_issued("sc-1")
        await h.revoke(issued)  # unknown token: recorded as revoked
        [first] = await h.publish(PUBLIC_TOPIC, data)
        await h.wait_processed(first)
        await h.publish(PUBLIC_TOPIC, first)  # redelivered
        await h.wait_token(issued.token_id, "revoked")
        assert (
            await h.scalar("SELECT code_digest FROM tokens WHERE token_id = $1", issued.token_id)
            == data.code_digest
        )
        answer = await h.redeem(issued.code, "LVS-0001")
        assert answer.status_code == 400 and answer.content == UNIFORM_REFUSAL
        [event] = await h.wait_events("AuthorisationRejected", 1)
        assert event.data["reason"] == "revoked"


async def test_token_endings_apply_to_active_tokens_only(start: Start):
    async with start() as h:
        await h.register("sc-1", "LVS-0001")
        expiring = await h.issue("sc-1")
        await h.expire(expiring)
        await h.wait_token(expiring.token_id, "expired")
        await h.revoke(expiring, wait=None)  # too late: it already ended

        used = await h.issue("sc-1")
        assert (await h.redeem(used.code, "LVS-0001")).status_code == 201
        await h.revoke(used, wait=None)
        await h.expire(used)

        marker = await h.issue("sc-1")  # consumed after everything above (one partition key)
        assert (
            await h.scalar("SELECT status FROM tokens WHERE token_id = $1", expiring.token_id)
            == "expired"
        )
        assert (
            await h.scalar("SELECT status FROM tokens WHERE token_id = $1", used.token_id)
            == "redeemed"
        )
        assert (await h.redeem(expiring.code, "LVS-0001")).status_code == 400
        assert (await h.redeem(marker.code, "LVS-0001")).status_code == 201
        reasons = sorted(e.data["reason"] for e in await h.wait_events("AuthorisationRejected", 1))
        assert reasons == ["expired"]


async def test_the_serial_number_view_follows_the_directory(start: Start):
    async with start() as h:
        await h.register("sc-1", "LVS-0001")
        await h.register("sc-1", "LVS-0001-B")  # the directory corrected the serial number
        first = await h.issue("sc-1")
        assert (await h.redeem(first.code, "LVS-0001")).status_code == 400
        assert (await h.redeem(first.code, "LVS-0001-B")).status_code == 201

        # Removed before (as far as we can tell) it was registered: it stays removed.
        await h.remove("sc-2")
        await h.wait_processed(await h.register("sc-2", "LVS-0002", wait=False))
        assert await h.scalar("SELECT removed FROM scanners WHERE scanner_id = 'sc-2'") is True
        second = await h.issue("sc-2")
        assert (await h.redeem(second.code, "LVS-0002")).status_code == 400
