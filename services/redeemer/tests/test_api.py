"""The redeemer's HTTP answers, the app as app.py builds it over the memory fakes: the uniform
refusal byte for byte, each refusal's status and headers, bodies parsed without echo, the
body limit, the client address, and an outage answered 503 by the shared middleware."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from faststream.kafka import KafkaBroker

from redeemer.adapters.memory import MemoryUnitOfWork
from redeemer.api import UNIFORM_REFUSAL, Services
from redeemer.app import SOURCE, http_app
from scanner_auth_shared.crypto import generate_code, generate_credential
from scanner_auth_shared.http import parse_networks
from scanner_auth_shared.runtime import ServiceRuntime
from scanner_auth_shared.settings import ServiceSettings

from .conftest import CLIENT_IP, World

pytestmark = pytest.mark.unit

PROXY = "10.1.2.3"


def _app(world: World) -> Any:
    runtime = ServiceRuntime(
        name="redeemer",
        settings=ServiceSettings(kafka_bootstrap_servers="test:9092"),
        broker=KafkaBroker("test:9092"),
    )
    services = Services(
        unit_of_work=world.uow,
        config=world.config,
        trusted_proxies=parse_networks("10.0.0.0/8"),
        max_body_bytes=1024,
    )
    return http_app(runtime, services)


def _client(world: World, host: str = CLIENT_IP) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=_app(world), client=(host, 5000)), base_url="http://test"
    )


@pytest.fixture
async def http(world: World) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(world) as client:
        yield client


async def _redeem(
    http: httpx.AsyncClient, code: str, serial: str, **headers: str
) -> httpx.Response:
    return await http.post(
        "/v1/authorisations", json={"code": code, "serial_number": serial}, headers=headers
    )


def test_the_uniform_refusal_is_the_documented_problem():
    assert UNIFORM_REFUSAL == (
        b'{"type":"about:blank","title":"Bad Request","status":400,'
        b'"detail":"the code was not accepted for this scanner"}'
    )


async def test_an_authorisation_answers_201_with_the_credential_not_to_be_stored(
    world: World,
    http: httpx.AsyncClient,
):
    await world.register("sc-1", "LVS-0001")
    issued = await world.issue("sc-1")
    answer = await _redeem(http, issued.code, "  LVS-0001 ")
    assert answer.status_code == 201, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert set(body) == {"scanner_id", "credential_id", "credential", "authorised_at"}
    assert body["scanner_id"] == "sc-1"
    assert body["authorised_at"] == world.store.clock.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def test_every_refused_code_answers_the_same_bytes(world: World, http: httpx.AsyncClient):
    for n in range(1, 5):
        await world.register(f"sc-{n}", f"LVS-000{n}")
    wrong_serial = await world.issue("sc-1")
    expired = await world.issue("sc-2", ttl=1)
    revoked = await world.issue("sc-3")
    await world.revoke(revoked)
    used = await world.issue("sc-4")
    await world.redeem(used.code, "LVS-0004")
    world.store.advance(1)

    answers = [
        await _redeem(http, generate_code(), "LVS-0009"),
        await _redeem(http, wrong_serial.code, "LVS-0002"),
        await _redeem(http, expired.code, "LVS-0002"),
        await _redeem(http, revoked.code, "LVS-0003"),
        await _redeem(http, used.code, "LVS-0004"),
    ]
    assert [a.status_code for a in answers] == [400] * 5
    assert {a.content for a in answers} == {UNIFORM_REFUSAL}
    assert len({tuple(sorted(a.headers.items())) for a in answers}) == 1
    assert answers[0].headers["content-type"] == "application/problem+json"
    assert [r[0] for r in world.rejections()] == [
        "invalid_code",
        "serial_mismatch",
        "expired",
        "revoked",
        "already_used",
    ]


async def test_a_rate_limited_attempt_answers_429_with_retry_after(
    world: World,
    http: httpx.AsyncClient,
):
    for _ in range(5):
        await _redeem(http, generate_code(), "LVS-0001")
    locked = await _redeem(http, generate_code(), "LVS-0001")
    assert locked.status_code == 429
    assert locked.headers["content-type"] == "application/problem+json"
    assert locked.headers["retry-after"] == "900"
    assert locked.json()["detail"] == "too many failed attempts; try again later"


GOOD = "YD20-66YF-H255"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"null",
        b"[]",
        b'"YD20-66YF-H255"',
        b"{",
        b"not json YD20-66YF-H255",
        b'{"serial_number": "LVS-1"}',
        b'{"code": "YD20-66YF-H255"}',
        b'{"code": null, "serial_number": "LVS-1"}',
        b'{"code": ["YD20-66YF-H255"], "serial_number": "LVS-1"}',
        b'{"code": "YD20-66YF-H255", "serial_number": 7}',
        b'{"code": "YD20-66YF-H255", "serial_number": "   "}',
        b'{"code": "YD20-66YF-H255", "serial_number": "' + b"x" * 65 + b'"}',
        b'{"code": "' + b"Y" * 65 + b'", "serial_number": "LVS-1"}',
        b'{"code": "SECRET-CODE", "serial_number": "LVS-1"}',  # a malformed code
        b'{"code": "YD20-66YF-H256", "serial_number": "LVS-1"}',  # a typo
    ],
)
async def test_a_malformed_body_or_code_is_a_422_that_repeats_nothing(
    world: World,
    http: httpx.AsyncClient,
    body: bytes,
):
    answer = await http.post(
        "/v1/authorisations", content=body, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 422
    assert answer.headers["content-type"] == "application/problem+json"
    problem = orjson.loads(answer.content)
    assert problem["status"] == 422 and problem["title"] == "Unprocessable Content"
    for echoed in (b"YD20", b"H256", b"LVS-1", b"SECRET"):
        assert echoed not in answer.content
    assert world.store.events() == [] and world.store.commits == 0  # not an attempt


async def test_a_typo_says_so(http: httpx.AsyncClient):
    answer = await _redeem(http, "YD20-66YF-H256", "LVS-1")
    assert answer.status_code == 422 and "typo" in answer.json()["detail"]


async def test_a_body_over_the_limit_is_refused_unread(world: World, http: httpx.AsyncClient):
    declared = await http.post("/v1/authorisations", content=b" " * 2000)
    assert declared.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: read up to the limit only
        for _ in range(10):
            yield b" " * 200

    streamed = await http.post("/v1/authorisations", content=chunks())
    assert streamed.status_code == 413
    assert streamed.headers["content-type"] == "application/problem+json"
    padded = await http.post(
        "/v1/authorisations",  # within the limit: parsed as usual
        content=b'{"code": "' + GOOD.encode() + b'", "serial_number": "S"}' + b" " * 900,
    )
    assert padded.status_code == 400


async def test_the_client_address_is_forwarded_only_by_a_trusted_proxy(world: World):
    async with _client(world, PROXY) as proxy, _client(world, "203.0.113.9") as stranger:
        await _redeem(proxy, GOOD, "P-0", **{"X-Forwarded-For": "198.51.100.7"})
        await _redeem(proxy, GOOD, "P-1", **{"X-Forwarded-For": "198.51.100.8, 10.9.9.9"})
        await _redeem(stranger, GOOD, "S-0", **{"X-Forwarded-For": "198.51.100.99"})
    assert [(r[2], r[3]) for r in world.rejections()] == [
        ("P-0", "198.51.100.7"),
        ("P-1", "198.51.100.8"),
        ("S-0", "203.0.113.9"),
    ]


async def test_rotation_answers(world: World, http: httpx.AsyncClient):
    await world.register("sc-1", "LVS-0001")
    first = await world.authorised()
    rotated = await http.post(
        "/v1/credentials/rotate", headers={"Authorization": f"Bearer {first.credential}"}
    )
    assert rotated.status_code == 201
    assert rotated.headers["cache-control"] == "no-store"
    assert set(rotated.json()) == {"credential_id", "credential", "previous_valid_until"}

    again = await http.post(
        "/v1/credentials/rotate", headers={"Authorization": f"Bearer {first.credential}"}
    )
    assert again.status_code == 403 and again.headers["content-type"] == PROBLEM
    for headers in (
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer not-a-credential"},
    ):
        answer = await http.post("/v1/credentials/rotate", headers=headers)
        assert answer.status_code == 401, headers
        assert answer.headers["www-authenticate"] == "Bearer"
        assert answer.headers["content-type"] == PROBLEM


PROBLEM = "application/problem+json"


async def test_an_outage_is_answered_503_by_the_shared_middleware(world: World):
    class Unreachable(MemoryUnitOfWork):
        async def __aenter__(self) -> Any:
            raise ConnectionRefusedError("the database is down")

    class Down(World):
        def uow(self) -> MemoryUnitOfWork:
            return Unreachable(self.store, source=SOURCE)

    async with _client(Down(store=world.store)) as http:
        answer = await _redeem(http, GOOD, "LVS-1")
        rotate = await http.post(
            "/v1/credentials/rotate", headers={"Authorization": f"Bearer {generate_credential()}"}
        )
    for a in (answer, rotate):
        assert a.status_code == 503 and a.headers["retry-after"] == "5"
        assert a.headers["content-type"] == PROBLEM
