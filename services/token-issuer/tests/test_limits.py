"""Issue 18's limits on a running token-issuer (real PostgreSQL, real Kafka): the email quotas
hold with two replicas racing on one database; a request body is capped before it is parsed or
its JWT verified; `support` counts only from the Loadscan organisation."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from token_issuer_support import A1, A2, ADMIN_A, B1, USER_A, Harness, Who, directory_of_two_orgs

pytestmark = pytest.mark.integration

EMAIL = "/v1/scanners/{}/authorisation-token/email"


async def test_two_replicas_racing_send_a_code_at_most_per_code_times(
    make_service: Callable[..., Any],
) -> None:
    """20 concurrent email requests for one code, spread over two replicas on one database:
    exactly EMAIL_LIMIT_PER_CODE_PER_HOUR are accepted, the rest 429 with `Retry-After`."""
    limits = {"email_limit_per_code_per_hour": 5, "email_limit_per_recipient_per_hour": 1000}
    one: Harness = await make_service(**limits)
    two: Harness = await make_service(**limits)
    await one.directory(*directory_of_two_orgs())
    await one.generate(ADMIN_A, A1)
    replicas = [one, two] * 10
    answers = await asyncio.gather(
        *(
            h.call(ADMIN_A, "POST", EMAIL.format(A1), json={"recipient_user_id": USER_A.sub})
            for h in replicas
        )
    )
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [202] * 5 + [429] * 15, statuses
    for r in answers:
        if r.status_code == 429:
            assert r.headers["content-type"] == "application/problem+json"
            assert 3500 <= int(r.headers["retry-after"]) <= 3600  # the first one leaves in 1 h
            assert "emailed too often" in r.json()["detail"]
    requested = await one.fetch("SELECT count(*) AS n FROM email_requests")
    assert requested[0]["n"] == 5
    emailed = await one.fetch(
        "SELECT count(*) AS n FROM audit_log WHERE action = 'emailed' AND scanner_id = $1", A1
    )
    assert emailed[0]["n"] == 5  # written with the outbox row, in the same transaction


async def test_two_replicas_racing_send_one_address_at_most_per_recipient_times(
    make_service: Callable[..., Any],
) -> None:
    """The same address from two scanners (two scanner locks: only the address's lock orders
    them), over two replicas: exactly EMAIL_LIMIT_PER_RECIPIENT_PER_HOUR accepted."""
    limits = {"email_limit_per_code_per_hour": 1000, "email_limit_per_recipient_per_hour": 4}
    one: Harness = await make_service(**limits)
    two: Harness = await make_service(**limits)
    await one.directory(*directory_of_two_orgs())
    await one.generate(ADMIN_A, A1)
    await one.generate(ADMIN_A, A2)
    jobs = [(h, s) for h in (one, two) for s in (A1, A2)] * 5
    answers = await asyncio.gather(
        *(h.call(ADMIN_A, "POST", EMAIL.format(s), json={}) for h, s in jobs)  # to oneself
    )
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [202] * 4 + [429] * 16, statuses
    refused = next(r for r in answers if r.status_code == 429)
    assert "recipient" in refused.json()["detail"]
    rows = await one.fetch("SELECT recipient, count(*) AS n FROM email_requests GROUP BY 1")
    assert [(r["recipient"], r["n"]) for r in rows] == [(ADMIN_A.email, 4)]


# ------------------------------------------------------------------------------ body cap


class _CountingJwks:
    """A JWKS endpoint on loopback that counts its fetches (serves no key)."""

    def __init__(self) -> None:
        self.fetches = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = b'{"keys": []}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def jwks() -> Iterator[_CountingJwks]:
    server = _CountingJwks()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


TEN_MB = 10 * 1024 * 1024
CHUNK = 4096


async def test_a_large_body_is_refused_before_parsing_and_before_any_jwt_work(
    make_service: Callable[..., Any], jwks: _CountingJwks
) -> None:
    h: Harness = await make_service(
        auth_public_key_pem=None, auth_jwks_url=jwks.url, max_request_body_bytes=16384
    )
    headers = h.auth(ADMIN_A)
    path = EMAIL.format(A1)

    # Declared: Content-Length 10 MB. Answered without reading the body.
    pulled = 0

    async def body(total: int) -> AsyncIterator[bytes]:
        nonlocal pulled
        while pulled < total:
            pulled += CHUNK
            yield b" " * CHUNK

    started = time.monotonic()
    declared = {**headers, "Content-Length": str(TEN_MB), "Content-Type": "application/json"}
    r = await h.client.post(path, headers=declared, content=body(TEN_MB))
    assert r.status_code == 413, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["detail"] == "the body must be at most 16384 bytes"
    assert pulled <= CHUNK  # nothing (at most what the client had sent already) was read

    # Chunked (no Content-Length): read up to the cap, then refused; the rest never read.
    pulled = 0
    chunked = {**headers, "Content-Type": "application/json"}
    r = await h.client.post(path, headers=chunked, content=body(TEN_MB))
    assert r.status_code == 413, r.text
    assert pulled <= 16384 + CHUNK, pulled
    assert time.monotonic() - started < 10  # not 10 MB read and parsed (loaded 2 cores)
    assert jwks.fetches == 0  # no JWT work for a refused body

    # The same caller with a body under the cap: its JWT is checked (the JWKS fetched).
    r = await h.client.post(path, headers=headers, json={"recipient_user_id": USER_A.sub})
    assert r.status_code == 401  # the JWKS here holds no key
    assert jwks.fetches >= 1


# ------------------------------------------------------------------------------ support


async def test_support_from_another_organisation_is_no_support(two_orgs: Harness) -> None:
    h = two_orgs
    impostor = Who("u-impostor", "org-b", ("support",), "impostor@b.example")
    real = Who("u-sam", "org-loadscan", ("support",), "sam@loadscan.example")
    listed = await h.call(real, "GET", "/v1/scanners")
    assert {s["scanner_id"] for s in listed.json()} == {A1, A2, B1}
    # From org-b, `support` gives nothing beyond org-b's plain user: no grants, nothing listed.
    listed = await h.call(impostor, "GET", "/v1/scanners")
    assert listed.status_code == 200 and listed.json() == []
    for method, path, status in (
        ("POST", f"/v1/scanners/{A1}/authorisation-token", 404),  # org A: not visible
        ("GET", f"/v1/scanners/{A1}/users", 404),
        ("POST", f"/v1/scanners/{B1}/authorisation-token", 404),  # own org, no grant
        ("DELETE", f"/v1/scanners/{A1}/authorisation", 404),
    ):
        r = await h.call(impostor, method, path)
        assert r.status_code == status, (method, path, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    roles = await h.fetch("SELECT roles FROM principals_seen WHERE user_id = $1", impostor.sub)
    assert [list(r["roles"]) for r in roles] == [[]]  # not remembered as support either
