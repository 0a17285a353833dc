"""scan-ingest's composition root."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from faststream.kafka import KafkaBroker

from scanner_auth_shared.api import starlette_app
from scanner_auth_shared.consumer import subscribe
from scanner_auth_shared.events import ScanIngested
from scanner_auth_shared.http import parse_networks
from scanner_auth_shared.listen import Listener
from scanner_auth_shared.messaging import create_broker
from scanner_auth_shared.postgres import Database
from scanner_auth_shared.runtime import ServiceRuntime

from . import handlers
from .adapters.gate import CredentialGate
from .adapters.gate_sync import APPLICATION_NAME, NOTIFY_CHANNEL, GateSync
from .adapters.kafka import KafkaScanPublisher
from .adapters.ports import GateUnitOfWork
from .adapters.postgres import PostgresGateCredentials, PostgresGateUnitOfWork
from .api import ScanUploads
from .consumers import GATE_WRITER
from .settings import Settings

SERVICE = "scan-ingest"
# What it publishes, straight to Kafka (the AsyncAPI document: `scanner-auth contracts`).
PUBLISHES = (ScanIngested,)
# Room for the CloudEvents envelope around the largest accepted body.
ENVELOPE_ALLOWANCE_BYTES = 64 * 1024


@dataclass
class Services:
    """What the running service is made of (on `app.state.services`)."""

    gate: CredentialGate
    sync: GateSync
    listener: Listener
    publisher: KafkaScanPublisher
    uploads: ScanUploads


def build(settings: Settings) -> ServiceRuntime:
    broker = _broker(settings)
    runtime = ServiceRuntime(name=SERVICE, settings=settings, broker=broker)
    database = runtime.use_postgres(Path(__file__).parent / "migrations")

    # Writer: one consumer group applies authorisation events to the gate's table.
    subscribe(broker, settings, GATE_WRITER, lambda: _gate_unit_of_work(database))

    # Retention: credentials past any use are forgotten (every replica runs it: one indexed
    # DELETE, idempotent; its memory follows at the next full load).
    async def purge_ended() -> None:
        await handlers.purge_ended(
            _gate_unit_of_work(database),
            rotated_after=settings.gate_rotated_retention_seconds,
            ended_after=settings.gate_ended_retention_seconds,
        )

    runtime.periodically("gate-retention", settings.gate_purge_interval_seconds, purge_ended)

    # Reader (every replica): the table in memory, followed through LISTEN/NOTIFY.
    gate = CredentialGate()
    sync = GateSync(gate, PostgresGateCredentials, resync_seconds=settings.gate_resync_seconds)
    listener = Listener(
        database,
        {NOTIFY_CHANNEL: sync.note},
        name=APPLICATION_NAME,
        keepalive_seconds=settings.gate_keepalive_seconds,
    )
    runtime.background["gate-sync"] = lambda: listener.run(
        functools.partial(sync.session, listener)
    )

    async def gate_ready() -> bool:
        return listener.connected and sync.ready

    runtime.probes["gate"] = gate_ready

    publisher = KafkaScanPublisher(broker, timeout=settings.publish_timeout_seconds)
    uploads = ScanUploads(
        gate=gate,
        publisher=publisher,
        max_body_bytes=settings.ingest_max_body_bytes,
        retry_after_seconds=settings.publish_retry_after_seconds,
        trusted_proxies=parse_networks(settings.trusted_proxies),
    )
    app = starlette_app(runtime, routes=uploads.routes())
    app.state.services = Services(gate, sync, listener, publisher, uploads)
    return runtime


def _gate_unit_of_work(database: Database) -> GateUnitOfWork:
    # A cast: mypy infers the shared units of work's `inbox` as PostgresInbox / MemoryInbox,
    # which does not satisfy the `UnitOfWork` protocol's (mutable, so invariant) `inbox: Inbox`;
    # declaring `inbox: Inbox` in scanner_auth_shared.uow would make this a plain return.
    return cast(GateUnitOfWork, PostgresGateUnitOfWork(database))


def _broker(settings: Settings) -> KafkaBroker:
    # aiokafka's default 1 MiB request limit is smaller than a body of INGEST_MAX_BODY_BYTES
    # inside its envelope.
    return create_broker(
        settings,
        SERVICE,
        max_request_size=max(1_048_576, settings.ingest_max_body_bytes + ENVELOPE_ALLOWANCE_BYTES),
    )
