"""Brute force is stopped: per serial number (5 consecutive failures → 15 minutes) and per
client address (30 failures in an hour → an hour), with state in PostgreSQL. Real PostgreSQL,
the real broker, the service in-process."""

from __future__ import annotations

import asyncio

import pytest

from redeemer.api import UNIFORM_REFUSAL
from scanner_auth_shared.crypto import generate_code

from .conftest import CLIENT_IP, Start

pytestmark = pytest.mark.integration


def _metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_five_failures_lock_the_serial_even_for_the_right_code(start: Start):
    async with start() as h:
        await h.register("sc-1", "LVS-0001")
        issued = await h.issue("sc-1")
        client = h.client()
        before = _metric(
            (await client.get("/metrics")).text,
            "scanner_auth_redeemer_lockouts_total",
            scope="serial",
        )
        for _ in range(5):
            answer = await h.redeem(generate_code(), "LVS-0001", client)
            assert answer.status_code == 400 and answer.content == UNIFORM_REFUSAL

        locked = await h.redeem(issued.code, "LVS-0001", client)
        assert locked.status_code == 429
        assert locked.headers["content-type"] == "application/problem+json"
        assert 890 <= int(locked.headers["retry-after"]) <= 900
        # The same serial number in other clothes, and from another address, is locked too.
        elsewhere = h.client("198.51.100.1")
        assert (await h.redeem(issued.code, " lvs-0001", elsewhere)).status_code == 429
        # Another serial number is not.
        assert (await h.redeem(generate_code(), "LVS-0002", client)).status_code == 400

        metrics = (await client.get("/metrics")).text
        lockouts = _metric(metrics, "scanner_auth_redeemer_lockouts_total", scope="serial")
        assert lockouts == before + 1
        assert (
            _metric(metrics, "scanner_auth_redeemer_redemptions_total", outcome="rate_limited") >= 2
        )

        rejected = await h.wait_events("AuthorisationRejected", 8)
        reasons = [e.data["reason"] for e in rejected]
        assert reasons.count("invalid_code") == 6 and reasons.count("rate_limited") == 2
        limited = [e for e in rejected if e.data["reason"] == "rate_limited"]
        assert {e.subject for e in limited} == {"LVS-0001", "lvs-0001"}  # not looked up: serial
        assert await h.scalar("SELECT status FROM tokens") == "active"  # nothing was redeemed


async def test_typos_do_not_count_and_a_success_resets_the_count(start: Start):
    async with start() as h:
        await h.register("sc-1", "LVS-0001")
        first = await h.issue("sc-1")
        client = h.client()
        typo = first.code[:-1] + ("0" if first.code[-1] != "0" else "1")
        for _ in range(4):
            assert (await h.redeem(generate_code(), "LVS-0001", client)).status_code == 400
        for _ in range(3):
            assert (await h.redeem(typo, "LVS-0001", client)).status_code == 422
        # 4 failures + 3 typos: had typos counted, this would be 429.
        assert (await h.redeem(first.code, "LVS-0001", client)).status_code == 201

        # The success reset the serial's count: 4 more failures do not reach 5.
        for _ in range(4):
            assert (await h.redeem(generate_code(), "LVS-0001", client)).status_code == 400
        second = await h.issue("sc-1")
        assert (await h.redeem(second.code, "LVS-0001", client)).status_code == 201


async def test_thirty_failures_from_one_address_lock_it(start: Start):
    async with start() as h:
        await h.register("sc-1", "LVS-0001")
        issued = await h.issue("sc-1")
        client = h.client()
        for n in range(30):  # a different serial number each time: no serial lock
            answer = await h.redeem(generate_code(), f"GUESS-{n}", client)
            assert answer.status_code == 400, n
        locked = await h.redeem(issued.code, "LVS-0001", client)
        assert locked.status_code == 429
        assert 3590 <= int(locked.headers["retry-after"]) <= 3600
        # Another address is not locked, and the code is still good there.
        elsewhere = h.client("198.51.100.1")
        assert (await h.redeem(issued.code, "LVS-0001", elsewhere)).status_code == 201
        limited = [
            e
            for e in await h.wait_events("AuthorisationRejected", 31)
            if e.data["reason"] == "rate_limited"
        ]
        assert [e.data["client_ip"] for e in limited] == [CLIENT_IP]


async def test_parallel_guesses_get_no_more_tries_than_sequential_ones(start: Start):
    async with start() as h:
        await h.register("sc-1", "LVS-0001")
        client = h.client()
        answers = await asyncio.gather(
            *(h.redeem(generate_code(), "LVS-0001", client) for _ in range(20))
        )
        assert sorted(a.status_code for a in answers) == [400] * 5 + [429] * 15


async def test_locks_pass_and_the_address_window_slides(start: Start):
    async with start(
        serial_lockout_failures=2,
        serial_lockout_seconds=1,
        address_lockout_failures=3,
        address_window_seconds=2,
    ) as h:
        await h.register("sc-1", "LVS-0001")
        issued = await h.issue("sc-1")
        client, other = h.client(), h.client("198.51.100.1")
        # Serial: 2 failures lock it for 1 s; then the right code works.
        for _ in range(2):
            assert (await h.redeem(generate_code(), "LVS-0001", other)).status_code == 400
        assert (await h.redeem(issued.code, "LVS-0001", other)).status_code == 429
        await asyncio.sleep(1.1)
        assert (await h.redeem(issued.code, "LVS-0001", other)).status_code == 201

        # Address: failures older than the window no longer count.
        for n in range(2):
            assert (await h.redeem(generate_code(), f"A-{n}", client)).status_code == 400
        await asyncio.sleep(2.1)
        for n in range(2):
            assert (await h.redeem(generate_code(), f"B-{n}", client)).status_code == 400
        assert (await h.redeem(generate_code(), "C-0", client)).status_code == 400  # 3rd in window
        locked = await h.redeem(generate_code(), "C-1", client)
        assert locked.status_code == 429 and 1 <= int(locked.headers["retry-after"]) <= 2
        await asyncio.sleep(2.1)
        assert (await h.redeem(generate_code(), "C-2", client)).status_code == 400


async def test_trusted_proxies_are_believed_and_no_one_else(start: Start):
    async with start(trusted_proxies="10.0.0.0/8, 192.0.2.1", address_lockout_failures=2) as h:
        proxy, stranger = h.client("10.1.2.3"), h.client("203.0.113.9")
        # Behind the trusted proxy, the forwarded address is the client's.
        for n in range(2):
            answer = await h.redeem(
                generate_code(), f"P-{n}", proxy, **{"X-Forwarded-For": "198.51.100.7"}
            )
            assert answer.status_code == 400
        assert (
            await h.redeem(generate_code(), "P-2", proxy, **{"X-Forwarded-For": "198.51.100.7"})
        ).status_code == 429
        # Another client behind the same proxy is not locked.
        assert (
            await h.redeem(
                generate_code(), "P-3", proxy, **{"X-Forwarded-For": "198.51.100.8, 192.0.2.1"}
            )
        ).status_code == 400
        # An untrusted peer cannot choose its address: its header is ignored, both ways.
        assert (
            await h.redeem(generate_code(), "S-0", stranger, **{"X-Forwarded-For": "198.51.100.99"})
        ).status_code == 400
        assert (
            await h.redeem(generate_code(), "S-1", stranger, **{"X-Forwarded-For": "198.51.100.7"})
        ).status_code == 400

        rejected = await h.wait_events("AuthorisationRejected", 6)
        by_serial = {e.data["serial_number"]: e.data["client_ip"] for e in rejected}
        assert by_serial == {
            "P-0": "198.51.100.7",
            "P-1": "198.51.100.7",
            "P-2": "198.51.100.7",
            "P-3": "198.51.100.8",
            "S-0": "203.0.113.9",
            "S-1": "203.0.113.9",
        }
