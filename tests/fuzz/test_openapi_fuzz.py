"""Schemathesis against the OpenAPI document of each HTTP service, the real processes answering:
the documents committed in contracts/openapi/ (generated from `runtime.app.openapi()` for the
FastAPI services, token-issuer and redeemer, and written by hand for plain-Starlette scan-ingest;
see `scanner-auth contracts`), or, for a service whose document is not there, the one it serves.

Every operation is fuzzed with schema-valid (positive) and schema-violating (negative) requests,
under valid and invalid JWTs or credentials, and with real scanner ids next to generated ones so
that requests reach past the 404s. Every response is checked (not just the first failure):
no 5xx; status code, content type, headers and body as documented; schema-violating requests
refused. Hypothesis runs derandomized (the same examples each run, so CI is stable); set
FUZZ_RANDOM=1 to explore new ones, FUZZ_EXAMPLES=<n> for more of them.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from fault_kit import MAX_BODY_BYTES, Rig, eventually, forged_jwts
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from scanner_auth_shared.crypto import generate_code
from scanner_auth_shared.events import SCANS_TOPIC

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CONTRACTS = Path(__file__).parents[2] / "contracts" / "openapi"
SCAN_INGEST_DOCUMENT = CONTRACTS / "scan-ingest.json"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
CONFORMANCE = {
    "UndefinedStatusCode",
    "UndefinedContentType",
    "MalformedMediaType",
    "MissingContentType",
    "MissingHeaders",
    "JsonSchemaError",
    "MalformedJson",
    "AcceptedNegativeData",
}


@dataclass
class Report:
    service: str
    requests: int = 0
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    failures: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, operation)
    first: dict[tuple[str, str], str] = field(default_factory=dict)
    unsatisfiable: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def of(self, kinds: set[str]) -> dict[tuple[str, str], str]:
        return {k: v for k, v in self.first.items() if k[0] in kinds}

    def summary(self) -> str:
        by_op: dict[str, Counter[int]] = {}
        for (op, status), n in self.statuses.items():
            by_op.setdefault(op, Counter())[status] += n
        lines = [
            f"fuzz {self.service}: {self.requests} requests in {self.seconds:.1f}s, "
            f"{sum(self.failures.values())} failed checks"
        ]
        lines += [f"  {op}: {dict(sorted(c.items()))}" for op, c in sorted(by_op.items())]
        lines += [f"  FAILED {kind} on {op}: {n}x" for (kind, op), n in self.failures.items()]
        lines += [f"  (no negative case for {op})" for op in self.unsatisfiable]
        return "\n".join(lines)


Headers = Callable[[Any], st.SearchStrategy[dict[str, str]]]


def fuzz(
    service: str,
    schema: Any,
    base_url: str,
    headers: Headers,
    *,
    examples: int = EXAMPLES,
    fixed: Callable[[Any], list[dict[str, Any]]] = lambda op: [],
    after: Callable[[Any, requests.Response], None] = lambda case, response: None,
) -> Report:
    """Every operation, positive and negative; every response checked, every failure kept."""
    report = Report(service)
    session = requests.Session()
    started = time.monotonic()
    for result in schema.get_all_operations():
        op = result.ok()
        name = f"{op.method.upper()} {op.path}"
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategies = [op.as_strategy(generation_mode=mode)]
            if mode is GenerationMode.POSITIVE:
                strategies += [op.as_strategy(generation_mode=mode, **kw) for kw in fixed(op)]

            run = _runner(
                report,
                name,
                st.one_of(strategies),
                headers(op),
                base_url,
                session,
                examples,
                after,
            )
            try:
                run()
            except Unsatisfiable:
                report.unsatisfiable.append(name)
    report.seconds = time.monotonic() - started
    return report


def _runner(
    report: Report,
    name: str,
    cases: st.SearchStrategy[Any],
    headers: st.SearchStrategy[dict[str, str]],
    base_url: str,
    session: requests.Session,
    examples: int,
    after: Callable[[Any, requests.Response], None],
) -> Callable[[], None]:
    @given(case=cases, extra=headers)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=not os.environ.get("FUZZ_RANDOM"),
        phases=[Phase.explicit, Phase.generate],  # every example runs; no shrinking
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any, extra: dict[str, str]) -> None:
        case.headers = {**(case.headers or {}), **extra}
        if "Authorization" in case.headers and not case.headers["Authorization"]:
            del case.headers["Authorization"]
        response = case.call(base_url=base_url, session=session, timeout=30)
        report.requests += 1
        report.statuses[(name, response.status_code)] += 1
        after(case, response)
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:
            for failure in group.exceptions:
                key = (type(failure).__name__, name)
                report.failures[key] += 1
                report.first.setdefault(key, f"{failure}\n{case.as_curl_command()}"[:2000])

    return run  # type: ignore[no-any-return]


def document(service: str, rig: Rig) -> Any:
    """The service's committed OpenAPI document (what other teams code against: generated from
    `runtime.app.openapi()` by `scanner-auth contracts`), or else the one the service serves."""
    committed = CONTRACTS / f"{service}.json"
    if committed.exists():
        return schemathesis.openapi.from_path(committed)
    return schemathesis.openapi.from_url(rig.url(service) + "/openapi.json")


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}" if token is not None else ""}


# ------------------------------------------------------------------------------ the runs


@dataclass
class World:
    """What the fuzzed requests may name: real scanners, codes, credentials."""

    scanner_ids: list[str]
    serials: list[str]
    credentials: dict[str, str]  # label -> credential (valid, replaced, deauthorised)
    # scan-ingest's own valid credential, of a scanner the other fuzzers never name: their
    # deauthorisations and rotations must not close the gate to it before its fuzzing runs.
    uploader: str


@pytest.fixture(scope="module")
def world(rig: Rig) -> World:
    async def make() -> World:
        live, replaced, withdrawn, uploader = await rig.scanners(4, "sc-fuzz")
        credentials: dict[str, str] = {}
        for label, scanner in (
            ("replaced", replaced),
            ("live", live),
            ("deauthorised", withdrawn),
            ("uploader", uploader),
        ):
            token = await rig.generate(scanner.scanner_id)
            await rig.redeemer_knows_tokens([token["token_id"]])
            r = await rig.redeem(token["code"], scanner.serial_number)
            assert r.status_code == 201, r.text
            credentials[label] = r.json()["credential"]
        again = await rig.generate(replaced.scanner_id)
        await rig.redeemer_knows_tokens([again["token_id"]])
        r = await rig.redeem(again["code"], replaced.serial_number)
        assert r.status_code == 201, r.text
        credentials["rotatable"] = r.json()["credential"]
        async with rig.admin() as admin:
            r = await admin.delete(f"/v1/scanners/{withdrawn.scanner_id}/authorisation")
            assert r.status_code == 204
        for label, status in (
            ("live", 202),
            ("uploader", 202),
            ("replaced", 403),
            ("deauthorised", 403),
        ):

            async def settled(label: str = label, status: int = status) -> bool:
                r = await rig.upload(credentials[label], {"settling": True})
                return r.status_code == status

            await eventually(settled, 30, f"the gate knows the {label} credential")
        demo = rig.system.demo
        return World(
            scanner_ids=[*(s.scanner_id for s in demo.scanners), live.scanner_id],
            serials=[*(s.serial_number for s in demo.scanners), live.serial_number],
            credentials={k: v for k, v in credentials.items() if k != "uploader"},
            uploader=credentials["uploader"],
        )

    return asyncio.run(make())


@pytest.fixture(scope="module")
def reports() -> Iterator[dict[str, Report]]:
    found: dict[str, Report] = {}
    yield found
    for report in found.values():
        print(report.summary())


def token_issuer_report(rig: Rig, world: World, reports: dict[str, Report]) -> Report:
    if "token-issuer" in reports:
        return reports["token-issuer"]
    identity = rig.stack.identity
    users = {u.user_id: u for u in rig.system.demo.users}
    valid = {
        uid: identity.mint(u.user_id, u.org_id, list(u.roles), u.email) for uid, u in users.items()
    }
    alice = users["u-alice"]
    forged = forged_jwts(identity, alice.user_id, alice.org_id, list(alice.roles))
    good = [bearer(t) for t in valid.values()]
    bad = [bearer(t) for t in [None, *forged.values()]]
    # Two requests in three carry a valid JWT: most of them must get past authentication.
    auth = st.one_of(st.sampled_from(good), st.sampled_from(good), st.sampled_from(bad))
    schema = document("token-issuer", rig)
    report = fuzz(
        "token-issuer",
        schema,
        rig.url("token-issuer"),
        lambda op: auth,
        fixed=lambda op: (
            [{"path_parameters": {"scanner_id": sid}} for sid in world.scanner_ids]
            if "{scanner_id}" in op.path
            else []
        ),
    )
    reports["token-issuer"] = report
    return report


def redeemer_report(rig: Rig, world: World, reports: dict[str, Report]) -> Report:
    if "redeemer" in reports:
        return reports["redeemer"]
    addresses = [f"198.51.100.{n}" for n in range(100, 120)]
    credentials = [None, "garbage", "x" * 600, *world.credentials.values()]

    def headers(op: Any) -> st.SearchStrategy[dict[str, str]]:
        forwarded = st.sampled_from(addresses).map(lambda a: {"X-Forwarded-For": a})
        if op.path.endswith("/rotate"):
            return st.sampled_from([bearer(c) for c in credentials])
        return forwarded

    def fixed(op: Any) -> list[dict[str, Any]]:
        if not op.path.endswith("/authorisations"):
            return []
        codes = [generate_code() for _ in range(3)]
        return [
            {"body": {"code": code, "serial_number": serial}, "media_type": "application/json"}
            for code in codes
            for serial in world.serials[:3]
        ]

    schema = document("redeemer", rig)
    report = fuzz(
        "redeemer", schema, rig.url("redeemer"), headers, examples=EXAMPLES * 3, fixed=fixed
    )
    reports["redeemer"] = report
    return report


ACCEPTED: list[str] = []  # scan ids scan-ingest answered 202 for


def scan_ingest_report(rig: Rig, world: World, reports: dict[str, Report]) -> Report:
    if "scan-ingest" in reports:
        return reports["scan-ingest"]
    if not SCAN_INGEST_DOCUMENT.exists():
        pytest.skip(f"{SCAN_INGEST_DOCUMENT} is not there: scan-ingest serves no document")
    credentials = [None, "garbage", "x" * 600, *world.credentials.values(), world.uploader]

    def after(case: Any, response: requests.Response) -> None:
        if response.status_code == 202:
            ACCEPTED.append(response.json()["scan_id"])

    schema = schemathesis.openapi.from_path(SCAN_INGEST_DOCUMENT)
    report = fuzz(
        "scan-ingest",
        schema,
        rig.url("scan-ingest"),
        lambda op: st.sampled_from([bearer(c) for c in credentials]),
        examples=EXAMPLES * 3,
        fixed=lambda op: (
            [{"body": {"blob": "x" * (MAX_BODY_BYTES + 1)}}] if op.path == "/v1/scans" else []
        ),
        after=after,
    )
    reports["scan-ingest"] = report
    return report


RUNS = {
    "token-issuer": token_issuer_report,
    "redeemer": redeemer_report,
    "scan-ingest": scan_ingest_report,
}


@pytest.mark.parametrize("service", list(RUNS))
def test_no_server_errors(service: str, rig: Rig, world: World, reports: dict[str, Report]) -> None:
    report = RUNS[service](rig, world, reports)
    errors = report.of({"ServerError"})
    assert report.requests > 0
    assert not errors, "\n\n".join(errors.values())


@pytest.mark.parametrize("service", list(RUNS))
def test_responses_match_the_document(
    service: str, rig: Rig, world: World, reports: dict[str, Report]
) -> None:
    report = RUNS[service](rig, world, reports)
    mismatches = report.of(CONFORMANCE)
    unknown = report.of(set(k for k, _ in report.first) - CONFORMANCE - {"ServerError"})
    assert not mismatches, "\n\n".join(mismatches.values())
    assert not unknown, "\n\n".join(unknown.values())


def test_every_accepted_upload_is_on_the_scans_topic(
    rig: Rig, world: World, reports: dict[str, Report]
) -> None:
    scan_ingest_report(rig, world, reports)
    assert ACCEPTED, "the fuzzer never got an upload accepted"
    landed = {e.data.get("scan_id") for e in asyncio.run(rig.events(SCANS_TOPIC, "ScanIngested"))}
    missing = [s for s in ACCEPTED if s not in landed]
    print(f"scan-ingest fuzz: accepted={len(ACCEPTED)} on the topic={len(ACCEPTED) - len(missing)}")
    assert not missing
