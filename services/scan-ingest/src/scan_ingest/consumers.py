"""scan-ingest's subscriptions: the gate writer on the public authorisation topic."""

from __future__ import annotations

from typing import Any

from faststream.kafka import KafkaBroker

from scanner_auth_shared.events import PUBLIC_TOPIC
from scanner_auth_shared.messaging import subscribe_events
from scanner_auth_shared.settings import ServiceSettings

from .handlers import GATE_CONSUMER, GATE_EVENT_TYPES, GATE_GROUP, GateWriter

# A change in authorisation must reach the gate quickly (the contract: within one second; the
# benchmark: redeem 201 → the gate accepts, p99 ≤ 100 ms). On Tansu a hop waits up to the
# fetch's wait: 50 ms rather than the shared 100 (bench/README.md, "Hops").
GATE_FETCH_MAX_WAIT_MS = 50


def subscribe_gate_writer(
    broker: KafkaBroker, settings: ServiceSettings, writer: GateWriter
) -> Any:
    return subscribe_events(
        broker,
        settings,
        topic=PUBLIC_TOPIC,
        consumer=GATE_CONSUMER,
        group_id=GATE_GROUP,
        handler=writer.apply,
        types=set(GATE_EVENT_TYPES),
        description="Applies ScannerAuthorised, CredentialRotated and ScannerDeauthorised to "
        "the gate's credential table and notifies every replica.",
        fetch_max_wait_ms=GATE_FETCH_MAX_WAIT_MS,
    )
