"""Issue #13, part 2, as a person meets it, on the four services as processes: the notifier is
down; an admin emails a code to a user, then revokes it; the notifier starts again. The request
(notifications topic) and the revocation (public topic) wait on two topics, behind a backlog of
the scanner's earlier codes on the public one. No email goes out for the revoked code; the next
code's email does."""

from __future__ import annotations

import asyncio

import pytest

from scanner_auth.devstack import System
from scanner_auth_shared.events import NOTIFICATIONS_TOPIC, CloudEvent
from scanner_auth_shared.testing.kafka import read_topic
from scanner_auth_shared.testing.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

RECIPIENT = "bob@quarry.example"  # u-bob of the demo directory, who can view scanners[0]
# Earlier codes of the scanner, generated while the notifier is down: each supersedes the one
# before (TokenRevoked, TokenIssued), so the token-state consumer restarts 2 x BACKLOG events
# behind on the scanner's partition, while the request is the only record on its topic.
BACKLOG = 100


def _outcome(system: System, notification_id: str) -> CloudEvent:
    """The notification's NotificationSent or NotificationFailed, once it is on the topic."""

    def find() -> CloudEvent | None:
        for record in asyncio.run(read_topic(system.bootstrap, NOTIFICATIONS_TOPIC)):
            event = CloudEvent.from_bytes(record.value)
            if event.type in {"NotificationSent", "NotificationFailed"} and (
                event.data.get("notification_id") == notification_id
            ):
                return event
        return None

    found: CloudEvent = wait_until(find, 90, "the notification's outcome", every=0.5)
    return found


def test_a_code_revoked_while_the_notifier_was_stopped_is_not_emailed(system: System) -> None:
    sid = system.demo.scanners[0].scanner_id
    mail = system.stack.mail
    assert mail is not None
    with system.as_user("ADMIN_JWT") as admin:
        wait_until(
            lambda: RECIPIENT in admin.get(f"/v1/scanners/{sid}/users").text,
            60,
            "the directory reached the token-issuer",
        )

    notifier = system.stack.services["notifier"]
    assert notifier.stop() == 0
    with system.as_user("ADMIN_JWT") as admin:
        for _ in range(BACKLOG):
            assert admin.post(f"/v1/scanners/{sid}/authorisation-token").status_code == 201
        revoked_code = admin.get(f"/v1/scanners/{sid}/authorisation-token").json()["code"]
        r = admin.post(
            f"/v1/scanners/{sid}/authorisation-token/email", json={"recipient_user_id": "u-bob"}
        )
        assert r.status_code == 202, r.text
        notification_id = r.json()["notification_id"]
        assert admin.delete(f"/v1/scanners/{sid}/authorisation-token").status_code == 204
    notifier.start()
    notifier.wait_ready(120)

    # The positive signal: the notification reached its end, cancelled. Its row is final, so
    # nothing can send it later.
    outcome = _outcome(system, notification_id)
    assert outcome.type == "NotificationFailed", "the email went out with a revoked code"
    assert outcome.data["error"] == "the code is no longer active"
    assert outcome.data["permanent"] is True and outcome.data["attempts"] == 0
    assert mail.to(RECIPIENT) == []

    # The notifier is not simply stuck: the next code's email goes out, once.
    code = system.generate_token(sid)["code"]
    with system.as_user("ADMIN_JWT") as admin:
        r = admin.post(
            f"/v1/scanners/{sid}/authorisation-token/email", json={"recipient_user_id": "u-bob"}
        )
        assert r.status_code == 202, r.text
    assert _outcome(system, r.json()["notification_id"]).type == "NotificationSent"
    mails = mail.to(RECIPIENT)
    assert len(mails) == 1
    text = mails[0].parts()["text/plain"]
    assert code in text and revoked_code not in text
