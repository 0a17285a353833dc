"""The SMTP relay misbehaving under the real notifier process: a transient refusal (451) then
acceptance, a permanent refusal (550), and the connection dropped after the message was
received (the relay said 354, took the data and hung up before answering): never a second email,
and the outcome on the notifications topic."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fault_kit import Rig, Scanner, eventually

from scanner_auth_shared.events import NOTIFICATIONS_TOPIC

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


async def _outcomes(rig: Rig, notification_id: str) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {"NotificationSent": [], "NotificationFailed": []}
    for event in await rig.events(NOTIFICATIONS_TOPIC):
        if event.type in found and event.data.get("notification_id") == notification_id:
            found[event.type].append(event)
    return found


async def _request(rig: Rig, scanner: Scanner) -> tuple[dict[str, Any], str]:
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
    return token, await rig.email(scanner)


async def _settle(rig: Rig, notification_id: str) -> dict[str, list[Any]]:
    async def ended() -> dict[str, list[Any]] | None:
        found = await _outcomes(rig, notification_id)
        return found if found["NotificationSent"] or found["NotificationFailed"] else None

    await eventually(ended, 60, "the notification's outcome")
    await asyncio.sleep(4)  # longer than a retry: room for a resend, if one were coming
    return await _outcomes(rig, notification_id)


async def test_smtp_451_then_250_sends_once(rig: Rig) -> None:
    [scanner] = await rig.scanners(1, "sc-smtp451")
    assert rig.stack.mail is not None
    rig.stack.mail.fail_next.append("451 4.3.0 Mailbox busy, try again later")
    token, notification = await _request(rig, scanner)
    found = await _settle(rig, notification)
    mails = rig.stack.mail.to(scanner.viewer_email)
    attempts = await rig.fetchval(
        "notifier", "SELECT attempts FROM notifications WHERE notification_id = $1", notification
    )
    print(
        f"smtp 451 then 250: emails={len(mails)} attempts={attempts} "
        f"sent_events={len(found['NotificationSent'])} "
        f"failed_events={len(found['NotificationFailed'])}"
    )
    assert len(mails) == 1 and token["code"] in mails[0].parts()["text/plain"]
    assert attempts == 2
    assert len(found["NotificationSent"]) == 1 and not found["NotificationFailed"]


async def test_smtp_550_fails_permanently_without_retry(rig: Rig) -> None:
    [scanner] = await rig.scanners(1, "sc-smtp550")
    assert rig.stack.mail is not None
    rig.stack.mail.fail_next.append("550 5.1.1 No such mailbox")
    token, notification = await _request(rig, scanner)
    found = await _settle(rig, notification)
    mails = rig.stack.mail.to(scanner.viewer_email)
    failed = found["NotificationFailed"]
    print(
        f"smtp 550: emails={len(mails)} sent_events={len(found['NotificationSent'])} "
        f"failed_events={len(failed)} "
        f"failure={[(e.data['permanent'], e.data['attempts']) for e in failed]}"
    )
    assert not mails and not found["NotificationSent"]
    assert len(failed) == 1
    assert failed[0].data["permanent"] is True and failed[0].data["attempts"] == 1
    assert token["code"] not in str(failed[0].data)


async def test_smtp_connection_dropped_after_data_is_not_resent(rig: Rig) -> None:
    """The relay received the whole message (after its 354) and hung up before its 250: the
    notifier cannot know whether it will be delivered, and does not send it again."""
    [scanner] = await rig.scanners(1, "sc-smtpdrop")
    assert rig.stack.mail is not None
    rig.stack.mail.drop_next = 1
    _, notification = await _request(rig, scanner)
    found = await _settle(rig, notification)
    mails = rig.stack.mail.to(scanner.viewer_email)
    failed = found["NotificationFailed"]
    print(
        f"smtp dropped after DATA: emails received by the relay={len(mails)} "
        f"duplicates={max(0, len(mails) - 1)} sent_events={len(found['NotificationSent'])} "
        f"failed_events={len(failed)} "
        f"failure={[(e.data['permanent'], e.data['attempts']) for e in failed]}"
    )
    assert rig.stack.mail.drop_next == 0, "the drop did not happen"
    assert len(mails) == 1, "the notifier sent the email again"
    assert not found["NotificationSent"] and len(failed) == 1
    assert failed[0].data["permanent"] is False
