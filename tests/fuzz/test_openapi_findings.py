"""What the OpenAPI fuzzing found, each pinned down as one deterministic request against the real
process (all three fixed; each test fails if its bug comes back):

- scan-ingest refuses (422) a scan_id its document forbids, rather than replacing it;
- token-issuer answers a body it cannot decode with the documented 422 problem, not FastAPI's
  undocumented 400 (shared.api);
- the FastAPI services serve the committed document: 422 as application/problem+json.

Each check accepts either fix: the service changes its answer, or the document its promise."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fault_kit import Rig, eventually

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

CONTRACTS = Path(__file__).parents[2] / "contracts" / "openapi"
PROBLEM = "application/problem+json"


def committed(service: str) -> dict[str, Any]:
    path = CONTRACTS / f"{service}.json"
    if not path.exists():
        pytest.skip(f"{path} is not there")
    return dict(json.loads(path.read_text()))


def documented(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    return dict(doc["paths"][path][method]["responses"])


def test_scan_ingest_and_its_document_agree_on_scan_id(rig: Rig) -> None:
    doc = committed("scan-ingest")
    schema = doc["paths"]["/v1/scans"]["post"]["requestBody"]["content"]["application/json"]
    scan_id = schema["schema"]["properties"]["scan_id"]

    async def credential() -> str:
        [scanner] = await rig.scanners(1, "sc-scanid")
        token = await rig.generate(scanner.scanner_id)
        await rig.redeemer_knows_tokens([token["token_id"]])
        r = await rig.redeem(token["code"], scanner.serial_number)
        assert r.status_code == 201, r.text
        value = str(r.json()["credential"])

        async def open_() -> bool:
            return (await rig.upload(value, {"probe": 1})).status_code == 202

        await eventually(open_, 30, "the gate opened")
        return value

    bearer = asyncio.run(credential())
    answers = {}
    with httpx.Client(base_url=rig.url("scan-ingest"), timeout=30) as client:
        for value in (None, 5, "", "x" * 201):
            r = client.post(
                "/v1/scans",
                json={"scan_id": value, "volume_m3": 1},
                headers={"Authorization": f"Bearer {bearer}"},
            )
            answers[repr(value)[:12]] = r.status_code
    print(f"scan_id not a 1-200 character string: {answers}; documented as {scan_id}")
    strict = scan_id.get("type") == "string" or "minLength" in scan_id or "maxLength" in scan_id
    assert not strict or set(answers.values()) == {422}, answers


def test_token_issuer_answers_a_body_it_cannot_decode_as_documented(rig: Rig) -> None:
    doc = committed("token-issuer")
    path = "/v1/scanners/{scanner_id}/authorisation-token/email"
    statuses = documented(doc, "post", path)
    with rig.system.as_user("ADMIN_JWT") as admin:
        r = admin.post(
            "/v1/scanners/sc-quarry-1/authorisation-token/email",
            content=b'{"recipient_user_id": "\xff\xfe"}',
            headers={"Content-Type": "application/json"},
        )
    print(
        f"a body that is not UTF-8: {r.status_code} {r.headers.get('content-type')} "
        f"{r.text[:100]}; documented: {sorted(statuses)}"
    )
    assert str(r.status_code) in statuses
    assert r.headers.get("content-type") == PROBLEM


def test_the_served_document_describes_422_as_the_problem_it_is(rig: Rig) -> None:
    wrong = []
    for service in ("token-issuer", "redeemer"):
        served = httpx.get(rig.url(service) + "/openapi.json", timeout=30).json()
        for path, operations in served["paths"].items():
            for method, operation in operations.items():
                unprocessable = operation.get("responses", {}).get("422")
                if unprocessable and set(unprocessable.get("content", {})) != {PROBLEM}:
                    wrong.append(
                        f"{service} {method.upper()} {path}: "
                        f"{sorted(unprocessable.get('content', {}))}"
                    )
    with rig.system.as_user("ADMIN_JWT") as admin:
        r = admin.get("/v1/scanners/" + "x" * 201 + "/authorisation")
    print(f"a 422 is answered as {r.headers.get('content-type')}; served documents say: {wrong}")
    assert r.status_code == 422 and r.headers.get("content-type") == PROBLEM
    assert not wrong, wrong
