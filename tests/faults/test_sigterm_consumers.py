"""SIGTERM to every service while its consumers work through a burst of events (what
tests/e2e/test_graceful_shutdown.py does not cover: it stops services under HTTP load): each
exits 0 within its grace period, and after the restart every consumed event has been applied
once, none lost, by every consumer that reads it."""

from __future__ import annotations

import asyncio
import secrets
import signal
import time

import pytest
from fault_kit import ORG, Rig, uid

from scanner_auth_shared.events import (
    DIRECTORY_TOPIC,
    PUBLIC_TOPIC,
    ScannerAuthorised,
    ScannerRegistered,
    new_event,
    utcnow,
)
from scanner_auth_shared.testing.kafka import publish_events

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

BURST = 100  # events per topic

# Who consumes what of the burst: service -> [(consumer, topic)].
READERS = {
    "token-issuer": [
        ("token-issuer.directory", DIRECTORY_TOPIC),
        ("token-issuer.authorisations", PUBLIC_TOPIC),
    ],
    "redeemer": [("redeemer.directory", DIRECTORY_TOPIC)],
    "scan-ingest": [("scan-ingest.gate", PUBLIC_TOPIC)],
    "notifier": [("notifier.token-states", PUBLIC_TOPIC)],
}


async def test_sigterm_while_consuming_loses_no_event(rig: Rig) -> None:
    scanners = [uid("sc-burst") for _ in range(BURST)]
    directory = [
        new_event(
            ScannerRegistered(
                scanner_id=s, org_id=ORG, serial_number=f"SN-{s[-8:]}", name="burst", model="MPS"
            ),
            source="myscanner/directory",
        )
        for s in scanners
    ]
    authorisations = [
        new_event(
            ScannerAuthorised(
                scanner_id=s,
                org_id=ORG,
                token_id=uid("tok"),
                serial_number=f"SN-{s[-8:]}",
                credential_id=uid("cred"),
                credential_digest=secrets.token_hex(32),
                authorised_at=utcnow(),
            ),
            source="scanner-auth/redeemer",
        )
        for s in scanners
    ]
    ids = {DIRECTORY_TOPIC: [e.id for e in directory], PUBLIC_TOPIC: [e.id for e in authorisations]}

    async def applied(service: str, consumer: str, topic: str) -> int:
        return int(
            await rig.fetchval(
                service,
                "SELECT count(*) FROM processed_events WHERE consumer = $1 AND event_id = ANY($2)",
                consumer,
                ids[topic],
            )
        )

    exits: dict[str, tuple[int | None, float]] = {}
    at_stop: dict[str, int] = {}

    async def stop_while_consuming(service: str) -> None:
        consumer, topic = READERS[service][0]
        deadline = time.monotonic() + 60
        while await applied(service, consumer, topic) == 0:
            assert time.monotonic() < deadline, f"{service} never started on the burst"
            await asyncio.sleep(0.05)
        started = time.monotonic()
        svc = rig.stack.services[service]
        code = await asyncio.to_thread(svc.stop, signal.SIGTERM, 30)
        exits[service] = (code, round(time.monotonic() - started, 1))
        at_stop[service] = sum([await applied(service, c, t) for c, t in READERS[service]])

    await asyncio.gather(
        publish_events(rig.bootstrap, DIRECTORY_TOPIC, *directory),
        publish_events(rig.bootstrap, PUBLIC_TOPIC, *authorisations),
        *(stop_while_consuming(service) for service in READERS),
    )
    await asyncio.gather(*(rig.start(service) for service in READERS))

    expected = {s: BURST * len(r) for s, r in READERS.items()}

    async def all_applied() -> dict[str, int]:
        return {s: sum([await applied(s, c, t) for c, t in r]) for s, r in READERS.items()}

    deadline = time.monotonic() + 120
    done = await all_applied()
    while done != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        done = await all_applied()
    gate = await rig.fetchval(
        "scan-ingest", "SELECT count(*) FROM gate_credentials WHERE scanner_id = ANY($1)", scanners
    )
    known = await rig.fetchval(
        "redeemer", "SELECT count(*) FROM scanners WHERE scanner_id = ANY($1)", scanners
    )
    print(
        f"sigterm while consuming: events per topic={BURST}; exits (code, seconds)={exits}; "
        f"applied at the stop={at_stop}; applied in the end={done} (expected {expected}); "
        f"gate credentials={gate} redeemer scanners={known}"
    )
    assert all(code == 0 for code, _ in exits.values()), exits
    assert any(at_stop[s] < expected[s] for s in at_stop), "no service was stopped mid-burst"
    assert done == expected, "consumed events lost across a SIGTERM"
    assert gate == BURST and known == BURST
