"""The directory view and the authorisation view: idempotent, tolerant of order, and what
follows from a scanner being removed, authorised or deauthorised."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

import pytest
from token_issuer_support import A1, A2, ADMIN_A, SCANNERS, SUPPORT, USER_A, Harness

from scanner_auth_shared.events import (
    PUBLIC_TOPIC,
    CredentialRotated,
    ScannerAccessGranted,
    ScannerAccessRevoked,
    ScannerAuthorised,
    ScannerRegistered,
    ScannerRemoved,
    UserUpserted,
    new_event,
    utcnow,
)
from scanner_auth_shared.testing.kafka import events_on, wait_for_events

pytestmark = pytest.mark.integration

AUTHORISATIONS = "token-issuer.authorisations"


def authorised(
    scanner_id: str, token_id: str, credential_id: str, *, org: str = "org-a", at: Any = None
) -> ScannerAuthorised:
    return ScannerAuthorised(
        scanner_id=scanner_id,
        org_id=org,
        token_id=token_id,
        serial_number=SCANNERS[scanner_id].serial_number if scanner_id in SCANNERS else "S-1",
        credential_id=credential_id,
        credential_digest=hashlib.sha256(credential_id.encode()).hexdigest(),
        authorised_at=at or utcnow(),
    )


async def redeemer_says(h: Harness, *datas: Any) -> None:
    events = await h.publish(PUBLIC_TOPIC, *datas, source="scanner-auth/redeemer")
    await h.applied(AUTHORISATIONS, events)


async def ids_listed(h: Harness, who: Any) -> dict[str, str]:
    return {s["scanner_id"]: s["name"] for s in (await h.call(who, "GET", "/v1/scanners")).json()}


async def test_directory_view_is_idempotent_and_tolerates_any_order(service: Harness) -> None:
    h = service
    first_registration = new_event(SCANNERS[A1], source="myscanner/directory")
    await h.directory(
        ScannerAccessGranted(scanner_id=A1, user_id=USER_A.sub),  # before scanner and user
        ScannerRemoved(scanner_id="sc-ghost"),  # never seen: no-op
        ScannerAccessRevoked(scanner_id="sc-ghost", user_id=USER_A.sub),
        first_registration,
        first_registration,  # delivered twice
        UserUpserted(
            user_id=USER_A.sub, org_id="org-a", email=USER_A.email or "", display_name="Uma User"
        ),
    )
    assert await ids_listed(h, USER_A) == {A1: SCANNERS[A1].name}
    assert await h.fetch("SELECT * FROM scanners WHERE scanner_id = 'sc-ghost'") == []

    renamed = SCANNERS[A1].model_copy(update={"name": "Alpha renamed"})
    await h.directory(renamed)
    assert await ids_listed(h, USER_A) == {A1: "Alpha renamed"}
    await h.directory(first_registration)  # a redelivery of the old event changes nothing
    assert await ids_listed(h, USER_A) == {A1: "Alpha renamed"}

    await h.directory(ScannerAccessRevoked(scanner_id=A1, user_id=USER_A.sub))
    assert await ids_listed(h, USER_A) == {}
    path = f"/v1/scanners/{A1}/authorisation-token"
    assert (await h.call(USER_A, "GET", path)).status_code == 404


async def test_redemption_rotation_and_removal(two_orgs: Harness) -> None:
    h = two_orgs
    path = f"/v1/scanners/{A1}"
    token = await h.generate(ADMIN_A, A1)
    at = utcnow()
    await redeemer_says(h, authorised(A1, token["token_id"], "cred-1", at=at))
    shown = (await h.call(USER_A, "GET", f"{path}/authorisation-token")).json()
    assert shown["status"] == "redeemed" and shown["code"] is None
    assert shown["redeemed_at"] == at.isoformat().replace("+00:00", "Z")
    authorisation = (await h.call(USER_A, "GET", f"{path}/authorisation")).json()
    assert authorisation == {
        "status": "authorised",
        "authorised_at": shown["redeemed_at"],
        "credential_id": "cred-1",
        "serial_number": SCANNERS[A1].serial_number,
    }
    listed = {s["scanner_id"]: s for s in (await h.call(USER_A, "GET", "/v1/scanners")).json()}
    assert listed[A1]["authorisation_status"] == "authorised"
    assert listed[A1]["token_status"] == "redeemed"

    await redeemer_says(
        h,
        CredentialRotated(
            scanner_id=A1,
            org_id="org-a",
            credential_id="cred-2",
            credential_digest="0" * 64,
            previous_credential_id="cred-1",
            previous_valid_until=utcnow() + timedelta(hours=1),
            rotated_at=utcnow(),
        ),
    )
    authorisation = (await h.call(USER_A, "GET", f"{path}/authorisation")).json()
    assert authorisation["credential_id"] == "cred-2"

    pending = await h.generate(ADMIN_A, A1)
    await h.directory(ScannerRemoved(scanner_id=A1))
    for who in (ADMIN_A, SUPPORT, USER_A):
        for endpoint in ("authorisation-token", "authorisation", "users"):
            assert (await h.call(who, "GET", f"{path}/{endpoint}")).status_code == 404
        assert (await h.call(who, "POST", f"{path}/authorisation-token")).status_code == 404
        assert A1 not in await ids_listed(h, who)
    revoked = await wait_for_events(h.bootstrap, PUBLIC_TOPIC, "TokenRevoked")
    assert revoked[0].data["token_id"] == pending["token_id"]
    assert (revoked[0].data["reason"], revoked[0].data["revoked_by"]) == ("revoked", "directory")
    deauthorised = await wait_for_events(h.bootstrap, PUBLIC_TOPIC, "ScannerDeauthorised")
    assert {
        k: deauthorised[0].data[k]
        for k in ("scanner_id", "org_id", "credential_id", "deauthorised_by", "reason")
    } == {
        "scanner_id": A1,
        "org_id": "org-a",
        "credential_id": "cred-2",
        "deauthorised_by": "directory",
        "reason": "scanner_removed",
    }

    # Removal is final: a later registration of the same id does not bring it back.
    await h.directory(SCANNERS[A1])
    assert A1 not in await ids_listed(h, SUPPORT)
    # A redemption the redeemer made before it heard of the removal is cancelled at once.
    await redeemer_says(h, authorised(A1, pending["token_id"], "cred-3"))
    late = await wait_for_events(h.bootstrap, PUBLIC_TOPIC, "ScannerDeauthorised", count=2)
    assert late[1].data["credential_id"] == "cred-3"
    assert late[1].data["reason"] == "scanner_removed"


async def test_deauthorise_always_emits_and_fails_closed(two_orgs: Harness) -> None:
    h = two_orgs
    # Never authorised as far as we know: still emitted, without a credential id.
    assert (await h.call(ADMIN_A, "DELETE", f"/v1/scanners/{A2}/authorisation")).status_code == 204
    first = await wait_for_events(h.bootstrap, PUBLIC_TOPIC, "ScannerDeauthorised")
    assert first[0].data["credential_id"] is None
    assert first[0].data["deauthorised_by"] == ADMIN_A.sub
    assert first[0].data["reason"] == "deauthorised"

    token = await h.generate(ADMIN_A, A1)
    before = utcnow()
    await redeemer_says(h, authorised(A1, token["token_id"], "cred-1", at=before))
    assert (await h.call(SUPPORT, "DELETE", f"/v1/scanners/{A1}/authorisation")).status_code == 204
    events = await wait_for_events(h.bootstrap, PUBLIC_TOPIC, "ScannerDeauthorised", count=2)
    assert (events[1].data["credential_id"], events[1].data["deauthorised_by"]) == (
        "cred-1",
        SUPPORT.sub,
    )
    unauthorised = {
        "status": "unauthorised",
        "authorised_at": None,
        "credential_id": None,
        "serial_number": None,
    }
    path = f"/v1/scanners/{A1}/authorisation"
    assert (await h.call(USER_A, "GET", path)).json() == unauthorised

    # A redemption from before the deauthorisation, heard late, does not re-authorise...
    await redeemer_says(
        h, authorised(A1, token["token_id"], "cred-0", at=before - timedelta(seconds=1))
    )
    assert (await h.call(USER_A, "GET", path)).json() == unauthorised
    # ... a later one does.
    await redeemer_says(h, authorised(A1, "token-from-elsewhere", "cred-2"))
    assert (await h.call(USER_A, "GET", path)).json()["credential_id"] == "cred-2"

    # Authorised before the directory told us about the scanner: kept, shown once registered.
    await redeemer_says(h, authorised("sc-new", "t-new", "cred-new"))
    await h.directory(
        ScannerRegistered(
            scanner_id="sc-new", org_id="org-a", serial_number="S-1", name="New", model="MPS"
        )
    )
    shown = (await h.call(ADMIN_A, "GET", "/v1/scanners/sc-new/authorisation")).json()
    assert shown["status"] == "authorised" and shown["credential_id"] == "cred-new"

    audit = await h.fetch(
        "SELECT actor_user_id, scanner_id FROM audit_log WHERE action = 'deauthorised' ORDER BY id"
    )
    assert [(r["actor_user_id"], r["scanner_id"]) for r in audit] == [
        (ADMIN_A.sub, A2),
        (SUPPORT.sub, A1),
    ]
    await h.drained()
    assert len(await events_on(h.bootstrap, PUBLIC_TOPIC, "ScannerDeauthorised")) == 2
