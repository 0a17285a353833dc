"""The documents other teams code against, generated from the code and committed in contracts/:

- `asyncapi.yaml`: every topic, consumed and published, with the CloudEvents envelope and the
  data schema of every event type (AsyncAPI 3.0, by faststream from the four services' brokers:
  their subscribers as `consumer.subscribe` registers them, plus documentation-only publishers
  for what each service declares in `PUBLISHES` and for the dead-letter topics);
- `openapi/token-issuer.json`, `openapi/redeemer.json` (FastAPI's own documents) and
  `openapi/scan-ingest.json` (plain Starlette: its routes, described here and checked against
  the code by tests/contracts), each with the RFC 9457 problems and the ops routes.

`scanner-auth contracts` writes them; `scanner-auth contracts --check` exits 1 naming the ones
that are out of date. Each service is built with `build()` (no I/O happens there) from
placeholder settings that ignore the environment, so the documents never depend on who ran it.
"""

from __future__ import annotations

import base64
import copy
import importlib
import json
import secrets
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import yaml
from faststream.specification import AsyncAPI
from pydantic import BaseModel, Field, WithJsonSchema
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from scanner_auth_shared.api import (
    OPS_PATHS,
    ProblemDetails,
    add_ops,
    component_schemas,
    routed_operations,
)
from scanner_auth_shared.events import EventData, dlq_topic
from scanner_auth_shared.http import PROBLEM
from scanner_auth_shared.messaging import documented_body
from scanner_auth_shared.runtime import ServiceRuntime

from .services import SERVICES, ServiceSpec

VERSION = "1.0.0"
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "contracts"
ASYNCAPI_FILE = "asyncapi.yaml"
OPENAPI_SERVICES = ("token-issuer", "redeemer", "scan-ingest")

# Placeholders: the documents name no real host, and the secrets (random on every run) never
# reach them. The Kafka address is the one deploy/k8s/base/common.env configures.
_PLACEHOLDERS: dict[str, str] = {
    "kafka_bootstrap_servers": "myscanner-kafka-bootstrap.kafka.svc:9092",
    "database_url": "postgresql+asyncpg://scanner-auth@postgres.invalid:5432/scanner_auth",
    "auth_jwks_url": "https://identity.invalid/.well-known/jwks.json",
    "auth_issuer": "https://identity.invalid/",
    "auth_audience": "myscanner",
}

# ------------------------------------------------------------------------------ building


def document_settings(spec: ServiceSpec) -> BaseSettings:
    """The service's settings from placeholders only: the environment plays no part."""
    base: type[BaseSettings] = spec.settings_class()

    class DocumentSettings(base):  # type: ignore[valid-type,misc]
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            **_: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings,)

    values: dict[str, str] = {
        **_PLACEHOLDERS,
        "token_pepper": secrets.token_urlsafe(48),
        "sealing_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "code_encryption_key": base64.b64encode(secrets.token_bytes(32)).decode(),
    }
    fields = base.model_fields
    return DocumentSettings(**{k: v for k, v in values.items() if k in fields})


def build_runtimes() -> dict[str, ServiceRuntime]:
    """Every service as `scanner-auth serve` builds it, not started."""
    return {name: spec.builder()(document_settings(spec)) for name, spec in SERVICES.items()}


def publishes(service: str) -> tuple[type[EventData], ...]:
    """The event types a service declares it publishes (`PUBLISHES` in its app module)."""
    module = importlib.import_module(f"{SERVICES[service].package}.app")
    return tuple(module.PUBLISHES)


# ------------------------------------------------------------------------------ AsyncAPI

ASYNCAPI_DESCRIPTION = "\n\n".join(
    (
        "The Kafka topics of scanner-auth (MyScanner's scanner authorisation), generated from "
        "the code (`scanner-auth contracts`).",
        "Every message on every topic is a JSON CloudEvents 1.0 document in structured mode; "
        "producers in this system always set `specversion`, `id`, `type`, `source` "
        "(`scanner-auth/<service>`), `time` (RFC 3339, UTC), `subject` (the scanner id; the "
        "user id for `UserUpserted`; null when there is none) and `datacontenttype` "
        "(`application/json`). The Kafka key is the subject. Delivery is at least once, in "
        "commit order per key: consumers deduplicate on `id`. Schemas only grow by optional "
        "fields, and consumers skip event types they do not know; a breaking change is a new "
        "topic with a new version suffix.",
        "\n".join(
            (
                "- `myscanner.scanner-auth.v1`: public; any MyScanner service may read it.",
                "- `myscanner.scanner-auth.notifications.v1`: internal to this system (it "
                "carries the code sealed).",
                "- `myscanner.scans.v1`: scan data, for scan processing.",
                "- `myscanner.directory.v1`: MyScanner's directory, consumed, not owned.",
                "- `<topic>.dlq`: what a consumer could not process, for operators.",
            )
        ),
        "A channel here is one consumer group's subscription to a topic, or one service's "
        "publications on it: a topic appears once per reader and per writer, as the channels' "
        "`address`.",
    )
)

# What a dead-lettered message carries besides its original bytes (consumer.ConsumerRunner).
DLQ_HEADERS: dict[str, str] = {
    "x-dlq-consumer": "The consumer that gave up on the message.",
    "x-dlq-reason": "`unparseable` (not a CloudEvent, or data that does not fit its type), "
    "`unverified` (its signature does not prove its producer: EVENT_TRUSTED_KEYS), "
    "`rejected` (the consumer can never apply it) or `failed` (it kept failing).",
    "x-dlq-error": "What went wrong (secrets redacted, at most 1000 characters).",
    "x-dlq-failed-at": "When it was parked (ISO 8601).",
    "x-dlq-attempts": "Attempts made before it was parked.",
    "x-dlq-original-topic": "The topic it was read from.",
    "x-dlq-original-partition": "Its partition there.",
    "x-dlq-original-offset": "Its offset there.",
}

_DLQ_BODY = Annotated[
    bytes,
    WithJsonSchema(
        {
            "description": "The original message's bytes, unchanged: usually a CloudEvents "
            "document of the original topic, possibly not even JSON (which may be why it is "
            "here). The Kafka key is the original key."
        }
    ),
]

_HOW_PUBLISHED = {
    "scan-ingest": "straight to Kafka; an upload is answered 202 only once Kafka acknowledged "
    "its event",
}
_OUTBOX = (
    "through its transactional outbox: written in the same database transaction as the change, "
    "published at least once, in commit order per key"
)


def _document_publications(service: str, runtime: ServiceRuntime) -> None:
    """Documentation-only publishers: what the service publishes, and its dead letters."""
    broker = runtime.broker
    by_topic: dict[str, list[type[EventData]]] = {}
    for model in publishes(service):
        by_topic.setdefault(model.topic, []).append(model)
    for topic, models in by_topic.items():
        names = ", ".join(m.event_type for m in models)
        broker.publisher(
            topic,
            title=f"{service}:{topic}",
            description=f"{service} publishes {names}, {_HOW_PUBLISHED.get(service, _OUTBOX)}.",
            schema=documented_body(models),
        )
    for subscriber in list(broker.subscribers):
        for title, channel in subscriber.schema().items():
            topic = channel.address or title.rsplit(":", 1)[-1]
            consumer = title.removesuffix(f":{topic}")
            broker.publisher(
                dlq_topic(topic),
                title=f"{consumer}:{dlq_topic(topic)}",
                description=f"Messages of {topic} that {consumer} could not process: the "
                "original bytes, with headers saying which consumer, why and when.",
                schema=_DLQ_BODY,
            )


def asyncapi_document(runtimes: dict[str, ServiceRuntime] | None = None) -> dict[str, Any]:
    runtimes = runtimes if runtimes is not None else build_runtimes()
    for service, runtime in runtimes.items():
        runtime.broker.specification.description = (
            "The Kafka cluster of KAFKA_BOOTSTRAP_SERVERS (here, deploy/k8s's placeholder)."
        )
        _document_publications(service, runtime)
    spec = AsyncAPI(
        *(runtime.broker for runtime in runtimes.values()),
        title="scanner-auth events",
        version=VERSION,
        description=ASYNCAPI_DESCRIPTION,
        schema_version="3.0.0",
    ).to_specification()
    document: dict[str, Any] = spec.to_jsonable()
    _describe_messages(document)
    return _in_reading_order(document)


def _describe_messages(document: dict[str, Any]) -> None:
    """What faststream cannot say: the Kafka key, and the headers of a dead letter."""
    messages = document["components"]["messages"]
    for channel in document["channels"].values():
        dead_letters = channel["address"].endswith(".dlq")
        for reference in channel["messages"].values():
            message = messages[reference["$ref"].rsplit("/", 1)[1]]
            key = (
                "The original message's key."
                if dead_letters
                else "The scanner id (the user id for UserUpserted)."
            )
            message["bindings"] = {
                "kafka": {"key": {"type": "string", "description": key}, "bindingVersion": "0.4.0"}
            }
            if dead_letters:
                message["headers"] = {
                    "type": "object",
                    "properties": {
                        name: {"type": "string", "description": text}
                        for name, text in DLQ_HEADERS.items()
                    },
                    "required": list(DLQ_HEADERS),
                }


def _in_reading_order(document: dict[str, Any]) -> dict[str, Any]:
    """Each topic's channels together (its writers first), and components by name."""
    (server,) = document["servers"].values()  # faststream calls it "development"
    document["servers"] = {"kafka": server}
    for channel in document["channels"].values():
        channel["servers"] = [{"$ref": "#/servers/kafka"}]
    operations = document["operations"]

    def order(item: tuple[str, Any]) -> tuple[str, str, str]:
        key, channel = item
        return (channel["address"], operations[key]["action"] != "send", key)

    channels = dict(sorted(document["channels"].items(), key=order))
    document["channels"] = channels
    document["operations"] = {key: operations[key] for key in channels}
    components = document["components"]
    for part in ("messages", "schemas"):
        components[part] = dict(sorted(components[part].items()))
    return document


# ------------------------------------------------------------------------------ OpenAPI


class ScanAccepted(BaseModel):
    """The upload is stored: its ScanIngested event is on myscanner.scans.v1."""

    scan_id: str = Field(
        description="The upload's `scan_id` when it carried one (a string of 1 to 200 "
        "characters), else a fresh UUID. Retry with the same scan_id after a 503."
    )
    received_at: datetime = Field(description="When the gateway received it (RFC 3339, UTC).")


def _problem(description: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    if headers:
        response["headers"] = {
            name: {"description": text, "schema": {"type": "string"}}
            for name, text in headers.items()
        }
    return response


_RETRY_AFTER = {"Retry-After": "Seconds to wait before retrying."}

# scan-ingest is plain Starlette (its hot path has no validation framework): its operations are
# described here; tests/contracts checks them against its routes and the statuses its code answers.
SCAN_INGEST_PATHS: dict[str, dict[str, Any]] = {
    "/v1/scans": {
        "post": {
            "tags": ["scans"],
            "summary": "Upload scan data",
            "description": "An authorised scanner uploads one scan document. The gate answers "
            "from memory (no database round trip); a change in authorisation reaches it within "
            "a second. 202 only once Kafka acknowledged the ScanIngested event.",
            "operationId": "upload_scan",
            "security": [{"ScannerCredential": []}],
            "requestBody": {
                "required": True,
                "description": "A JSON object of at most INGEST_MAX_BODY_BYTES (default 1 MiB), "
                "carried whole in ScanIngested's `scan`.",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "scan_id": {
                                    "type": "string",
                                    "minLength": 1,
                                    "maxLength": 200,
                                    "description": "The scanner's own id for this scan "
                                    "(optional: without one the gateway makes one up): "
                                    "retries with the same id are duplicates consumers "
                                    "drop. Any other value is refused with 422.",
                                }
                            },
                            "additionalProperties": True,
                        }
                    }
                },
            },
            "responses": {
                "202": {
                    "description": "Stored: a ScanIngested event is on myscanner.scans.v1.",
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/ScanAccepted"}
                        }
                    },
                },
                "400": _problem(
                    "Content-Length is not a number, or the client went away mid-body."
                ),
                "401": _problem(
                    "No credential, or one this system never issued (or malformed).",
                    {"WWW-Authenticate": 'Bearer realm="scan-ingest"'},
                ),
                "403": _problem(
                    "The credential no longer works: the scanner was deauthorised, it was "
                    "replaced by a new authorisation, or its rotation grace period ended."
                ),
                "413": _problem(
                    "The body exceeds INGEST_MAX_BODY_BYTES (the connection is closed).",
                ),
                "422": _problem(
                    "The body is not JSON, not a JSON object, or its scan_id is not a string "
                    "of 1 to 200 characters."
                ),
                "503": _problem(
                    "Not stored: the gate is still loading, or Kafka did not acknowledge the "
                    "event in time. Retry later with the same scan_id.",
                    _RETRY_AFTER,
                ),
            },
        }
    },
}


def fastapi_document(runtime: ServiceRuntime) -> dict[str, Any]:
    """The document the service serves (scanner_auth_shared.api.fastapi_app: FastAPI's, with
    the ops routes and the problems as they are answered)."""
    app: Any = runtime.app
    return copy.deepcopy(app.openapi())


def scan_ingest_document(runtime: ServiceRuntime) -> dict[str, Any]:
    app: Any = runtime.app
    routed = routed_operations(app) - {(p, m) for p, ops in OPS_PATHS.items() for m in ops}
    described = {(p, m) for p, ops in SCAN_INGEST_PATHS.items() for m in ops}
    if routed != described:
        raise RuntimeError(
            f"scan-ingest: routes {sorted(routed)} but described {sorted(described)}"
        )
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "scanner-auth scan-ingest",
            "description": "The ingest gateway: authorised scanners upload scan data with the "
            "credential the redeemer gave them.",
            "version": VERSION,
        },
        "paths": copy.deepcopy(SCAN_INGEST_PATHS),
        "components": {
            "schemas": component_schemas(ProblemDetails, ScanAccepted),
            "securitySchemes": {
                "ScannerCredential": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The scanner's credential from the redeemer "
                    "(POST /v1/authorisations or /v1/credentials/rotate).",
                }
            },
        },
    }
    add_ops(document, app)
    document["components"]["schemas"] = dict(sorted(document["components"]["schemas"].items()))
    return document


def openapi_documents(
    runtimes: dict[str, ServiceRuntime] | None = None,
) -> dict[str, dict[str, Any]]:
    runtimes = runtimes if runtimes is not None else build_runtimes()
    return {
        "token-issuer": fastapi_document(runtimes["token-issuer"]),
        "redeemer": fastapi_document(runtimes["redeemer"]),
        "scan-ingest": scan_ingest_document(runtimes["scan-ingest"]),
    }


# ------------------------------------------------------------------------------ files


class _Dumper(yaml.SafeDumper):  # type: ignore[misc]
    """Multi-line strings as literal blocks, as written."""


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _str)


def render() -> dict[str, str]:
    """Every document's path (relative to contracts/) and text."""
    runtimes = build_runtimes()
    files = {
        f"openapi/{name}.json": json.dumps(document, indent=2, ensure_ascii=False) + "\n"
        for name, document in openapi_documents(runtimes).items()
    }
    asyncapi = yaml.dump(
        asyncapi_document(runtimes),
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        width=100,
    )
    return {ASYNCAPI_FILE: asyncapi, **files}


def stale(directory: Path, rendered: dict[str, str] | None = None) -> list[Path]:
    """The committed documents that differ from what the code generates (or are missing)."""
    rendered = rendered if rendered is not None else render()
    return [
        directory / name
        for name, text in rendered.items()
        if not (directory / name).is_file() or (directory / name).read_text() != text
    ]


def write(directory: Path, rendered: dict[str, str] | None = None) -> list[Path]:
    """Write the documents that changed; returns them."""
    rendered = rendered if rendered is not None else render()
    changed = stale(directory, rendered)
    for path in changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rendered[str(path.relative_to(directory))])
    return changed


def main(directory: Path = DEFAULT_DIR, *, check: bool = False) -> int:
    if check:
        out_of_date = stale(directory)
        for path in out_of_date:
            print(f"out of date: {path}")
        if out_of_date:
            print("regenerate them with `scanner-auth contracts` and commit them")
            return 1
        print(f"contracts up to date in {directory}")
        return 0
    for path in write(directory):
        print(f"wrote {path}")
    return 0
