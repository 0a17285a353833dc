"""Issue 18 on the real stack: the token-issuer's clock runs 10 s behind the others'.

Before, scan-ingest's gate closed a deauthorised scanner's credentials issued at or before the
ScannerDeauthorised's `deauthorised_at` (the token-issuer's clock) and compared it with
`authorised_at` (the redeemer database's clock): a deauthorisation less than 10 s after a
redemption left that credential working at the gate for ever, while the redeemer and the page
said it was revoked. Now the redeemer revokes, in its own order, every credential it issued
before it applied the deauthorisation and names them in `CredentialsRevoked`; the gate closes
those ids. This test redeems, uploads (202), deauthorises at once, and requires the credential
to be refused at the gate (403) within a second; it measures the extra hop too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest

from scanner_auth.devstack import Stack, System
from scanner_auth_shared.events import PUBLIC_TOPIC
from scanner_auth_shared.testing.kafka import read_topic, wait_for_events
from scanner_auth_shared.testing.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SKEW_SECONDS = -10.0  # the token-issuer's clock, behind the redeemer's
ONE_SECOND = 1.0  # the contract: a change in authorisation reaches the gate within one second


@pytest.fixture(scope="module")
def skewed_system(private_tmp: Any) -> Iterator[System]:
    stack = Stack(
        private_tmp("skewed"),
        extra_env={"token-issuer": {"TEST_CLOCK_OFFSET_SECONDS": str(SKEW_SECONDS)}},
    )
    try:
        stack.start_infrastructure()
        stack.start_services()
        system = System(stack)
        stack.publish(*system.demo.events())
        yield system
    finally:
        stack.stop()


def redeemed(system: System, scanner_id: str, serial: str) -> dict[str, Any]:
    token = system.generate_token(scanner_id)
    asyncio.run(
        wait_for_events(
            system.bootstrap,
            PUBLIC_TOPIC,
            "TokenIssued",
            match=lambda e: e.data["token_id"] == token["token_id"],
        )
    )
    # The redeemer learns of the code from that TokenIssued (its consumer, typically well under
    # a second later); a person takes longer to type it. (As in test_journey.)
    time.sleep(1.0)
    r = system.redeem(token["code"], serial)
    assert r.status_code == 201, r.text
    return dict(r.json())


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_a_deauthorisation_right_after_a_redemption_closes_the_gate_whatever_the_clocks(
    skewed_system: System,
) -> None:
    system = skewed_system
    scanner = system.demo.scanners[0]
    sid = scanner.scanner_id
    with system.as_user("ADMIN_JWT") as admin:
        wait_until(
            lambda: admin.get(f"/v1/scanners/{sid}/authorisation").status_code == 200,
            30,
            "directory reached the token-issuer",
        )

    closed: list[float] = []
    hops: list[float] = []
    for round_ in range(3):
        authorised = redeemed(system, sid, scanner.serial_number)
        credential = authorised["credential"]
        wait_until(lambda c=credential: system.upload_status(c) == 202, 5, "gate opened")

        with system.as_user("ADMIN_JWT") as admin:
            assert admin.delete(f"/v1/scanners/{sid}/authorisation").status_code == 204
        started = time.monotonic()
        wait_until(lambda c=credential: system.upload_status(c) == 403, 10, "gate closed", 0.02)
        closed.append(time.monotonic() - started)

        # The skew was in force: the deauthorisation is stamped before the redemption it
        # follows (what the old gate compared, and so left the credential open).
        [deauthorised] = asyncio.run(
            wait_for_events(
                system.bootstrap,
                PUBLIC_TOPIC,
                "ScannerDeauthorised",
                count=round_ + 1,
            )
        )[round_:]
        assert at(deauthorised.data["deauthorised_at"]) < at(authorised["authorised_at"])
        [revoked] = asyncio.run(
            wait_for_events(
                system.bootstrap,
                PUBLIC_TOPIC,
                "CredentialsRevoked",
                match=lambda e, d=deauthorised: e.data["cause_event_id"] == d.id,
            )
        )
        assert revoked.source == "scanner-auth/redeemer"
        assert revoked.data["credential_ids"] == [authorised["credential_id"]]
        # The extra hop: the broker's timestamps of the two records.
        records = {
            r.value: r.timestamp for r in asyncio.run(read_topic(system.bootstrap, PUBLIC_TOPIC))
        }
        stamps = {
            kind: next(t for value, t in records.items() if event_id.encode() in value)
            for kind, event_id in (("deauthorised", deauthorised.id), ("revoked", revoked.id))
        }
        hops.append((stamps["revoked"] - stamps["deauthorised"]) / 1000)

        # The redeemer says so too: the revoked credential can no longer rotate.
        with system.device("redeemer", credential) as device:
            assert device.post("/v1/credentials/rotate").status_code == 403
        assert system.upload_status(credential) == 403

    print(
        f"\nDELETE authorisation -> 403 at the gate: {', '.join(f'{s:.3f}' for s in closed)} s; "
        f"ScannerDeauthorised -> CredentialsRevoked on the topic (the extra hop): "
        f"{', '.join(f'{h:.3f}' for h in hops)} s"
    )
    assert max(closed) <= ONE_SECOND, closed
