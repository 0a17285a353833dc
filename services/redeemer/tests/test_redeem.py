"""Redeeming a code: once only, the same answer for every refusal, the real reason in the event.
Real PostgreSQL, the real broker, the service in-process."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime

import asyncpg
import pytest

from redeemer.api import UNIFORM_REFUSAL
from scanner_auth_shared.crypto import generate_code, looks_like_credential
from scanner_auth_shared.events import PUBLIC_TOPIC
from scanner_auth_shared.postgres import asyncpg_dsn

from .conftest import CLIENT_IP, ORG, Start, eventually

pytestmark = pytest.mark.integration

# Throttling is tested on its own (test_throttling.py); here it must not get in the way.
NO_THROTTLE = {"serial_lockout_failures": 10_000, "address_lockout_failures": 10_000}


async def test_a_code_is_redeemed_for_a_credential_and_a_scanner_authorised_event(start: Start):
    async with start() as h:
        await h.register("sc-1", "LVS-0001")
        issued = await h.issue("sc-1")
        # Entry is forgiving: lower case, spaces instead of dashes, O for 0 and so on.
        typed = issued.code.lower().replace("-", " ").replace("0", "o").replace("1", "l")
        answer = await h.redeem(typed, "  LVS-0001 ")
        assert answer.status_code == 201, answer.text
        assert answer.headers["cache-control"] == "no-store"
        body = answer.json()
        assert set(body) == {"scanner_id", "credential_id", "credential", "authorised_at"}
        assert body["scanner_id"] == "sc-1"
        assert looks_like_credential(body["credential"])
        assert len(body["credential"]) >= 43  # 256 random bits, base64url

        digest = hashlib.sha256(body["credential"].encode()).hexdigest()
        stored = await h.query("SELECT credential_id, credential_digest, status FROM credentials")
        assert [tuple(r) for r in stored] == [(body["credential_id"], digest, "active")]
        assert (
            await h.scalar("SELECT status FROM tokens WHERE token_id = $1", issued.token_id)
            == "redeemed"
        )

        [event] = await h.wait_events("ScannerAuthorised", 1)
        assert event.source == "scanner-auth/redeemer"
        assert event.subject == "sc-1"
        assert event.data == {
            "scanner_id": "sc-1",
            "org_id": ORG,
            "token_id": issued.token_id,
            "serial_number": "LVS-0001",
            "credential_id": body["credential_id"],
            "credential_digest": digest,
            "authorised_at": event.data["authorised_at"],
        }
        assert datetime.fromisoformat(event.data["authorised_at"]) == datetime.fromisoformat(
            body["authorised_at"]
        )

        # Operations: alive, ready, metrics, and the documented API.
        client = h.client()
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        metrics = (await client.get("/metrics")).text
        assert 'scanner_auth_redeemer_redemptions_total{outcome="authorised"}' in metrics
        assert "scanner_auth_redeemer_lockouts_total" in metrics
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert {"/v1/authorisations", "/v1/credentials/rotate"} <= set(paths)


async def test_fifty_concurrent_redemptions_of_one_code_make_exactly_one_credential(start: Start):
    async with start(**NO_THROTTLE) as h:
        await h.register("sc-1", "LVS-0001")
        issued = await h.issue("sc-1")
        client = h.client()
        answers = await asyncio.gather(
            *(h.redeem(issued.code, "LVS-0001", client) for _ in range(50))
        )

        statuses = sorted(a.status_code for a in answers)
        assert statuses == [201] + [400] * 49
        assert all(a.content == UNIFORM_REFUSAL for a in answers if a.status_code == 400)
        assert await h.scalar("SELECT count(*) FROM credentials") == 1

        # Every answer is in, so every event is committed; the outbox is empty once the broker
        # has acknowledged each of them (acks=all), so reading the topic to its end sees them
        # all: no wait is needed to know that no second ScannerAuthorised is coming.
        assert await eventually(h.outbox_empty)
        assert len(await h.events("ScannerAuthorised")) == 1
        rejected = await h.events("AuthorisationRejected")
        assert len(rejected) == 49
        assert {e.data["reason"] for e in rejected} == {"already_used"}
        assert {e.subject for e in rejected} == {"sc-1"}  # the code matched sc-1's token

        # Underneath the per-serial serialisation, the one statement that marks a token used is
        # itself single-use: hammered from 20 connections at once, it lets exactly one through.
        second = await h.issue("sc-1")

        async def mark_used() -> bool:
            async with h.services.unit_of_work() as uow:
                used = await uow.tokens.mark_redeemed(second.token_id)
                await uow.commit()
            return used

        assert sorted(await asyncio.gather(*(mark_used() for _ in range(20)))) == [False] * 19 + [
            True
        ]


async def test_every_refusal_answers_the_same_bytes_and_the_event_says_why(start: Start):
    async with start() as h:
        for n in range(1, 7):
            await h.register(f"sc-{n}", f"LVS-000{n}")
        # wrong serial: sc-1's code with sc-2's serial number
        wrong_serial = await h.issue("sc-1")
        # expired: 1 s to live, and no TokenExpired will ever come: judged by its own clock
        short_issued, short_data = h.token_issued("sc-3", ttl=1.0)
        await h.publish(PUBLIC_TOPIC, short_data)
        await h.wait_token(short_issued.token_id, "active")
        short = short_issued
        # revoked: superseded by a newer code
        superseded = await h.issue("sc-4")
        newer = await h.issue("sc-4")
        await h.revoke(superseded, reason="superseded")
        # reused
        used = await h.issue("sc-5")
        assert (await h.redeem(used.code, "LVS-0005")).status_code == 201
        # a scanner the directory removed
        gone = await h.issue("sc-6")
        await h.remove("sc-6")
        # a scanner the directory never told us of
        stranger = await h.issue("sc-unknown")
        await _until_past(short_data.expires_at)

        attempts = {
            "invalid_code": (generate_code(), "LVS-0009"),
            "serial_mismatch": (wrong_serial.code, "LVS-0002"),
            "expired": (short.code, "LVS-0003"),
            "revoked": (superseded.code, "LVS-0004"),
            "already_used": (used.code, "LVS-0005"),
            "serial_mismatch/removed": (gone.code, "LVS-0006"),
            "serial_mismatch/unknown scanner": (stranger.code, "LVS-0007"),
        }
        answers = {why: await h.redeem(code, serial) for why, (code, serial) in attempts.items()}
        for why, answer in answers.items():
            assert answer.status_code == 400, why
            assert answer.content == UNIFORM_REFUSAL, why
            assert answer.headers["content-type"] == "application/problem+json", why
        assert len({a.content for a in answers.values()}) == 1
        assert (
            len({tuple(sorted((k, v) for k, v in a.headers.items())) for a in answers.values()})
            == 1
        )

        rejected = await h.wait_events("AuthorisationRejected", len(attempts))
        seen = [
            (e.data["reason"], e.data["serial_number"], e.subject, e.data["client_ip"])
            for e in rejected
        ]
        assert sorted(seen) == sorted(
            [
                ("invalid_code", "LVS-0009", "LVS-0009", CLIENT_IP),  # no token: keyed by serial
                ("serial_mismatch", "LVS-0002", "sc-1", CLIENT_IP),  # the token's scanner
                ("expired", "LVS-0003", "sc-3", CLIENT_IP),
                ("revoked", "LVS-0004", "sc-4", CLIENT_IP),
                ("already_used", "LVS-0005", "sc-5", CLIENT_IP),
                ("serial_mismatch", "LVS-0006", "sc-6", CLIENT_IP),
                ("serial_mismatch", "LVS-0007", "sc-unknown", CLIENT_IP),
            ]
        )
        # Refusals change nothing: the wrong serial did not burn sc-1's code, newer still works.
        assert (await h.redeem(wrong_serial.code, "LVS-0001")).status_code == 201
        assert (await h.redeem(newer.code, "LVS-0004")).status_code == 201
        assert (
            await h.scalar("SELECT status FROM tokens WHERE token_id = $1", short.token_id)
            == "active"
        )  # only judged expired, never told


async def test_malformed_bodies_and_typos_are_422_without_echo_or_event(start: Start):
    async with start() as h:
        await h.register("sc-1", "LVS-0001")
        issued = await h.issue("sc-1")
        good = issued.code
        # A typo: change the check symbol.
        last = good[-1]
        typo = good[:-1] + ("0" if last != "0" else "1")
        client = h.client()
        bodies: list[bytes] = [
            b"not json " + good.encode(),
            b"[1, 2]",
            b'"' + good.encode() + b'"',
            b"{}",
            b'{"code": 123, "serial_number": "LVS-0001"}',
            b'{"code": "' + good.encode() + b'"}',
            b'{"code": "' + good.encode() + b'", "serial_number": "   "}',
            b'{"code": "' + good.encode() + b'", "serial_number": "' + b"S" * 65 + b'"}',
            b'{"code": "' + b"A" * 65 + b'", "serial_number": "LVS-0001"}',
            b'{"code": "SECRET-CODE", "serial_number": "LVS-0001"}',  # malformed code
        ]
        for body in bodies:
            answer = await client.post(
                "/v1/authorisations", content=body, headers={"content-type": "application/json"}
            )
            assert answer.status_code == 422, body
            assert answer.headers["content-type"] == "application/problem+json"
            assert good.encode() not in answer.content and b"SECRET" not in answer.content
        too_big = await client.post("/v1/authorisations", content=b" " * 10_000)
        assert too_big.status_code == 413

        for _ in range(12):  # more than any lockout threshold: typos are not attempts
            answer = await h.redeem(typo, "LVS-0001", client)
            assert answer.status_code == 422
            assert "typo" in answer.json()["detail"]
            assert typo not in answer.text
        answer = await h.redeem(good, "LVS-0001", client)
        assert answer.status_code == 201
        await h.wait_events("ScannerAuthorised", 1)
        assert await eventually(h.outbox_empty)
        assert await h.events("AuthorisationRejected") == []
        assert await h.scalar("SELECT count(*) FROM serial_throttle") == 0
        assert await h.scalar("SELECT count(*) FROM address_throttle") == 0


async def test_a_redemption_that_raced_the_revocation_fails_once_the_revocation_is_applied(
    start: Start,
):
    """The redemption has read the token as active and passed every check; the revocation is
    being applied at that moment (its consumer holds the row). Once it commits, the redemption's
    single conditional UPDATE finds the token no longer active: 400, reason revoked."""
    async with start(**NO_THROTTLE) as h:
        await h.register("sc-1", "LVS-0001")
        issued = await h.issue("sc-1")
        blocker = await asyncpg.connect(asyncpg_dsn(h.settings.database_url))
        try:
            # Hold the token's row so that both the revocation and the redemption queue on it.
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute(
                "SELECT 1 FROM tokens WHERE token_id = $1 FOR UPDATE", issued.token_id
            )
            await h.revoke(issued, wait=None)
            assert await eventually(lambda: _waiting_on_locks(h, 1))  # the consumer queues
            redemption = asyncio.create_task(h.redeem(issued.code, "LVS-0001"))
            assert await eventually(lambda: _waiting_on_locks(h, 2))  # then the redemption
            await transaction.commit()
            answer = await redemption
        finally:
            await blocker.close()
        assert answer.status_code == 400 and answer.content == UNIFORM_REFUSAL
        assert (
            await h.scalar("SELECT status FROM tokens WHERE token_id = $1", issued.token_id)
            == "revoked"
        )
        assert await h.scalar("SELECT count(*) FROM credentials") == 0
        [event] = await h.wait_events("AuthorisationRejected", 1)
        assert event.data["reason"] == "revoked"
        # And every later attempt is refused too.
        again = await h.redeem(issued.code, "LVS-0001")
        assert again.status_code == 400 and again.content == UNIFORM_REFUSAL


async def _until_past(moment: datetime) -> None:
    await asyncio.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()) + 0.2)


async def _waiting_on_locks(h, count: int) -> bool:  # type: ignore[no-untyped-def]
    waiting = await h.scalar(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    return bool(waiting >= count)


async def test_redemptions_racing_a_revocation_never_succeed_after_it(start: Start):
    """A storm of redemptions while TokenRevoked travels: at most one success, and none that
    started after the revocation was seen applied."""
    async with start(**NO_THROTTLE) as h:
        await h.register("sc-1", "LVS-0001")
        issued = await h.issue("sc-1")
        client = h.client()
        revoked_seen_at: list[float] = []
        results: list[tuple[float, int]] = []
        loop = asyncio.get_running_loop()

        async def keep_trying() -> None:
            while not revoked_seen_at or loop.time() < revoked_seen_at[0] + 0.5:
                started = loop.time()
                answer = await h.redeem(issued.code, "LVS-0001", client)
                results.append((started, answer.status_code))

        async def revoke() -> None:
            await asyncio.sleep(0.05)
            await h.revoke(issued, wait=None)
            state = await eventually(
                lambda: h.scalar(
                    "SELECT status FROM tokens WHERE token_id = $1 AND status <> 'active'",
                    issued.token_id,
                ),
                every=0.01,
            )
            revoked_seen_at.append(loop.time())
            assert state in ("revoked", "redeemed")

        await asyncio.gather(keep_trying(), revoke())
        successes = [t for t, status in results if status == 201]
        assert len(successes) <= 1
        assert all(t < revoked_seen_at[0] for t in successes)
        after = [status for t, status in results if t > revoked_seen_at[0]]
        assert after and set(after) == {400}
