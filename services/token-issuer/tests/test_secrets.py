"""The code stays secret: never in plaintext in the database, never on the public topic, never
in a log line (the `make_service` fixture checks every log record and line of every test), and
every use of it is audited."""

from __future__ import annotations

import base64
import hashlib
import logging

import pytest
from token_issuer_support import A1, A2, ADMIN_A, ADMIN_B, B1, SUPPORT, USER_A, Harness, code_forms

from scanner_auth_shared.events import NOTIFICATIONS_TOPIC, PUBLIC_TOPIC, ScannerAuthorised, utcnow
from scanner_auth_shared.testing.kafka import read_topic, wait_for_events

pytestmark = pytest.mark.integration


def encodings(code: str) -> list[bytes]:
    """A code written down in any way a careless program might."""
    out: list[bytes] = []
    for form in code_forms(code):
        raw = form.encode()
        out += [
            raw,
            raw.hex().encode(),
            base64.b64encode(raw),
            base64.urlsafe_b64encode(raw).rstrip(b"="),
        ]
    return out


async def test_the_code_never_appears_in_the_database_or_on_the_public_topic(
    two_orgs: Harness,
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = two_orgs
    # Every path the code travels: generate, supersede, view, email, revoke, redeem.
    a1 = await h.generate(ADMIN_A, A1)
    a1_again = await h.generate(SUPPORT, A1)
    a2 = await h.generate(ADMIN_A, A2)
    b1 = await h.generate(ADMIN_B, B1)
    assert (await h.call(USER_A, "GET", f"/v1/scanners/{A1}/authorisation-token")).json()[
        "code"
    ] == a1_again["code"]
    assert (
        await h.call(USER_A, "POST", f"/v1/scanners/{A1}/authorisation-token/email")
    ).status_code == 202
    assert (
        await h.call(ADMIN_A, "DELETE", f"/v1/scanners/{A2}/authorisation-token")
    ).status_code == 204
    events = await h.publish(
        PUBLIC_TOPIC,
        ScannerAuthorised(
            scanner_id=B1,
            org_id="org-b",
            token_id=b1["token_id"],
            serial_number="LVS-B1-0003",
            credential_id="cred-b1",
            credential_digest=hashlib.sha256(b"x").hexdigest(),
            authorised_at=utcnow(),
        ),
        source="scanner-auth/redeemer",
    )
    await h.applied("token-issuer.authorisations", events)
    codes = [t["code"] for t in (a1, a1_again, a2, b1)]
    assert h.codes == set(codes)

    # The database, every table, every column, as text (bytea as hex).
    tables = await h.fetch(
        "SELECT table_name FROM information_schema.tables"
        " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
    )
    names = {r["table_name"] for r in tables}
    assert {"tokens", "audit_log", "outbox", "scanners", "principals_seen"} <= names
    dump = b""
    for name in sorted(names):
        for row in await h.fetch(f'SELECT t::text AS row FROM "{name}" t'):
            dump += row["row"].encode() + b"\n"
    assert a1["token_id"].encode() in dump and b"u-user-a" in dump  # the dump is complete
    stored = await h.fetch("SELECT token_id, status, code_ciphertext FROM tokens")
    assert {r["status"] for r in stored} == {"active", "revoked", "redeemed"}
    assert [r["token_id"] for r in stored if r["code_ciphertext"] is not None] == [
        a1_again["token_id"]
    ]  # only the active token keeps its (encrypted) code
    for code in codes:
        assert not [e for e in encodings(code) if e in dump]

    # Every event on the public topic; the internal one carries it sealed only.
    await wait_for_events(h.bootstrap, PUBLIC_TOPIC, "TokenIssued", count=4)
    await wait_for_events(h.bootstrap, NOTIFICATIONS_TOPIC, "TokenEmailRequested")
    for topic in (PUBLIC_TOPIC, NOTIFICATIONS_TOPIC):
        records = await read_topic(h.bootstrap, topic)
        assert records
        for record in records:
            for code in codes:
                assert not [e for e in encodings(code) if e in record.value], topic

    # Audited, in the table and in a log line each.
    audit = await h.fetch(
        "SELECT action, actor_user_id, scanner_id, token_id FROM audit_log ORDER BY id"
    )
    assert [(r["action"], r["actor_user_id"], r["scanner_id"], r["token_id"]) for r in audit] == [
        ("generated", ADMIN_A.sub, A1, a1["token_id"]),
        ("generated", SUPPORT.sub, A1, a1_again["token_id"]),
        ("generated", ADMIN_A.sub, A2, a2["token_id"]),
        ("generated", ADMIN_B.sub, B1, b1["token_id"]),
        ("viewed_code", USER_A.sub, A1, a1_again["token_id"]),
        ("emailed", USER_A.sub, A1, a1_again["token_id"]),
        ("revoked", ADMIN_A.sub, A2, a2["token_id"]),
    ]
    lines = [r for r in caplog.records if r.name == "scanner_auth.token_issuer.audit"]
    assert [(r.audit_action, r.actor_user_id, r.token_id) for r in lines] == [  # type: ignore[attr-defined]
        (r["action"], r["actor_user_id"], r["token_id"]) for r in audit
    ]
    assert all(r.levelno == logging.INFO for r in lines)
