"""shared.api.fastapi_app: every answer a documented problem, and the document it serves the one
`scanner-auth contracts` commits (422 as the problem it is, the ops routes)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel

from scanner_auth_shared.api import OPS_PATHS, fastapi_app
from scanner_auth_shared.messaging import create_broker
from scanner_auth_shared.runtime import ServiceRuntime
from scanner_auth_shared.settings import ServiceSettings

pytestmark = pytest.mark.unit

PROBLEM = "application/problem+json"


class Email(BaseModel):
    recipient_user_id: str


def _app() -> FastAPI:
    router = APIRouter()

    @router.post("/v1/things/{thing_id}/email", status_code=202)
    async def email(thing_id: str, body: Email) -> dict[str, str]:
        return {"thing_id": thing_id, "to": body.recipient_user_id}

    settings = ServiceSettings(kafka_bootstrap_servers="127.0.0.1:9092")  # never reached
    runtime = ServiceRuntime(name="t", settings=settings, broker=create_broker(settings, "t"))
    return fastapi_app(runtime, title="t", routers=[router])


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield client


async def _post(client: httpx.AsyncClient, content: bytes) -> httpx.Response:
    return await client.post(
        "/v1/things/a/email", content=content, headers={"Content-Type": "application/json"}
    )


def _is_malformed_problem(r: httpx.Response) -> None:
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == 422 and body["title"] == "Unprocessable Content"
    assert body["detail"] == "the request is malformed"
    assert body["errors"] and {"loc", "msg", "type"} == set(body["errors"][0])


@pytest.mark.parametrize(
    "content",
    [
        b'{"recipient_user_id": "\xff\xfe"}',  # not UTF-8: FastAPI's own answer is a 400
        b"\xff\xfe{}",
        b"[" * 8_000 + b"]" * 8_000,  # nested too deep for the JSON parser, within the body cap
    ],
    ids=["latin-1", "bom-like", "deep"],
)
async def test_a_body_fastapi_cannot_parse_is_the_422_problem_of_a_malformed_body(
    client: httpx.AsyncClient, content: bytes
) -> None:
    r = await _post(client, content)
    _is_malformed_problem(r)
    assert "\\xff" not in r.text and "recipient" not in r.text  # the input is never echoed


async def test_a_body_that_is_not_json_or_does_not_fit_is_the_same_problem(
    client: httpx.AsyncClient,
) -> None:
    for content in (b"not json", b'{"recipient_user_id": 5}', b"{}"):
        _is_malformed_problem(await _post(client, content))
    assert (await _post(client, b'{"recipient_user_id": "u-1"}')).status_code == 202


async def test_the_served_document_describes_every_422_as_a_problem_and_the_ops_routes(
    client: httpx.AsyncClient,
) -> None:
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    served: dict[str, Any] = r.json()
    unprocessable = served["paths"]["/v1/things/{thing_id}/email"]["post"]["responses"]["422"]
    assert unprocessable["content"] == {
        PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}
    }
    schemas = served["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert schemas["Problem"]["title"] == "Problem"
    assert {"title", "status"} <= set(schemas["Problem"]["required"])
    assert "errors" in schemas["Problem"]["properties"] and "FieldError" in schemas
    assert set(OPS_PATHS) <= set(served["paths"])
    # Built once, and the same document again (the /docs page reads it too).
    assert (await client.get("/openapi.json")).json() == served
