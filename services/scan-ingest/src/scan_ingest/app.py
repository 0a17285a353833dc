"""scan-ingest's composition root."""

from __future__ import annotations

from pathlib import Path

from faststream.kafka import KafkaBroker

from scanner_auth_shared.api import starlette_app
from scanner_auth_shared.db import asyncpg_dsn
from scanner_auth_shared.events import ScanIngested
from scanner_auth_shared.http import parse_networks
from scanner_auth_shared.messaging import create_broker
from scanner_auth_shared.runtime import ServiceRuntime

from .adapters.gate_sync import GateSync
from .api import ScanUploads
from .consumers import subscribe_gate_writer
from .gate import CredentialGate
from .handlers import GateWriter
from .settings import Settings

SERVICE = "scan-ingest"
# What it publishes, straight to Kafka (the AsyncAPI document: `scanner-auth contracts`).
PUBLISHES = (ScanIngested,)
# Room for the CloudEvents envelope around the largest accepted body.
ENVELOPE_ALLOWANCE_BYTES = 64 * 1024


def build(settings: Settings) -> ServiceRuntime:
    broker = _broker(settings)
    runtime = ServiceRuntime(name=SERVICE, settings=settings, broker=broker)
    database = runtime.use_database(Path(__file__).parent / "migrations")

    # Writer: one consumer group applies authorisation events to the gate's table.
    subscribe_gate_writer(broker, settings, GateWriter(database))

    # Reader (every replica): the table in memory, followed through LISTEN/NOTIFY.
    gate = CredentialGate()
    sync = GateSync(
        asyncpg_dsn(settings.database_url),
        gate,
        resync_seconds=settings.gate_resync_seconds,
        keepalive_seconds=settings.gate_keepalive_seconds,
    )
    runtime.background["gate-sync"] = sync.run
    runtime.probes["gate"] = sync.readiness

    uploads = ScanUploads(
        gate=gate,
        broker=broker,
        max_body_bytes=settings.ingest_max_body_bytes,
        publish_timeout_seconds=settings.publish_timeout_seconds,
        retry_after_seconds=settings.publish_retry_after_seconds,
        trusted_proxies=parse_networks(settings.trusted_proxies),
    )
    starlette_app(runtime, routes=uploads.routes())
    return runtime


def _broker(settings: Settings) -> KafkaBroker:
    # aiokafka's default 1 MiB request limit is smaller than a body of INGEST_MAX_BODY_BYTES
    # inside its envelope.
    return create_broker(
        settings,
        SERVICE,
        max_request_size=max(1_048_576, settings.ingest_max_body_bytes + ENVELOPE_ALLOWANCE_BYTES),
    )
