"""PostgreSQL stopped in the middle of redemptions (a fast shutdown: every session cut, every
open transaction rolled back), then started again: never a credential without its
ScannerAuthorised, never a ScannerAuthorised without its credential, and never a 201 for a
credential that was not kept."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fault_kit import Rig

from scanner_auth_shared.events import PUBLIC_TOPIC

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SCANNERS = 12
WORKERS = 3
OUTAGE_SECONDS = 3.0


async def test_redemptions_across_a_database_outage_keep_credentials_and_events_together(
    rig: Rig,
) -> None:
    scanners = await rig.scanners(SCANNERS, "sc-pg")
    tokens = [await rig.generate(s.scanner_id) for s in scanners]
    await rig.redeemer_knows_tokens([t["token_id"] for t in tokens])

    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(SCANNERS):
        queue.put_nowait(i)
    granted: dict[int, str] = {}  # scanner index -> credential_id answered 201
    statuses: list[int] = []
    answer_lost: list[int] = []  # 503 (or a cut connection), then 400: committed, answer lost
    successes = asyncio.Event()

    async def redeem_until_answered(i: int) -> None:
        unsure = False
        while True:
            try:
                r = await rig.redeem(
                    tokens[i]["code"], scanners[i].serial_number, client_ip=f"198.51.100.{10 + i}"
                )
                status = r.status_code
            except httpx.HTTPError:
                status = 0
            statuses.append(status)
            if status == 201:
                granted[i] = r.json()["credential_id"]
                if len(granted) >= 4:
                    successes.set()
                return
            if status == 400 and unsure:
                answer_lost.append(i)
                return
            assert status in (0, 503), f"unexpected answer {status}"
            unsure = True
            await asyncio.sleep(0.3)

    async def worker() -> None:
        while not queue.empty():
            await redeem_until_answered(queue.get_nowait())
            await asyncio.sleep(0.4)  # spread the redemptions over the outage

    async def outage() -> None:
        await successes.wait()
        assert rig.stack.postgres is not None
        await asyncio.to_thread(rig.stack.postgres.pause)
        await asyncio.sleep(OUTAGE_SECONDS)
        await asyncio.to_thread(rig.stack.postgres.resume)

    await asyncio.gather(outage(), *(worker() for _ in range(WORKERS)))
    await rig.all_ready()
    await rig.outbox_empty("redeemer")

    ids = [s.scanner_id for s in scanners]
    rows = await rig.fetch(
        "redeemer",
        "SELECT credential_id, scanner_id FROM credentials WHERE scanner_id = ANY($1)",
        ids,
    )
    stored = {r["credential_id"] for r in rows}
    events: list[Any] = [
        e
        for e in await rig.events(PUBLIC_TOPIC, "ScannerAuthorised")
        if e.data["scanner_id"] in set(ids)
    ]
    announced = {e.data["credential_id"] for e in events}
    answered = set(granted.values())
    print(
        f"database outage: redemptions={SCANNERS} 201={len(granted)} "
        f"503_or_cut={statuses.count(503) + statuses.count(0)} answer_lost={len(answer_lost)} "
        f"credentials={len(stored)} scanner_authorised={len(events)} "
        f"credential_without_event={len(stored - announced)} "
        f"event_without_credential={len(announced - stored)} "
        f"201_without_credential={len(answered - stored)}"
    )
    assert statuses.count(503) + statuses.count(0) >= 1, "the outage hit no redemption"
    assert stored == announced, "a credential without its event, or an event without it"
    assert len(events) == len(announced), "a ScannerAuthorised announced twice"
    assert answered <= stored, "a 201 for a credential that was not kept"
    assert len(stored) == len(granted) + len(answer_lost) == SCANNERS
    assert len({r["scanner_id"] for r in rows}) == len(rows), "two credentials for one code"
