"""Emailing a code: a TokenEmailRequested with the code sealed for the notifier, only to users
who can view the scanner; and the list of such users."""

from __future__ import annotations

import base64

import pytest
from token_issuer_support import (
    A1,
    ADMIN_A,
    ADMIN_B,
    CROSS_B,
    PLAIN_A,
    SCANNERS,
    SUPPORT,
    USER_A,
    Harness,
    Who,
)

from scanner_auth_shared.crypto import SealBroken, SecretBox, sealed_code_context
from scanner_auth_shared.events import NOTIFICATIONS_TOPIC, PUBLIC_TOPIC
from scanner_auth_shared.testing.kafka import events_on, wait_for_events

pytestmark = pytest.mark.integration

EMAIL = f"/v1/scanners/{A1}/authorisation-token/email"
# An admin of organisation A the directory does not know: known from their JWTs only.
SECOND_ADMIN_A = Who("u-admin-a2", "org-a", ("admin",), "second.admin@a.example")


async def test_email_requests_carry_a_sealed_code_for_viewers_only(two_orgs: Harness) -> None:
    h = two_orgs
    for who in (SECOND_ADMIN_A, ADMIN_B):  # seen authenticating
        assert (await h.call(who, "GET", "/v1/scanners")).status_code == 200
    token = await h.generate(ADMIN_A, A1)

    users = await h.call(ADMIN_A, "GET", f"/v1/scanners/{A1}/users")
    assert users.status_code == 200
    assert sorted(users.json(), key=lambda u: u["user_id"]) == [
        {"user_id": ADMIN_A.sub, "display_name": "Ada Admin", "email": ADMIN_A.email},
        {
            "user_id": SECOND_ADMIN_A.sub,
            "display_name": SECOND_ADMIN_A.email,
            "email": SECOND_ADMIN_A.email,
        },
        {"user_id": USER_A.sub, "display_name": "Uma User", "email": USER_A.email},
    ]  # not the user without a grant, not the cross-org grantee, not support, not org B

    accepted = {}
    for who, body, email in (
        (ADMIN_A, {"recipient_user_id": USER_A.sub}, USER_A.email),  # manager -> viewer
        (USER_A, None, USER_A.email),  # viewer -> self
        (SUPPORT, {}, SUPPORT.email),  # self, JWT address
        (ADMIN_A, {"recipient_user_id": SECOND_ADMIN_A.sub}, SECOND_ADMIN_A.email),
    ):
        response = await h.call(who, "POST", EMAIL, json=body)
        assert response.status_code == 202, response.text
        assert set(response.json()) == {"notification_id"}
        accepted[response.json()["notification_id"]] = (who, email)

    for who, body, status in (
        (ADMIN_A, {"recipient_user_id": PLAIN_A.sub}, 422),  # cannot view
        (ADMIN_A, {"recipient_user_id": CROSS_B.sub}, 422),  # grant across organisations
        (ADMIN_A, {"recipient_user_id": ADMIN_B.sub}, 422),  # admin of the other organisation
        (ADMIN_A, {"recipient_user_id": "u-nobody"}, 422),  # unknown
        (USER_A, {"recipient_user_id": ADMIN_A.sub}, 403),  # a viewer sends only to self
        (ADMIN_A, {"recipient_user_id": USER_A.sub, "cc": "x"}, 422),  # malformed
        (PLAIN_A, None, 404),
    ):
        response = await h.call(who, "POST", EMAIL, json=body)
        assert response.status_code == status, (who.sub, body, response.text)
        assert response.headers["content-type"] == "application/problem+json"

    events = await wait_for_events(h.bootstrap, NOTIFICATIONS_TOPIC, "TokenEmailRequested", count=4)
    assert {e.data["notification_id"] for e in events} == set(accepted)
    sealing = SecretBox(base64.b64decode(h.settings.sealing_key.get_secret_value()))
    for event in events:
        who, email = accepted[event.data["notification_id"]]
        assert event.subject == A1 and event.source == "scanner-auth/token-issuer"
        sealed = event.data.pop("sealed_code")
        assert sealing.open(sealed, sealed_code_context(token["token_id"])) == token["code"]
        with pytest.raises(SealBroken):
            sealing.open(sealed, sealed_code_context("another-token"))
        assert token["code"] not in sealed
        assert event.data == {
            "notification_id": event.data["notification_id"],
            "token_id": token["token_id"],
            "scanner_id": A1,
            "org_id": "org-a",
            "recipient_user_id": event.data["recipient_user_id"],
            "recipient_email": email,
            "requested_by": who.sub,
            "expires_at": token["expires_at"],
            "scanner_name": SCANNERS[A1].name,
            "serial_number": SCANNERS[A1].serial_number,
        }
    assert not await events_on(h.bootstrap, PUBLIC_TOPIC, "TokenEmailRequested")

    audit = await h.fetch(
        "SELECT actor_user_id, recipient_user_id, notification_id, token_id"
        " FROM audit_log WHERE action = 'emailed'"
    )
    assert {r["notification_id"]: (r["actor_user_id"], r["token_id"]) for r in audit} == {
        n: (who.sub, token["token_id"]) for n, (who, _) in accepted.items()
    }

    # No active token: 409.
    assert (
        await h.call(ADMIN_A, "DELETE", f"/v1/scanners/{A1}/authorisation-token")
    ).status_code == 204
    response = await h.call(USER_A, "POST", EMAIL)
    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
