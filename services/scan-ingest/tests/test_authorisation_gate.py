"""The gate on real PostgreSQL and a real broker: who may upload, and how fast that changes."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import timedelta

import asyncpg
import pytest

from scan_ingest.adapters.gate_sync import APPLICATION_NAME
from scanner_auth_shared.crypto import credential_digest, generate_credential
from scanner_auth_shared.db import asyncpg_dsn
from scanner_auth_shared.events import SCANS_TOPIC, CloudEvent, ScanIngested, parse_data
from scanner_auth_shared.testing.kafka import read_topic, wait_for_events

from .conftest import Scanner, World, eventually, now

pytestmark = pytest.mark.integration

ONE_SECOND = 1.0  # the contract: a change in authorisation reaches the gate within one second


async def test_only_authorised_scanners_upload_and_changes_reach_the_gate_within_a_second(
    world: World,
) -> None:
    scanner = Scanner()
    async with world.ingest() as ingest:
        # Unauthorised: no credential, another scheme, garbage, an unknown credential.
        missing = await ingest.upload(None, {"x": 1})
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert missing.headers["content-type"] == "application/problem+json"
        basic = await ingest.upload(None, {"x": 1}, headers={"Authorization": "Basic dTpw"})
        assert basic.status_code == 401
        assert (await ingest.upload("x" * 5000, {"x": 1})).status_code == 401
        unknown = await ingest.upload(generate_credential(), {"x": 1})
        assert unknown.status_code == 401
        assert 'error="invalid_token"' in unknown.headers["www-authenticate"]

        # Authorised (as the redeemer announces it): accepted, and published.
        credential, credential_id, authorised = scanner.authorised()
        await world.announce(authorised)
        await ingest.until_status(credential, 202)
        response = await ingest.upload(credential, {"scan_id": "scan-0001", "volume_m3": 12.5})
        assert response.status_code == 202
        assert response.json()["scan_id"] == "scan-0001"
        assert response.json()["received_at"].endswith("Z")
        [event] = await wait_for_events(
            world.bootstrap,
            SCANS_TOPIC,
            "ScanIngested",
            match=lambda e: e.data["scan_id"] == "scan-0001",
        )
        data = parse_data(event)
        assert isinstance(data, ScanIngested)
        assert (data.scanner_id, data.org_id, data.credential_id) == (
            scanner.scanner_id,
            scanner.org_id,
            credential_id,
        )
        assert data.scan == {"scan_id": "scan-0001", "volume_m3": 12.5}
        assert data.size_bytes > 0
        assert event.source == "scanner-auth/scan-ingest" and event.subject == scanner.scanner_id
        records = [
            r
            for r in await read_topic(world.bootstrap, SCANS_TOPIC)
            if CloudEvent.from_bytes(r.value).id == event.id
        ]
        assert records[0].key == scanner.scanner_id.encode()
        assert credential not in records[0].value.decode()  # never the secret

        # Without a scan_id, the gateway makes one up; an unusable one is refused.
        fresh = await ingest.upload(credential, {"volume_m3": 1})
        assert fresh.status_code == 202
        assert uuid.UUID(fresh.json()["scan_id"])
        assert (await ingest.upload(credential, {"scan_id": "", "volume_m3": 1})).status_code == 422

        # Deauthorised: the redeemer's CredentialsRevoked closes it, 403 within one second of
        # its publication. (The token-issuer's ScannerDeauthorised itself closes nothing here.)
        await world.announce(scanner.revoked(credential_id))
        elapsed = await ingest.until_status(credential, 403, timeout=10)
        assert elapsed <= ONE_SECOND, f"revocation took {elapsed:.2f}s to reach the gate"

        # Authorised again: the new credential works within a second, the old one stays refused.
        new_credential, _, again = scanner.authorised()
        await world.announce(again)
        elapsed = await ingest.until_status(new_credential, 202, timeout=10)
        assert elapsed <= ONE_SECOND, f"authorisation took {elapsed:.2f}s to reach the gate"
        assert await ingest.status(credential) == 403

        # Re-authorised without a deauthorisation in between: the previous credential is replaced.
        third, _, replaced_by = scanner.authorised()
        await world.announce(replaced_by)
        await ingest.until_status(third, 202, timeout=10)
        assert await ingest.status(new_credential) == 403

        metrics = (await ingest.client.get("/metrics")).text
        assert 'scan_ingest_uploads_total{outcome="accepted"}' in metrics
        assert 'scan_ingest_uploads_total{outcome="forbidden"}' in metrics
        assert "scan_ingest_accepted_bytes_total" in metrics
        assert "scan_ingest_gate_credentials" in metrics
        assert 'scan_ingest_gate_reload_seconds_count{kind="scanners"}' in metrics


async def test_a_rotated_credential_works_until_previous_valid_until(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="scanner_auth.scan_ingest")
    scanner = Scanner()
    async with world.ingest(trusted_proxies="203.0.113.0/24") as ingest:
        old, old_id, authorised = scanner.authorised()
        await world.announce(authorised)
        await ingest.until_status(old, 202)

        grace = timedelta(seconds=3)
        new, _, rotated = scanner.rotated(old_id, grace)
        await world.announce(rotated)
        await ingest.until_status(new, 202, timeout=10)
        deadline = rotated.previous_valid_until
        assert now() < deadline
        assert await ingest.status(old) == 202  # within its grace period

        await asyncio.sleep(max(0.0, (deadline - now()).total_seconds()) + 0.2)
        refused = await ingest.upload(old, {"x": 1}, headers={"X-Forwarded-For": "198.51.100.9"})
        assert refused.status_code == 403
        assert "grace" in refused.json()["detail"]
        assert await ingest.status(new) == 202

    # The refusal is logged with the client's address (behind a trusted proxy: the forwarded
    # one), and no credential is ever logged.
    [refusal] = [r for r in caplog.records if r.getMessage().startswith("upload refused")]
    assert refusal.client_ip == "198.51.100.9"  # type: ignore[attr-defined]
    assert refusal.state == "rotating"  # type: ignore[attr-defined]
    logged = caplog.text + "".join(str(vars(r)) for r in caplog.records)
    assert old not in logged and new not in logged


async def test_a_revocation_that_arrives_first_still_covers_the_credential(
    world: World,
) -> None:
    """A named credential is revoked whenever its announcement arrives."""
    scanner = Scanner()
    async with world.ingest() as ingest:
        credential, credential_id, authorised = scanner.authorised()
        await world.announce(scanner.revoked(credential_id))
        await world.announce(authorised, authorised)  # and redelivered
        # Known (so not 401) and refused: the revocation covered it on arrival.
        await ingest.until_status(credential, 403)

        # A rotation announced before the credential it rotates: both work as announced.
        other = Scanner()
        first, first_id, first_authorised = other.authorised()
        second, _, rotation = other.rotated(first_id, timedelta(hours=1))
        await world.announce(rotation)
        await ingest.until_status(second, 202)
        await world.announce(first_authorised)
        await ingest.until_status(first, 202)


async def test_a_restarted_gateway_accepts_authorised_scanners_as_soon_as_it_is_ready(
    world: World,
) -> None:
    scanner = Scanner()
    credential, _, authorised = scanner.authorised()
    async with world.ingest() as first:
        await world.announce(authorised)
        await first.until_status(credential, 202)

    # A new process on the same database: no event is replayed, the table is loaded. While the
    # first load cannot finish (the table is locked), it is not ready and answers 503, not 401.
    blocker = await asyncpg.connect(asyncpg_dsn(world.database_url))
    try:
        await blocker.execute("BEGIN; LOCK TABLE gate_credentials IN ACCESS EXCLUSIVE MODE")
        async with world.ingest(wait_ready=False) as second:
            await asyncio.sleep(0.3)
            assert not await second.ready()
            loading = await second.upload(credential, {"scan_id": "too-early"})
            assert loading.status_code == 503 and loading.headers["retry-after"]
            await blocker.execute("ROLLBACK")

            assert await eventually(second.ready, 30, every=0.01)
            response = await second.upload(credential, {"scan_id": "after-restart"})
            assert response.status_code == 202
    finally:
        await blocker.close()


async def test_a_second_replica_sees_authorisations_too(world: World) -> None:
    scanner = Scanner()
    async with world.ingest() as one, world.ingest() as two:
        credential, credential_id, authorised = scanner.authorised()
        await world.announce(authorised)
        await one.until_status(credential, 202)
        await two.until_status(credential, 202, timeout=ONE_SECOND)
        await world.announce(scanner.revoked(credential_id))
        assert await one.until_status(credential, 403, timeout=10) <= ONE_SECOND
        assert await two.until_status(credential, 403, timeout=10) <= ONE_SECOND


async def test_the_gate_recovers_lost_notifications_and_connections(world: World) -> None:
    """A resync reloads the table; a lost listener reconnects and reloads, unready meanwhile."""
    scanner = Scanner()
    async with world.ingest(gate_resync_seconds=1.0) as ingest:
        dsn = asyncpg_dsn(world.database_url)
        # A credential written without any notification: the periodic resync picks it up.
        credential = generate_credential()
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "INSERT INTO gate_credentials (credential_digest, credential_id, scanner_id, "
                "org_id, issued_at, state) VALUES ($1, 'cred-x', $2, $3, now(), 'active')",
                bytes.fromhex(credential_digest(credential)),
                scanner.scanner_id,
                scanner.org_id,
            )
            await ingest.until_status(credential, 202, timeout=10)

            # The listening connection dies: /readyz turns 503, then 200 after reconnecting.
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1",
                APPLICATION_NAME,
            )
            assert killed == 1
            saw_unready = await eventually(lambda: _not(ingest.ready), 5, every=0.005)
            assert saw_unready
            assert await eventually(ingest.ready, 15, every=0.05)
        finally:
            await conn.close()
        # And it still follows changes.
        other, _, authorised = Scanner().authorised()
        await world.announce(authorised)
        started = time.monotonic()
        await ingest.until_status(other, 202)
        assert time.monotonic() - started < 20


async def test_a_skewed_deauthorisation_leaves_nothing_working_once_the_redeemer_revoked(
    world: World,
) -> None:
    """Issue 18 on the real gate: a ScannerDeauthorised stamped 10 s behind a redemption (the
    token-issuer's clock running behind) closes nothing by itself; the redeemer's revocation,
    naming the credential, closes it."""
    scanner = Scanner()
    async with world.ingest() as ingest:
        credential, credential_id, authorised = scanner.authorised()
        await world.announce(authorised)
        await ingest.until_status(credential, 202)
        await world.announce(
            scanner.deauthorised(at=authorised.authorised_at - timedelta(seconds=10)),
            scanner.revoked(credential_id),
        )
        assert await ingest.until_status(credential, 403, timeout=10) <= ONE_SECOND


async def test_the_retention_purge_runs_and_forgets_rotated_out_credentials(world: World) -> None:
    scanner = Scanner()
    async with world.ingest(gate_purge_interval_seconds=0.2, gate_resync_seconds=1.0) as ingest:
        old, old_id, authorised = scanner.authorised()
        new, _, rotated = scanner.rotated(old_id, timedelta(seconds=1))
        await world.announce(authorised, rotated)
        await ingest.until_status(new, 202)
        # Grace over: 403; purged from the table, then from memory at the next full load: 401.
        await ingest.until_status(old, 401, timeout=20)
        assert await ingest.status(new) == 202
        conn = await asyncpg.connect(asyncpg_dsn(world.database_url))
        try:
            left = await conn.fetchval(
                "SELECT count(*) FROM gate_credentials WHERE scanner_id = $1", scanner.scanner_id
            )
        finally:
            await conn.close()
        assert left == 1


async def _not(check) -> bool:  # type: ignore[no-untyped-def]
    return not await check()
