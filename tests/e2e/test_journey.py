"""The whole journey across the four services, as processes, as their users see it:
admin → code → email → scanner redeems → uploads accepted → deauthorised → re-authorised →
rotated; and no secret anywhere it should not be. Once on one process per service, once on two
replicas of each behind their fronts (every request on a new connection, so consecutive
requests of the journey land on both replicas): a change of the gate is awaited on every
scan-ingest replica, each by its own port."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from scanner_auth.devstack import System
from scanner_auth_shared.events import NOTIFICATIONS_TOPIC, PUBLIC_TOPIC, SCANS_TOPIC
from scanner_auth_shared.testing.kafka import read_topic, wait_for_events
from scanner_auth_shared.testing.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def topic_text(system: System, topic: str) -> str:
    records = asyncio.run(read_topic(system.bootstrap, topic))
    return "\n".join(r.value.decode(errors="replace") for r in records)


@pytest.fixture(params=["one process per service", "two replicas per service"])
def any_system(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(
        "system" if request.param.startswith("one") else "replicated_system"
    )


def every_replica(system: System, credential: str, status: int) -> bool:
    """Whether every scan-ingest replica answers an upload with `credential` with `status`."""
    return set(system.upload_statuses(credential)) == {status}


def test_the_journey_of_a_code(any_system: System) -> None:
    system = any_system
    fronts_before = {name: f.connections() for name, f in system.stack.fronts.items()}
    scanner = system.demo.scanners[0]
    sid = scanner.scanner_id
    secrets_seen: list[str] = []
    bodies: list[str] = []

    # the directory has reached the token-issuer
    with system.as_user("ADMIN_JWT") as admin:
        wait_until(
            lambda: admin.get(f"/v1/scanners/{sid}/authorisation").status_code == 200,
            30,
            "directory reached the token-issuer",
        )

    token = system.generate_token(sid)
    code = token["code"]
    secrets_seen += [code, code.replace("-", "")]

    # the plain user with access sees it; the other organisation does not
    with system.as_user("USER_JWT") as user:
        assert user.get(f"/v1/scanners/{sid}/authorisation-token").json()["code"] == code
    with system.as_user("OTHER_ADMIN_JWT") as other:
        r = other.get(f"/v1/scanners/{sid}/authorisation-token")
        assert r.status_code == 404
        bodies.append(r.text)

    # emailed to the user
    with system.as_user("ADMIN_JWT") as admin:
        r = admin.post(
            f"/v1/scanners/{sid}/authorisation-token/email", json={"recipient_user_id": "u-bob"}
        )
        assert r.status_code == 202, r.text
    assert system.stack.mail is not None
    mails = wait_until(lambda: system.stack.mail.to("bob@quarry.example"), 20, "the email")  # type: ignore[union-attr]
    parts = mails[0].parts()
    assert code in parts["text/plain"] and code in parts["text/html"]

    # a typo is caught before it counts; a wrong serial is refused
    typo = code[:-1] + ("0" if code[-1] != "0" else "1")
    r = system.redeem(typo, scanner.serial_number)
    assert r.status_code == 422 and "typo" in r.text
    bodies.append(r.text)
    r = system.redeem(code, "LVS-NOT-MINE")
    assert r.status_code == 400
    bodies.append(r.text)

    # not yet authorised: refused by the gate
    with system.device("scan-ingest") as anon:
        assert anon.post("/v1/scans", json={"x": 1}).status_code == 401

    # the person at the scanner types it, sloppily
    r = system.redeem(code.lower().replace("-", " "), scanner.serial_number)
    assert r.status_code == 201, r.text
    credential = r.json()["credential"]
    secrets_seen.append(credential)
    wait_until(lambda: every_replica(system, credential, 202), 5, "gate opened")

    # a code redeems once
    r = system.redeem(code, scanner.serial_number)
    assert r.status_code == 400
    bodies.append(r.text)

    with system.device("scan-ingest", credential) as device:
        r = device.post("/v1/scans", json={"scan_id": "scan-0001", "volume_m3": 12.5})
        assert r.status_code == 202
        assert r.json()["scan_id"] == "scan-0001"

    with system.as_user("USER_JWT") as user:
        wait_until(
            lambda: user.get(f"/v1/scanners/{sid}/authorisation").json()["status"] == "authorised",
            10,
            "token-issuer learned of the authorisation",
        )
        assert user.get(f"/v1/scanners/{sid}/authorisation-token").json()["status"] == "redeemed"

    # rotation: the new credential works at once, the old one still during its grace period
    with system.device("redeemer", credential) as device:
        r = device.post("/v1/credentials/rotate")
        assert r.status_code == 201, r.text
        rotated = r.json()["credential"]
    secrets_seen.append(rotated)
    wait_until(lambda: every_replica(system, rotated, 202), 5, "rotated credential accepted")
    assert every_replica(system, credential, 202)

    # deauthorised: the gate closes within about a second, for both credentials
    with system.as_user("ADMIN_JWT") as admin:
        assert admin.delete(f"/v1/scanners/{sid}/authorisation").status_code == 204
    started = time.monotonic()
    wait_until(lambda: every_replica(system, rotated, 403), 5, "gate closed")
    closed_after = time.monotonic() - started
    assert every_replica(system, credential, 403)
    assert closed_after < 3.0, closed_after

    # re-authorised with a new code: the new credential works, the old ones stay refused
    second = system.generate_token(sid)
    secrets_seen += [second["code"], second["code"].replace("-", "")]
    # The redeemer learns of a code from TokenIssued; a person takes longer to type it.
    asyncio.run(
        wait_for_events(
            system.bootstrap,
            PUBLIC_TOPIC,
            "TokenIssued",
            match=lambda e: e.data["token_id"] == second["token_id"],
        )
    )
    time.sleep(1.0)
    r = system.redeem(second["code"], scanner.serial_number)
    assert r.status_code == 201, r.text
    renewed = r.json()["credential"]
    secrets_seen.append(renewed)
    wait_until(lambda: every_replica(system, renewed, 202), 5, "re-authorised")
    assert every_replica(system, rotated, 403)

    # every event other services rely on is there, and no secret is anywhere it should not be
    public = topic_text(system, PUBLIC_TOPIC)
    for kind in (
        "TokenIssued",
        "ScannerAuthorised",
        "CredentialRotated",
        "ScannerDeauthorised",
        "AuthorisationRejected",
    ):
        assert kind in public, kind
    scans = topic_text(system, SCANS_TOPIC)
    assert "scan-0001" in scans
    notifications = topic_text(system, NOTIFICATIONS_TOPIC)
    assert "NotificationSent" in wait_until(
        lambda: topic_text(system, NOTIFICATIONS_TOPIC), 10, "notifications"
    )
    logs = system.logs()
    for secret in secrets_seen:
        assert secret not in public, "a secret on the public topic"
        assert secret not in scans, "a secret on the scans topic"
        assert secret not in notifications, "a secret on the notifications topic (only sealed)"
        assert secret not in logs, "a secret in a log line"
        assert all(secret not in body for body in bodies), "a secret in an error body"

    # Through the fronts, both replicas of every service called over HTTP served the journey.
    for name, front in system.stack.fronts.items():
        if name == "notifier":
            continue  # no client calls it
        served = {
            port: n - fronts_before[name].get(port, 0) for port, n in front.connections().items()
        }
        print(f"{name}: connections per replica {served}")
        assert len(served) == 2 and all(served.values()), (name, served)
