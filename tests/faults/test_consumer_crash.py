"""A consumer SIGKILLed after its database commit and before its offset commit: the event is
delivered again after the restart, and the processed-event table absorbs it: nothing unseen, no
second email, no second credential.

How the window is held open from outside the code: a deferred constraint trigger on
`processed_events` (it runs inside COMMIT) waits on an advisory lock the test holds, for the one
consumer under test. When the consumer's COMMIT is seen waiting, the test freezes the service
(SIGSTOP), releases the lock (the commit completes in PostgreSQL; the frozen process never hears
of it, so it commits no offset), SIGKILLs it and starts it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from fault_kit import Rig, Scanner, eventually

from scanner_auth_shared.events import NOTIFICATIONS_TOPIC, PUBLIC_TOPIC

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

LOCK = 917_002
TRAP = (
    "CREATE TABLE IF NOT EXISTS fault_armed (consumer TEXT PRIMARY KEY)",
    f"""
    CREATE OR REPLACE FUNCTION fault_hold_commit() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF EXISTS (SELECT 1 FROM fault_armed WHERE consumer = NEW.consumer) THEN
            PERFORM pg_advisory_xact_lock_shared({LOCK});
        END IF;
        RETURN NULL;
    END $$
    """,
    "DROP TRIGGER IF EXISTS fault_hold_commit ON processed_events",
    """
    CREATE CONSTRAINT TRIGGER fault_hold_commit AFTER INSERT ON processed_events
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fault_hold_commit()
    """,
)
UNTRAP = (
    "DROP TRIGGER IF EXISTS fault_hold_commit ON processed_events",
    "DROP FUNCTION IF EXISTS fault_hold_commit()",
    "DROP TABLE IF EXISTS fault_armed",
)
WAITING = f"""
    SELECT pid FROM pg_locks
    WHERE locktype = 'advisory' AND objid = {LOCK} AND NOT granted
    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


@dataclass
class Crash:
    """What happened around the crash, for the report."""

    event_id: str = ""
    offset: int = -1
    committed_offset: int = -2
    processed_before_restart: bool = False


@contextlib.asynccontextmanager
async def commit_held(rig: Rig, service: str, consumer: str) -> AsyncIterator[asyncpg.Connection]:
    async with rig.connect(service) as holder:
        await holder.execute("SELECT pg_advisory_lock($1)", LOCK)
        for ddl in TRAP:
            await holder.execute(ddl)
        await holder.execute("INSERT INTO fault_armed VALUES ($1)", consumer)
        try:
            yield holder
        finally:
            # Unlocked first: a COMMIT still held would otherwise block the DROP forever.
            await holder.execute("SELECT pg_advisory_unlock_all()")
            for ddl in UNTRAP:
                with contextlib.suppress(Exception):
                    await holder.execute(ddl)


async def crash_after_commit(
    rig: Rig,
    *,
    service: str,
    consumer: str,
    group_id: str,
    topic: str,
    cause: Callable[[], Awaitable[Any]],
    event_of: Callable[[], Awaitable[Any]],
) -> tuple[Crash, Any]:
    """Run `cause` (which makes the consumer under test receive one event), crash the service
    between that event's database commit and its offset commit, start it again."""
    crash = Crash()
    async with commit_held(rig, service, consumer) as holder:
        result = await cause()

        async def waiting() -> int | None:
            return await holder.fetchval(WAITING)  # type: ignore[no-any-return]

        await eventually(waiting, 60, f"{consumer} reached its COMMIT")
        rig.signal(service, signal.SIGSTOP)
        await holder.execute("SELECT pg_advisory_unlock($1)", LOCK)  # the commit completes
        event = await event_of()
        crash.event_id = event.id

        async def committed() -> bool:
            return bool(
                await holder.fetchval(
                    "SELECT count(*) FROM processed_events WHERE consumer = $1 AND event_id = $2",
                    consumer,
                    event.id,
                )
            )

        crash.processed_before_restart = await eventually(committed, 30, "the effect committed")
        rig.kill(service)
    records = await rig.records(topic)
    crash.offset = next(r.offset for r in records if event.id.encode() in r.value)
    partition = next(r.partition for r in records if event.id.encode() in r.value)
    crash.committed_offset = (await rig.committed_offsets(group_id, topic)).get(partition, -1)
    await rig.start(service)
    return crash, result


def report(label: str, crash: Crash, **counts: Any) -> None:
    details = " ".join(f"{k}={v}" for k, v in counts.items())
    print(
        f"consumer crash [{label}]: event offset={crash.offset} "
        f"group offset at the kill={crash.committed_offset} (redelivered: "
        f"{crash.committed_offset <= crash.offset}) {details}"
    )


async def test_notifier_killed_after_commit_sends_one_email(rig: Rig) -> None:
    [scanner] = await rig.scanners(1, "sc-ncrash")
    token = await rig.generate(scanner.scanner_id)

    async def known() -> bool:
        return bool(
            await rig.fetchval(
                "notifier",
                "SELECT count(*) FROM token_states WHERE token_id = $1",
                token["token_id"],
            )
        )

    await eventually(known, 30, "the notifier follows the token")
    notification: list[str] = []

    async def cause() -> None:
        notification.append(await rig.email(scanner))

    async def event_of() -> Any:
        async def found() -> Any:
            return next(
                (
                    e
                    for e in await rig.events(NOTIFICATIONS_TOPIC, "TokenEmailRequested")
                    if e.data["notification_id"] == notification[0]
                ),
                None,
            )

        return await eventually(found, 30, "TokenEmailRequested on the topic")

    crash, _ = await crash_after_commit(
        rig,
        service="notifier",
        consumer="notifier.email-requests",
        group_id="scanner-auth.notifier.email-requests",
        topic=NOTIFICATIONS_TOPIC,
        cause=cause,
        event_of=event_of,
    )

    await _redelivered(rig, "scanner-auth.notifier.email-requests", NOTIFICATIONS_TOPIC, crash)

    async def mailed() -> bool:
        return bool(rig.stack.mail.to(scanner.viewer_email))  # type: ignore[union-attr]

    await eventually(mailed, 60, "the email")
    await asyncio.sleep(3)  # room for a second one
    mails = len(rig.stack.mail.to(scanner.viewer_email))  # type: ignore[union-attr]
    rows = await rig.fetchval(
        "notifier",
        "SELECT count(*) FROM notifications WHERE notification_id = $1",
        notification[0],
    )

    async def sent_events() -> list[Any]:
        return [
            e
            for e in await rig.events(NOTIFICATIONS_TOPIC, "NotificationSent")
            if e.data["notification_id"] == notification[0]
        ]

    sent = await eventually(sent_events, 30, "NotificationSent")
    report(
        "notifier.email-requests",
        crash,
        emails=mails,
        notification_rows=rows,
        notification_sent=len(sent),
    )
    assert crash.processed_before_restart
    assert crash.committed_offset <= crash.offset, "the offset was committed: no redelivery"
    assert mails == 1 and rows == 1 and len(sent) == 1


async def test_redeemer_killed_after_commit_issues_one_credential(rig: Rig) -> None:
    [scanner] = await rig.scanners(1, "sc-rcrash")
    token: dict[str, Any] = {}

    async def cause() -> None:
        token.update(await rig.generate(scanner.scanner_id))

    async def event_of() -> Any:
        async def found() -> Any:
            return next(
                (
                    e
                    for e in await rig.events(PUBLIC_TOPIC, "TokenIssued")
                    if e.data["token_id"] == token["token_id"]
                ),
                None,
            )

        return await eventually(found, 30, "TokenIssued on the topic")

    crash, _ = await crash_after_commit(
        rig,
        service="redeemer",
        consumer="redeemer.authorisation",
        group_id="scanner-auth.redeemer.authorisation",
        topic=PUBLIC_TOPIC,
        cause=cause,
        event_of=event_of,
    )
    await _redelivered(rig, "scanner-auth.redeemer.authorisation", PUBLIC_TOPIC, crash)
    attempts = [
        (await rig.redeem(token["code"], scanner.serial_number)).status_code for _ in range(3)
    ]
    credentials = await _credentials(rig, scanner)
    await rig.outbox_empty("redeemer")
    authorised = [
        e
        for e in await rig.events(PUBLIC_TOPIC, "ScannerAuthorised")
        if e.data["scanner_id"] == scanner.scanner_id
    ]
    token_rows = await rig.fetchval(
        "redeemer", "SELECT count(*) FROM tokens WHERE token_id = $1", token["token_id"]
    )
    report(
        "redeemer.authorisation",
        crash,
        redemptions=attempts,
        credentials=credentials,
        scanner_authorised=len(authorised),
        token_rows=token_rows,
    )
    assert crash.committed_offset <= crash.offset, "the offset was committed: no redelivery"
    assert attempts == [201, 400, 400]
    assert credentials == 1 and len(authorised) == 1 and token_rows == 1


async def test_scan_ingest_killed_after_commit_keeps_one_credential(rig: Rig) -> None:
    [scanner] = await rig.scanners(1, "sc-gcrash")
    token = await rig.generate(scanner.scanner_id)
    await rig.redeemer_knows_tokens([token["token_id"]])
    redeemed: dict[str, Any] = {}

    async def cause() -> None:
        r = await rig.redeem(token["code"], scanner.serial_number)
        assert r.status_code == 201, r.text
        redeemed.update(r.json())

    async def event_of() -> Any:
        async def found() -> Any:
            return next(
                (
                    e
                    for e in await rig.events(PUBLIC_TOPIC, "ScannerAuthorised")
                    if e.data["credential_id"] == redeemed["credential_id"]
                ),
                None,
            )

        return await eventually(found, 30, "ScannerAuthorised on the topic")

    crash, _ = await crash_after_commit(
        rig,
        service="scan-ingest",
        consumer="scan-ingest.gate",
        group_id="scanner-auth.scan-ingest.gate",
        topic=PUBLIC_TOPIC,
        cause=cause,
        event_of=event_of,
    )
    await _redelivered(rig, "scanner-auth.scan-ingest.gate", PUBLIC_TOPIC, crash)
    r = await rig.upload(redeemed["credential"], {"scan_id": "after-crash", "volume_m3": 1.0})
    rows = await rig.fetchval(
        "scan-ingest",
        "SELECT count(*) FROM gate_credentials WHERE scanner_id = $1",
        scanner.scanner_id,
    )
    processed = await rig.fetchval(
        "scan-ingest", "SELECT count(*) FROM processed_events WHERE event_id = $1", crash.event_id
    )
    report(
        "scan-ingest.gate",
        crash,
        gate_credentials=rows,
        processed_rows=processed,
        upload=r.status_code,
    )
    assert crash.committed_offset <= crash.offset, "the offset was committed: no redelivery"
    assert rows == 1 and processed == 1 and r.status_code == 202


async def _redelivered(rig: Rig, group: str, topic: str, crash: Crash) -> None:
    """The restarted consumer went past the event again (its group offset moved beyond it)."""

    async def past() -> bool:
        offsets = await rig.committed_offsets(group, topic)
        return any(o > crash.offset for o in offsets.values())

    await eventually(past, 60, f"{group} consumed past the event again")


async def _credentials(rig: Rig, scanner: Scanner) -> int:
    return int(
        await rig.fetchval(
            "redeemer", "SELECT count(*) FROM credentials WHERE scanner_id = $1", scanner.scanner_id
        )
    )
