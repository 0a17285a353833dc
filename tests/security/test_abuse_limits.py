"""Issue 18, on the running token-issuer process: an email flood, an oversized body before any
authentication, and a `support` role claimed from outside Loadscan."""

from __future__ import annotations

import asyncio
import time

import pytest
from fault_kit import ORG, Rig

from scanner_auth_shared.events import NOTIFICATIONS_TOPIC

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

PER_CODE = 5  # EMAIL_LIMIT_PER_CODE_PER_HOUR, the default
CAP = 16384  # MAX_REQUEST_BODY_BYTES, the default


async def test_an_email_flood_sends_at_most_the_quota(rig: Rig) -> None:
    (scanner,) = await rig.scanners(1, "sc-flood")
    await rig.generate(scanner.scanner_id)
    path = f"/v1/scanners/{scanner.scanner_id}/authorisation-token/email"
    async with rig.admin() as admin:
        answers = await asyncio.gather(
            *(admin.post(path, json={"recipient_user_id": scanner.viewer_id}) for _ in range(60))
        )
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [202] * PER_CODE + [429] * (60 - PER_CODE), statuses
    refused = next(r for r in answers if r.status_code == 429)
    assert refused.headers["content-type"] == "application/problem+json"
    assert 1 <= int(refused.headers["retry-after"]) <= 3600
    # Everything the token-issuer committed is on the topic once its outbox is empty.
    await rig.outbox_empty("token-issuer")
    requested = [
        e
        for e in await rig.events(NOTIFICATIONS_TOPIC, "TokenEmailRequested")
        if e.subject == scanner.scanner_id
    ]
    assert len(requested) == PER_CODE
    mail = rig.stack.mail
    assert mail is not None

    async def delivered() -> bool:
        return len(mail.to(scanner.viewer_email)) >= PER_CODE

    deadline = time.monotonic() + 60
    while not await delivered():
        assert time.monotonic() < deadline, "the accepted emails were not delivered"
        await asyncio.sleep(0.2)
    assert len(mail.to(scanner.viewer_email)) == PER_CODE  # one per accepted request


async def _exchange(rig: Rig, head: bytes, body: bytes = b"") -> bytes:
    """Send `head` and `body` (never the end of a body), then read the answer's first bytes:
    an answer means the server decided without waiting for the rest of the body."""
    port = int(rig.url("token-issuer").rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        return await asyncio.wait_for(reader.read(4096), 30)
    finally:
        writer.close()


async def test_an_oversized_body_is_refused_before_authentication(rig: Rig) -> None:
    path = "/v1/scanners/sc-quarry-1/authorisation-token/email"
    host = f"Host: 127.0.0.1\r\nContent-Type: application/json\r\nAuthorization: Bearer {rig.token_for('u-alice')}\r\n"  # noqa: E501
    # Declared 10 MB, no JWT: answered 413 (not 401) before a byte of the body is sent.
    started = time.monotonic()
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 10485760\r\n\r\n".encode()
    answer = await _exchange(rig, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"application/problem+json" in answer
    assert time.monotonic() - started < 10

    # The same with a valid JWT: no different.
    head = f"POST {path} HTTP/1.1\r\n{host}Content-Length: 10485760\r\n\r\n".encode()
    answer = await _exchange(rig, head)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]

    # Chunked: twice the cap, and no last chunk. Answered at once (a server reading on would
    # wait for the rest of the body until the client gave up).
    head = f"POST {path} HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n".encode()
    chunk = b"400\r\n" + b" " * 1024 + b"\r\n"  # 1 KiB a chunk
    answer = await _exchange(rig, head, chunk * (2 * CAP // 1024))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]

    # Under the cap the request goes on as before.
    async with rig.admin() as admin:
        r = await admin.post(
            path,
            content=b"{" + b" " * (CAP - 2) + b"}",
            headers={"Content-Type": "application/json"},
        )
    assert r.status_code in (202, 409, 429), r.text  # parsed: accepted, no active code, quota


async def test_support_claimed_from_another_organisation_is_no_support(rig: Rig) -> None:
    (scanner,) = await rig.scanners(1, "sc-support")
    identity = rig.stack.identity
    impostor = identity.mint("u-impostor", "org-harbour", ["support"], "x@harbour.example")
    real = identity.mint("u-sam", "org-loadscan", ["support"], "sam@loadscan.example")
    path = f"/v1/scanners/{scanner.scanner_id}/authorisation-token"
    async with rig.device("token-issuer") as client:
        as_real = {"Authorization": f"Bearer {real}"}
        as_impostor = {"Authorization": f"Bearer {impostor}"}
        r = await client.post(path, headers=as_real)
        assert r.status_code == 201, r.text  # Loadscan's support manages every organisation
        for method in ("GET", "POST", "DELETE"):
            r = await client.request(method, path, headers=as_impostor)
            assert r.status_code == 404, (method, r.text)  # as anyone outside ORG: not there
            assert r.headers["content-type"] == "application/problem+json"
        listed = await client.get("/v1/scanners", headers=as_impostor)
        assert listed.status_code == 200
        assert all(s["org_id"] != ORG for s in listed.json())
