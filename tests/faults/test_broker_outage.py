"""The broker frozen (SIGSTOP) for 30 seconds while the system works, then thawed (SIGCONT):
every event committed meanwhile arrives; scan-ingest answers 503, never 202, while it cannot
store an upload, and every upload it accepted is on the scans topic."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from fault_kit import Rig, eventually, uid

from scanner_auth_shared.events import PUBLIC_TOPIC, SCANS_TOPIC

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

OUTAGE_SECONDS = 30.0


async def test_a_frozen_broker_delays_events_and_refuses_uploads_but_loses_nothing(
    rig: Rig,
) -> None:
    authorised, to_redeem, fresh, spare = await rig.scanners(4, "sc-broker")
    # Before the outage: one scanner uploading, one code ready to be typed in.
    token = await rig.generate(authorised.scanner_id)
    pending = await rig.generate(to_redeem.scanner_id)
    await rig.redeemer_knows_tokens([token["token_id"], pending["token_id"]])
    r = await rig.redeem(token["code"], authorised.serial_number)
    assert r.status_code == 201, r.text
    credential = r.json()["credential"]

    async def gate_open() -> bool:
        return (await rig.upload(credential, {"probe": True})).status_code == 202

    await eventually(gate_open, 30, "the gate opened")

    accepted: list[str] = []  # scan ids answered 202
    refused: list[str] = []  # scan ids answered 503
    during: list[int] = []  # statuses answered while the broker was frozen
    ready_during: list[int] = []
    committed: dict[str, list[str]] = {
        "TokenIssued": [],
        "TokenRevoked": [],
        "ScannerAuthorised": [],
        "ScannerDeauthorised": [],
    }

    async def upload(scan_id: str) -> int:
        try:
            r = await rig.upload(credential, {"scan_id": scan_id, "volume_m3": 2.5})
        except httpx.HTTPError:
            return 0
        (accepted if r.status_code == 202 else refused if r.status_code == 503 else []).append(
            scan_id
        )
        return r.status_code

    for _ in range(3):
        assert await upload(uid("scan-before")) == 202

    stopping = asyncio.Event()

    async def keep_uploading() -> None:
        while not stopping.is_set():
            during.append(await upload(uid("scan-during")))

    async def keep_probing() -> None:
        async with httpx.AsyncClient(base_url=rig.url("scan-ingest"), timeout=10) as probe:
            while not stopping.is_set():
                with_timeout = await probe.get("/readyz")
                ready_during.append(with_timeout.status_code)
                await asyncio.sleep(2)

    async def commit_work() -> None:
        """State changes the services commit with their events while the broker is away."""
        issued = await rig.generate(fresh.scanner_id)
        superseding = await rig.generate(fresh.scanner_id)
        committed["TokenIssued"] += [issued["token_id"], superseding["token_id"]]
        committed["TokenRevoked"].append(issued["token_id"])
        r = await rig.redeem(pending["code"], to_redeem.serial_number)
        assert r.status_code == 201, r.text
        committed["ScannerAuthorised"].append(r.json()["credential_id"])
        async with rig.admin() as admin:
            r = await admin.delete(f"/v1/scanners/{spare.scanner_id}/authorisation")
            assert r.status_code == 204, r.text
        committed["ScannerDeauthorised"].append(spare.scanner_id)

    assert rig.stack.broker is not None
    rig.stack.broker.pause()
    frozen_at = time.monotonic()
    try:
        tasks = [asyncio.create_task(keep_uploading()), asyncio.create_task(keep_probing())]
        await commit_work()
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - frozen_at)))
        stopping.set()
        await asyncio.gather(*tasks)
    finally:
        rig.stack.broker.resume()
    outage = time.monotonic() - frozen_at

    # Every committed event arrives.
    def key(event: Any) -> str:
        data = event.data
        return {
            "TokenIssued": data.get("token_id"),
            "TokenRevoked": data.get("token_id"),
            "ScannerAuthorised": data.get("credential_id"),
            "ScannerDeauthorised": data.get("scanner_id"),
        }.get(event.type, "")

    async def arrived() -> bool:
        seen = {(e.type, key(e)) for e in await rig.events(PUBLIC_TOPIC)}
        return all((kind, k) in seen for kind, keys in committed.items() for k in keys)

    started = time.monotonic()
    await eventually(arrived, 120, "every event committed during the outage arrived")
    caught_up = time.monotonic() - started

    # Uploads are accepted again, and every accepted upload is on the scans topic.
    async def accepting() -> bool:
        return await upload(uid("scan-after")) == 202

    await eventually(accepting, 90, "uploads accepted again", every=0.5)
    scans = {e.data.get("scan_id") for e in await rig.events(SCANS_TOPIC, "ScanIngested")}
    lost = [s for s in accepted if s not in scans]
    late = [s for s in refused if s in scans]
    sent = sum(len(v) for v in committed.values())
    print(
        f"broker outage {outage:.0f}s: committed events sent={sent} arrived=all "
        f"(caught up {caught_up:.1f}s after SIGCONT); uploads during the outage: "
        f"202={during.count(202)} 503={during.count(503)} "
        f"other={len(during) - during.count(202) - during.count(503)}; "
        f"accepted uploads={len(accepted)} lost={len(lost)}; "
        f"answered 503 but landed later={len(late)}; "
        f"scan-ingest /readyz during the outage: {ready_during}"
    )
    assert during and during.count(202) == 0, f"an upload was accepted with no broker: {during}"
    assert set(during) == {503}, during
    assert not lost, f"uploads answered 202 but never stored: {lost}"
    assert 200 not in ready_during[1:], "scan-ingest said ready with its broker frozen"
