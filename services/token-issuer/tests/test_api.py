"""The HTTP layer over the memory fakes, in process: bearer authentication (and the record of
who authenticated), each refusal as its problem and status, the bodies and headers the routes
answer. What the routes do is the use cases' (test_handlers_*); this is the wiring."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from faststream.kafka import KafkaBroker
from memory_world import World
from token_issuer_support import A1, ADMIN_A, B1, PLAIN_A, USER_A, Who

from scanner_auth_shared.api import fastapi_app
from scanner_auth_shared.auth import JwtVerifier
from scanner_auth_shared.runtime import ServiceRuntime
from scanner_auth_shared.settings import ServiceSettings
from scanner_auth_shared.testing.identity import TestIdentity
from token_issuer import api

pytestmark = pytest.mark.unit


@pytest.fixture
async def http(orgs: World, identity: TestIdentity) -> AsyncIterator[httpx.AsyncClient]:
    runtime = ServiceRuntime(
        name="token-issuer",
        settings=ServiceSettings(kafka_bootstrap_servers="test:9092"),
        broker=KafkaBroker("test:9092"),
    )  # never started: nothing here connects
    app = fastapi_app(runtime, title="token-issuer under test", routers=[api.router])
    verifier = JwtVerifier(
        issuer=identity.issuer, audience=identity.audience, public_key_pem=identity.public_pem
    )
    authenticator = api.Authenticator(verifier, orgs.uow, orgs.ctx)
    api.install(app, api.Services(orgs.uow, orgs.ctx, authenticator))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


def bearer(identity: TestIdentity, who: Who) -> dict[str, str]:
    token = identity.mint(who.sub, who.org_id, list(who.roles), who.email)
    return {"Authorization": f"Bearer {token}"}


async def test_no_or_a_bad_bearer_token_is_401(http: httpx.AsyncClient) -> None:
    for headers in ({}, {"Authorization": "Bearer not.a.jwt"}, {"Authorization": "Basic x"}):
        response = await http.get("/v1/scanners", headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_an_authenticated_caller_is_recorded(
    http: httpx.AsyncClient, identity: TestIdentity, orgs: World
) -> None:
    response = await http.get("/v1/scanners", headers=bearer(identity, ADMIN_A))
    assert response.status_code == 200
    assert orgs.store.seen[ADMIN_A.sub][0].roles == ("admin",)


@pytest.mark.parametrize(
    ("who", "method", "path", "body", "status", "detail"),
    [
        (ADMIN_A, "GET", f"/v1/scanners/{B1}/authorisation", None, 404, "no such scanner"),
        (PLAIN_A, "GET", f"/v1/scanners/{A1}/authorisation-token", None, 404, "no such scanner"),
        (USER_A, "POST", f"/v1/scanners/{A1}/authorisation-token", None, 403, "not manage"),
        (USER_A, "GET", f"/v1/scanners/{A1}/authorisation-token", None, 404, "ever issued"),
        (USER_A, "POST", f"/v1/scanners/{A1}/authorisation-token/email", None, 409, "no active"),
        (
            ADMIN_A, "POST", f"/v1/scanners/{A1}/authorisation-token/email",
            {"recipient_user_id": PLAIN_A.sub}, 422, "cannot view",
        ),
    ],
)  # fmt: skip
async def test_each_refusal_is_its_problem(
    http: httpx.AsyncClient,
    identity: TestIdentity,
    orgs: World,
    who: Who,
    method: str,
    path: str,
    body: Any,
    status: int,
    detail: str,
) -> None:
    if status == 422:
        await orgs.generate(ADMIN_A, A1)
    response = await http.request(method, path, headers=bearer(identity, who), json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert detail in response.json()["detail"]


async def test_a_generated_token_is_answered_uncached_then_shown(
    http: httpx.AsyncClient, identity: TestIdentity
) -> None:
    path = f"/v1/scanners/{A1}/authorisation-token"
    created = await http.post(path, headers=bearer(identity, ADMIN_A))
    assert created.status_code == 201 and created.headers["cache-control"] == "no-store"
    shown = await http.get(path, headers=bearer(identity, USER_A))
    assert shown.status_code == 200 and shown.headers["cache-control"] == "no-store"
    assert shown.json() == created.json()
    email = await http.post(f"{path}/email", headers=bearer(identity, USER_A))
    assert email.status_code == 202 and set(email.json()) == {"notification_id"}
    assert (await http.delete(path, headers=bearer(identity, ADMIN_A))).status_code == 204
    authorisation = await http.get(
        f"/v1/scanners/{A1}/authorisation", headers=bearer(identity, USER_A)
    )
    assert authorisation.json() == {
        "status": "unauthorised", "authorised_at": None, "credential_id": None,
        "serial_number": None,
    }  # fmt: skip
    deauthorised = await http.delete(
        f"/v1/scanners/{A1}/authorisation", headers=bearer(identity, ADMIN_A)
    )
    assert deauthorised.status_code == 204
