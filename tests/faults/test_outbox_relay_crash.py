"""The outbox relay SIGKILLed after the broker acknowledged a batch and before it deleted the
rows: the restarted relay publishes them again; consumers deduplicate, so nothing is lost and
every effect happens once.

How the window is held open from outside the code: a statement trigger on the token-issuer's
`outbox` waits on an advisory lock the test holds, so the relay's DELETE (which it runs only once
the broker acknowledged the batch) blocks. The test then SIGKILLs the token-issuer, terminates
the orphaned DELETE in PostgreSQL (it must never complete), removes the trigger and starts the
service again.
"""

from __future__ import annotations

import asyncio

import pytest
from fault_kit import Rig, count_by, eventually

from scanner_auth_shared.events import NOTIFICATIONS_TOPIC, PUBLIC_TOPIC

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

LOCK = 917_001
TRAP = (
    f"""
    CREATE OR REPLACE FUNCTION fault_hold_outbox_delete() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_advisory_xact_lock_shared({LOCK});
        RETURN NULL;
    END $$
    """,
    "DROP TRIGGER IF EXISTS fault_hold_outbox_delete ON outbox",
    """
    CREATE TRIGGER fault_hold_outbox_delete BEFORE DELETE ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION fault_hold_outbox_delete()
    """,
)
UNTRAP = (
    "DROP TRIGGER IF EXISTS fault_hold_outbox_delete ON outbox",
    "DROP FUNCTION IF EXISTS fault_hold_outbox_delete()",
)
BLOCKED_DELETE = """
    SELECT pid FROM pg_stat_activity
    WHERE datname = current_database() AND wait_event_type = 'Lock'
      AND query LIKE 'DELETE FROM outbox%'
"""


async def test_relay_killed_between_ack_and_delete_loses_nothing_and_acts_once(rig: Rig) -> None:
    scanners = await rig.scanners(3, "sc-relay")
    async with rig.connect("token-issuer") as holder:
        await holder.execute("SELECT pg_advisory_lock($1)", LOCK)
        for ddl in TRAP:
            await holder.execute(ddl)
        try:

            async def blocked() -> int | None:
                return await holder.fetchval(BLOCKED_DELETE)  # type: ignore[no-any-return]

            # The first token's batch holds the relay; everything else piles up behind it.
            tokens = [await rig.generate(scanners[0].scanner_id)]
            first_pid = await eventually(blocked, 30, "the relay's DELETE is waiting on the trap")
            tokens += [await rig.generate(s.scanner_id) for s in scanners[1:]]
            notifications = [await rig.email(s) for s in scanners]
            # Its connection cut, the relay starts again from the oldest row: one batch of
            # everything, published, acknowledged, and held at its DELETE again.
            await holder.execute("SELECT pg_terminate_backend($1)", first_pid)

            async def blocked_again() -> int | None:
                pid = await blocked()
                return pid if pid not in (None, first_pid) else None

            pid = await eventually(blocked_again, 30, "the relay's second DELETE is held")
            ours = await holder.fetch("SELECT event_id FROM outbox")

            # Every row of that batch is on the broker (acknowledged) and still in the outbox.
            async def acked_not_marked() -> set[str] | None:
                pending = {r["event_id"] for r in await holder.fetch("SELECT event_id FROM outbox")}
                published = {e.id for e in await rig.events(PUBLIC_TOPIC)}
                published |= {e.id for e in await rig.events(NOTIFICATIONS_TOPIC)}
                window = pending & published
                return window if window == {r["event_id"] for r in ours} else None

            in_window = await eventually(acked_not_marked, 30, "acknowledged rows still pending")
            rig.kill("token-issuer")
            await holder.execute("SELECT pg_terminate_backend($1)", pid)

            async def gone() -> bool:
                return not await holder.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid
                )

            await eventually(gone, 15, "the orphaned DELETE ended")
            still_pending = await holder.fetchval(
                "SELECT count(*) FROM outbox WHERE event_id = ANY($1)", list(in_window)
            )
            assert still_pending == len(in_window), "the killed relay's DELETE went through"
        finally:
            # Unlocked first: a DELETE still held would otherwise block the DROP forever.
            await holder.execute("SELECT pg_advisory_unlock_all()")
            for ddl in UNTRAP:
                await holder.execute(ddl)

    await rig.start("token-issuer")
    await rig.outbox_empty("token-issuer")

    token_ids = {t["token_id"] for t in tokens}
    issued = [
        e for e in await rig.events(PUBLIC_TOPIC, "TokenIssued") if e.data["token_id"] in token_ids
    ]
    requested = [
        e
        for e in await rig.events(NOTIFICATIONS_TOPIC, "TokenEmailRequested")
        if e.data["notification_id"] in set(notifications)
    ]
    per_token = count_by(e.data["token_id"] for e in issued)
    per_request = count_by(e.data["notification_id"] for e in requested)
    sent = len(token_ids) + len(notifications)
    received = len(issued) + len(requested)
    distinct = len(per_token) + len(per_request)
    duplicates = received - distinct

    # Effects, once each: one email per request, one notification row, one credential per code.
    async def mailed() -> bool:
        return all(len(rig.stack.mail.to(s.viewer_email)) >= 1 for s in scanners)  # type: ignore[union-attr]

    await eventually(mailed, 60, "every requested email arrived")
    await asyncio.sleep(3)  # room for a second email, if one were coming
    mails = [len(rig.stack.mail.to(s.viewer_email)) for s in scanners]  # type: ignore[union-attr]
    rows = await rig.fetchval(
        "notifier",
        "SELECT count(*) FROM notifications WHERE notification_id = ANY($1)",
        notifications,
    )
    await rig.redeemer_knows_tokens(list(token_ids))
    first, second = [], []
    for s, t in zip(scanners, tokens, strict=True):
        first.append((await rig.redeem(t["code"], s.serial_number)).status_code)
        second.append((await rig.redeem(t["code"], s.serial_number)).status_code)
    credentials = await rig.fetchval(
        "redeemer",
        "SELECT count(*) FROM credentials WHERE scanner_id = ANY($1)",
        [s.scanner_id for s in scanners],
    )
    print(
        f"relay crash: sent={sent} received={received} distinct={distinct} "
        f"duplicates={duplicates} (acked but unmarked at the kill: {len(in_window)}) "
        f"emails={sum(mails)} notification_rows={rows} credentials={credentials} "
        f"redeemed={first} again={second}"
    )
    assert set(per_token) == token_ids and set(per_request) == set(notifications), "lost events"
    # Every event of the held batch went out twice (TokenIssued and TokenEmailRequested alike).
    assert len(in_window) >= sent - 1 and duplicates >= len(in_window), "nothing republished"
    assert mails == [1] * len(scanners), f"emails per request: {mails}"
    assert rows == len(notifications)
    assert first == [201] * len(scanners) and second == [400] * len(scanners)
    assert credentials == len(scanners)
