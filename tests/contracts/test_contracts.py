"""The committed contract documents (contracts/) are what the code generates, say what the
contract says, and pass independent validators: the AsyncAPI initiative's parser (npm) and
openapi-spec-validator."""

from __future__ import annotations

import ast
import asyncio
import copy
import json
import os
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import yaml
from faststream.kafka import KafkaBroker
from faststream.specification import AsyncAPI
from openapi_spec_validator import validate as validate_openapi
from starlette.routing import Route

from scanner_auth import contracts
from scanner_auth.cli import main as cli
from scanner_auth.services import SERVICES
from scanner_auth_shared.consumer import Consumer, ConsumerRunner, subscribe
from scanner_auth_shared.events import (
    ALL_TOPICS,
    DIRECTORY_TOPIC,
    EVENT_TYPES,
    CloudEvent,
    EventData,
    dlq_topic,
)
from scanner_auth_shared.messaging import documented_body
from scanner_auth_shared.uow import MemoryStore, MemoryUnitOfWork

REPO = Path(__file__).resolve().parents[2]
CONTRACTS = REPO / "contracts"
VALIDATOR = CONTRACTS / "validator"

# What each service reads and writes (README, "The system"; the contract's topic table).
CONSUMES = {
    "token-issuer": {
        "ScannerRegistered",
        "ScannerRemoved",
        "UserUpserted",
        "ScannerAccessGranted",
        "ScannerAccessRevoked",
        "ScannerAuthorised",
        "CredentialRotated",
    },
    "redeemer": {
        "TokenIssued",
        "TokenRevoked",
        "TokenExpired",
        "ScannerDeauthorised",
        "ScannerRegistered",
        "ScannerRemoved",
    },
    "scan-ingest": {"ScannerAuthorised", "CredentialRotated", "CredentialsRevoked"},
    "notifier": {
        "TokenEmailRequested",
        "TokenIssued",
        "TokenRevoked",
        "TokenExpired",
        "ScannerAuthorised",
    },
}
PUBLISHES = {
    "token-issuer": {
        "TokenIssued",
        "TokenRevoked",
        "TokenExpired",
        "ScannerDeauthorised",
        "TokenEmailRequested",
    },
    "redeemer": {
        "ScannerAuthorised",
        "CredentialRotated",
        "CredentialsRevoked",
        "AuthorisationRejected",
    },
    "scan-ingest": {"ScanIngested"},
    "notifier": {"NotificationSent", "NotificationFailed"},
}

# The answers of the contract's HTTP tables (and the problems each route may answer).
CONTRACT_STATUSES: dict[str, dict[tuple[str, str], set[int]]] = {
    "token-issuer": {
        ("get", "/v1/scanners"): {200, 401},
        ("post", "/v1/scanners/{scanner_id}/authorisation-token"): {201, 401, 403, 404},
        ("get", "/v1/scanners/{scanner_id}/authorisation-token"): {200, 401, 404},
        ("delete", "/v1/scanners/{scanner_id}/authorisation-token"): {204, 401, 403, 404},
        ("post", "/v1/scanners/{scanner_id}/authorisation-token/email"): {
            202,
            401,
            403,
            404,
            409,
            422,
        },
        ("get", "/v1/scanners/{scanner_id}/users"): {200, 401, 403, 404},
        ("get", "/v1/scanners/{scanner_id}/authorisation"): {200, 401, 404},
        ("delete", "/v1/scanners/{scanner_id}/authorisation"): {204, 401, 403, 404},
    },
    "redeemer": {
        ("post", "/v1/authorisations"): {201, 400, 422, 429},
        ("post", "/v1/credentials/rotate"): {201, 401},
    },
    "scan-ingest": {("post", "/v1/scans"): {202, 401, 403, 413, 422}},
}
OPS_STATUSES = {
    ("get", "/healthz"): {200},
    ("get", "/readyz"): {200, 503},
    ("get", "/metrics"): {200},
}


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return contracts.render()


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((CONTRACTS / contracts.ASYNCAPI_FILE).read_text())
    return document


def openapi(service: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((CONTRACTS / f"openapi/{service}.json").read_text())
    return document


def name(ref: dict[str, str]) -> str:
    return ref["$ref"].rsplit("/", 1)[1]


def channel_types(document: dict[str, Any], key: str) -> set[str]:
    """The event types a channel's message carries (its payload's oneOf of envelopes)."""
    components = document["components"]
    (reference,) = document["channels"][key]["messages"].values()
    payload = components["schemas"][name(components["messages"][name(reference)]["payload"])]
    return {name(r).removesuffix("Event") for r in payload.get("oneOf", [])}


# ------------------------------------------------------------------------------ up to date


@pytest.mark.unit
def test_the_committed_documents_are_what_the_code_generates(rendered: dict[str, str]) -> None:
    stale = contracts.stale(CONTRACTS, rendered)
    assert not stale, (
        f"out of date: {', '.join(str(p.relative_to(REPO)) for p in stale)}; "
        "regenerate with `scanner-auth contracts` and commit"
    )
    assert set(rendered) == {
        "asyncapi.yaml",
        "openapi/token-issuer.json",
        "openapi/redeemer.json",
        "openapi/scan-ingest.json",
    }


@pytest.mark.unit
def test_contracts_check_names_a_stale_document_and_regenerating_fixes_it(
    rendered: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    contracts.write(tmp_path, rendered)
    assert contracts.stale(tmp_path, rendered) == []
    stale = tmp_path / "openapi/redeemer.json"
    stale.write_text(stale.read_text().replace("/v1/credentials/rotate", "/v1/rotate"))
    (tmp_path / "asyncapi.yaml").unlink()

    with pytest.raises(SystemExit) as exit_:
        cli(["contracts", "--check", "--dir", str(tmp_path)])
    assert exit_.value.code == 1
    out = capsys.readouterr().out
    assert str(stale) in out and str(tmp_path / "asyncapi.yaml") in out
    assert "scan-ingest.json" not in out and "token-issuer.json" not in out

    assert contracts.main(tmp_path) == 0  # regenerates
    assert contracts.main(tmp_path, check=True) == 0


@pytest.mark.unit
def test_the_documents_do_not_depend_on_the_environment(
    rendered: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "somewhere.else:1234")
    monkeypatch.setenv("UI_ENABLED", "false")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    assert contracts.render() == rendered


# ------------------------------------------------------------------------------ AsyncAPI


@pytest.mark.unit
def test_every_topic_and_its_dead_letters_are_channels(asyncapi: dict[str, Any]) -> None:
    addresses = {channel["address"] for channel in asyncapi["channels"].values()}
    assert addresses == set(ALL_TOPICS) | {
        dlq_topic(t) for t in (*ALL_TOPICS,) if t != "myscanner.scans.v1"
    }, "scans.v1 has no consumer in this system, hence no dead letters"
    for key in asyncapi["channels"]:
        operation = asyncapi["operations"][key]
        assert operation["channel"] == {"$ref": f"#/channels/{key}"}
        assert operation["action"] in ("send", "receive")


@pytest.mark.unit
def test_each_service_reads_and_writes_what_the_architecture_says(
    asyncapi: dict[str, Any],
) -> None:
    read: dict[str, set[str]] = {s: set() for s in SERVICES}
    written: dict[str, set[str]] = {s: set() for s in SERVICES}
    for key, channel in asyncapi["channels"].items():
        if channel["address"].endswith(".dlq"):
            continue
        service = key.split(":", 1)[0].split(".", 1)[0]
        action = asyncapi["operations"][key]["action"]
        types = channel_types(asyncapi, key)
        assert types, key
        for type_ in types:
            assert EVENT_TYPES[type_].topic == channel["address"], (key, type_)
        (read if action == "receive" else written)[service] |= types
    assert read == CONSUMES
    assert written == PUBLISHES


@pytest.mark.unit
def test_every_event_type_is_documented_in_its_envelope_with_its_field_descriptions(
    asyncapi: dict[str, Any],
) -> None:
    schemas = asyncapi["components"]["schemas"]
    for type_, model in EVENT_TYPES.items():
        envelope = schemas[f"{type_}Event"]
        assert envelope["properties"]["type"]["const"] == type_
        assert envelope["properties"]["data"]["$ref"] == f"#/components/schemas/{type_}"
        for field, info in CloudEvent.model_fields.items():
            if field not in ("type", "data"):
                assert envelope["properties"][field]["description"] == info.description
        assert set(envelope["required"]) >= {"type", "source", "data"}
        data = schemas[type_]
        assert data["description"] == model.__doc__
        assert set(data["properties"]) == set(model.model_fields)
        for field, info in model.model_fields.items():
            assert data["properties"][field]["description"] == info.description, (type_, field)
    reasons = schemas["AuthorisationRejected"]["properties"]["reason"]["enum"]
    assert set(reasons) == {
        "invalid_code",
        "expired",
        "already_used",
        "revoked",
        "serial_mismatch",
        "rate_limited",
    }


@pytest.mark.unit
def test_dead_letters_document_the_headers_the_consumers_send(asyncapi: dict[str, Any]) -> None:
    sent: dict[str, Any] = {}

    class Broker:
        async def publish(self, body: bytes, topic: str, **kwargs: Any) -> None:
            sent.update(kwargs, topic=topic)

    record = SimpleNamespace(
        topic=DIRECTORY_TOPIC, partition=0, offset=7, key=b"sc-1", value=b"not json"
    )
    consumer = Consumer(name="c", topic=DIRECTORY_TOPIC, handlers={}, description="c")
    store = MemoryStore()
    runner = ConsumerRunner(
        consumer,
        lambda: MemoryUnitOfWork(store, source="t"),
        Broker(),  # type: ignore[arg-type]
        max_attempts=1,
    )
    asyncio.run(runner.dead_letter(record, "unparseable", "boom", attempts=1))
    assert sent["topic"] == dlq_topic(DIRECTORY_TOPIC)

    components = asyncapi["components"]
    dead = [k for k, c in asyncapi["channels"].items() if c["address"].endswith(".dlq")]
    assert len(dead) == 7  # one per consumer group
    for key in dead:
        (reference,) = asyncapi["channels"][key]["messages"].values()
        headers = components["messages"][name(reference)]["headers"]
        assert set(headers["properties"]) == set(sent["headers"]) == set(headers["required"])


def _envelope_schemas(broker: KafkaBroker) -> dict[str, Any]:
    document = AsyncAPI(broker, schema_version="3.0.0").to_specification().to_jsonable()
    schemas: dict[str, Any] = document["components"]["schemas"]
    return {
        key: value
        for key, value in schemas.items()
        if key in EVENT_TYPES or key.removesuffix("Event") in EVENT_TYPES
    }


@pytest.mark.unit
def test_consumers_and_producers_document_the_same_schema_for_each_type() -> None:
    """A consumer (`consumer.subscribe`) and a documented publisher (`scanner-auth contracts`)
    render the envelopes through faststream's two paths: both must give every type the same
    schema, one type alone as well as many."""
    settings: Any = contracts.document_settings(SERVICES["notifier"])
    consumed, produced = KafkaBroker("kafka:9092"), KafkaBroker("kafka:9092")

    async def nothing(uow: MemoryUnitOfWork, event: CloudEvent, data: EventData) -> None:
        return None

    store = MemoryStore()
    for topic in ALL_TOPICS:
        models = [m for m in EVENT_TYPES.values() if m.topic == topic]
        for i, group in enumerate([models, *([m] for m in models)]):
            subscribe(
                consumed,
                settings,
                Consumer(
                    name=f"c{i}",
                    topic=topic,
                    handlers={m: nothing for m in group},
                    description=f"c{i}",
                ),
                lambda: MemoryUnitOfWork(store, source="t"),
            )
            produced.publisher(topic, title=f"p{i}:{topic}", schema=documented_body(group))
    from_consumers, from_producers = _envelope_schemas(consumed), _envelope_schemas(produced)
    assert set(from_consumers) == set(EVENT_TYPES) | {f"{t}Event" for t in EVENT_TYPES}
    assert from_consumers == from_producers


@pytest.mark.unit
def test_publishes_declarations_cover_every_event_a_service_builds() -> None:
    """Each event type is published by exactly one service, which declares it; a service
    that builds an event (`TokenIssued(...)`) must declare it."""
    declared = {s: {m.event_type for m in contracts.publishes(s)} for s in SERVICES}
    assert declared == PUBLISHES
    for service, spec in SERVICES.items():
        package = REPO / "services" / service / "src" / spec.package
        built = set()
        for path in package.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call):
                    func = node.func
                    called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                    if called in EVENT_TYPES:
                        built.add(called)
        assert built <= declared[service], (service, built - declared[service])
    owners = [t for types in declared.values() for t in types]
    assert sorted(owners) == sorted(t for t, m in EVENT_TYPES.items() if m.topic != DIRECTORY_TOPIC)


def _node_and_npm() -> tuple[str, str] | None:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node and npm:
        return node, npm
    if os.environ.get("CI"):
        pytest.fail("node and npm are needed to validate the AsyncAPI document")
    pytest.skip("node/npm not installed: the AsyncAPI document was not validated")
    return None


@pytest.fixture(scope="module")
def asyncapi_validator() -> list[str]:
    found = _node_and_npm()
    assert found is not None
    node, npm = found
    if not (VALIDATOR / "node_modules" / "@asyncapi" / "parser").is_dir():
        # Exactly the locked versions; no install scripts run.
        subprocess.run(
            [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=VALIDATOR,
            check=True,
            timeout=600,
        )
    return [node, str(VALIDATOR / "validate.mjs"), "--strict"]


@pytest.mark.integration
def test_the_asyncapi_document_passes_the_asyncapi_parser(
    asyncapi_validator: list[str], asyncapi: dict[str, Any], tmp_path: Path
) -> None:
    document = CONTRACTS / contracts.ASYNCAPI_FILE
    result = subprocess.run(
        [*asyncapi_validator, str(document)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid AsyncAPI 3.0.0" in result.stdout

    # The validator is not a rubber stamp: a dangling reference and an unknown action fail.
    broken = copy.deepcopy(asyncapi)
    broken["components"]["schemas"].pop("TokenIssued")
    next(iter(broken["operations"].values()))["action"] = "publish"
    bad = tmp_path / "broken.yaml"
    bad.write_text(yaml.safe_dump(broken, sort_keys=False))
    result = subprocess.run(
        [*asyncapi_validator, str(bad)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stdout
    assert "TokenIssued' does not exist" in result.stdout
    assert '"action" property must be equal to one of the allowed values' in result.stdout


# ------------------------------------------------------------------------------ OpenAPI


@pytest.mark.unit
@pytest.mark.parametrize("service", contracts.OPENAPI_SERVICES)
def test_the_openapi_document_is_valid_and_has_the_contracts_answers(service: str) -> None:
    document = openapi(service)
    validate_openapi(document)  # type: ignore[arg-type]
    assert document["openapi"] == "3.1.0"
    expected = {**CONTRACT_STATUSES[service], **OPS_STATUSES}
    for (method, path), statuses in expected.items():
        responses = document["paths"][path][method]["responses"]
        assert statuses <= {int(s) for s in responses}, (method, path, sorted(responses))
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400 and path not in ("/readyz",):
                    # Every error is an RFC 9457 problem, with the one Problem schema.
                    assert response["content"] == {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    }, (method, path, status)
    problem = document["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"title", "status"}
    assert {"type", "title", "status", "detail"} <= set(problem["properties"])
    assert "HTTPValidationError" not in document["components"]["schemas"]


@pytest.mark.unit
def test_scan_ingest_is_described_as_its_code_answers() -> None:
    """scan-ingest's document is hand-described: its statuses are exactly those its code
    answers, and its routes exactly those described (contracts.render checks the routes)."""
    source = (REPO / "services/scan-ingest/src/scan_ingest/api.py").read_text()
    answered = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            if called == "problem" and node.args and isinstance(node.args[0], ast.Constant):
                answered.add(node.args[0].value)
            for keyword in node.keywords:
                if keyword.arg == "status_code" and isinstance(keyword.value, ast.Constant):
                    answered.add(keyword.value.value)
    documented = openapi("scan-ingest")["paths"]["/v1/scans"]["post"]["responses"]
    assert answered == {int(s) for s in documented}

    runtime = contracts.build_runtimes()["scan-ingest"]
    app: Any = runtime.app
    app.router.routes.append(Route("/v1/other", lambda request: None, methods=["GET"]))
    with pytest.raises(RuntimeError, match="/v1/other"):
        contracts.scan_ingest_document(runtime)


@pytest.mark.unit
@pytest.mark.parametrize("service", ["token-issuer", "redeemer"])
async def test_the_fastapi_services_serve_the_committed_document(service: str) -> None:
    """What /openapi.json (and /docs) serves is the committed document, byte for byte once
    parsed: 422 as the problem it is answered as, never FastAPI's HTTPValidationError."""
    runtime = contracts.build_runtimes()[service]
    transport = httpx.ASGITransport(app=runtime.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.get("/openapi.json")
    assert r.status_code == 200
    served = r.json()
    assert served == openapi(service)
    assert "HTTPValidationError" not in json.dumps(served)
