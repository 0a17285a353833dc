"""One event hop, stage by stage: outbox commit → relay's produce acknowledged → subscriber.

Its own process, own embedded PostgreSQL and Apache Kafka node (full JIT; not part of `make
bench`; a tool to trace a hop's latency, see bench/README.md "Hops"). A producer runtime wired
as a service is (`use_outbox_relay()`), a consumer runtime with one `subscribe_events`
subscriber; N times, one at a time with a random pause: commit one outbox row, and time when
the relay's acknowledgement arrived and when the handler ran. Prints percentiles per stage as
one JSON line.

    python bench/hop_probe.py --samples 40 --fetch-max-wait-ms 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from scanner_auth_shared.consumer import Consumer, subscribe
from scanner_auth_shared.db import asyncpg_dsn
from scanner_auth_shared.events import (
    PUBLIC_TOPIC,
    CloudEvent,
    EventData,
    ScannerDeauthorised,
    new_event,
)
from scanner_auth_shared.infra import EmbeddedPostgres, remove_tree
from scanner_auth_shared.kafka_broker import ApacheKafka
from scanner_auth_shared.messaging import create_broker
from scanner_auth_shared.outbox import MESSAGING_DDL
from scanner_auth_shared.runtime import ServiceRuntime
from scanner_auth_shared.settings import DatabaseSettings
from scanner_auth_shared.uow import MemoryStore, MemoryUnitOfWork

FAST: dict[str, Any] = {
    "kafka_session_timeout_ms": 3000,
    "kafka_heartbeat_interval_ms": 500,
    "outbox_poll_interval_seconds": 1.0,
    "shutdown_grace_seconds": 5.0,
}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def probe(
    database_url: str, bootstrap: str, samples: int, broker_pid: int, fetch_max_wait_ms: int
) -> dict[str, Any]:
    settings = DatabaseSettings(
        database_url=database_url, kafka_bootstrap_servers=bootstrap, **FAST
    )
    dsn = asyncpg_dsn(database_url)
    conn = await asyncpg.connect(dsn)
    for statement in MESSAGING_DDL:
        await conn.execute(statement)

    producer = ServiceRuntime(
        name="probe-out", settings=settings, broker=create_broker(settings, "probe-out")
    )
    relay = producer.use_outbox_relay()
    acked: dict[str, float] = {}
    committed_ids: list[str] = []
    drain_once = relay.drain_once

    async def timed_drain(c: asyncpg.Connection) -> int:
        # A drain publishes what its own SELECT finds: a row committed after a SELECT here and
        # before the drain's would be missed (it happens on Kafka, whose hop is quick). So:
        # every row of the probe that the drain deleted was acknowledged by now.
        n = await drain_once(c)
        now = time.perf_counter()
        if n:
            left = {r["event_id"] for r in await c.fetch("SELECT event_id FROM outbox")}
            for i in [i for i in committed_ids if i not in left and i not in acked]:
                acked[i] = now
        return n

    relay.drain_once = timed_drain  # type: ignore[method-assign,assignment]

    consumer = ServiceRuntime(
        name="probe-in", settings=settings, broker=create_broker(settings, "probe-in")
    )
    received: dict[str, float] = {}

    async def handler(_uow: MemoryUnitOfWork, event: CloudEvent, _data: EventData) -> None:
        received[event.id] = time.perf_counter()

    store = MemoryStore()
    subscribe(
        consumer.broker,
        settings,
        Consumer(
            name=f"probe-{uuid.uuid4().hex[:6]}",
            topic=PUBLIC_TOPIC,
            handlers={ScannerDeauthorised: handler},
            description="the hop probe: when each event reached a consumer",
            wait_ms=fetch_max_wait_ms,
        ),
        lambda: MemoryUnitOfWork(store, source="scanner-auth/probe"),
    )

    def event() -> CloudEvent:
        return new_event(
            ScannerDeauthorised(
                scanner_id=f"sc-{uuid.uuid4().hex[:8]}",
                org_id="org-probe",
                credential_id=None,
                deauthorised_by="u-probe",
                reason="deauthorised",
                deauthorised_at=datetime.now(UTC) - timedelta(seconds=1),
            ),
            source="scanner-auth/probe",
        )

    insert = (
        "INSERT INTO outbox (event_id, event_type, topic, key, payload) VALUES ($1, $2, $3, $4, $5)"
    )
    stages: dict[str, list[float]] = {"relay_acked": [], "acked_to_handler": [], "total": []}
    async with producer.running(), consumer.running():
        warm = event()
        committed_ids.append(warm.id)
        await conn.execute(insert, warm.id, warm.type, PUBLIC_TOPIC, warm.subject, warm.to_bytes())
        while warm.id not in received:
            await asyncio.sleep(0.01)
        for _ in range(samples):
            await asyncio.sleep(random.uniform(0.05, 0.3))
            e = event()
            committed_ids.append(e.id)
            await conn.execute(insert, e.id, e.type, PUBLIC_TOPIC, e.subject, e.to_bytes())
            committed = time.perf_counter()
            deadline = committed + 10
            while (e.id not in received or e.id not in acked) and time.perf_counter() < deadline:
                await asyncio.sleep(0.0005)
            if e.id not in received or e.id not in acked:
                raise RuntimeError("event not acknowledged and received in 10 s")
            stages["relay_acked"].append((acked[e.id] - committed) * 1000)
            stages["acked_to_handler"].append((received[e.id] - acked[e.id]) * 1000)
            stages["total"].append((received[e.id] - committed) * 1000)
        # What waiting costs: CPU of this process (two runtimes, one subscriber) and of the
        # broker over 5 idle seconds.
        own, theirs = time.process_time(), cpu_seconds(broker_pid)
        await asyncio.sleep(5)
        idle = {
            "probe_cpu_ms_per_s": round((time.process_time() - own) * 1000 / 5, 2),
            "broker_cpu_ms_per_s": round((cpu_seconds(broker_pid) - theirs) * 1000 / 5, 2),
        }
    await conn.close()
    return {
        "fetch_max_wait_ms": fetch_max_wait_ms,
        "idle": idle,
        **{
            name: {
                "p50": round(statistics.median(v), 1),
                "p90": round(pct(v, 90), 1),
                "p99": round(pct(v, 99), 1),
                "max": round(max(v), 1),
            }
            for name, v in stages.items()
        },
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--samples", type=int, default=40)
    p.add_argument("--fetch-max-wait-ms", type=int, default=100)  # Consumer.wait_ms's default
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hop-probe-"))
    pg = EmbeddedPostgres(root / "pg").start()
    broker = ApacheKafka(root / "kafka", fast_jit=False).start()
    try:
        url = pg.create_database("probe")
        pid = broker.nodes[0].pid
        assert pid is not None
        result = asyncio.run(
            probe(url, broker.bootstrap, args.samples, pid, args.fetch_max_wait_ms)
        )
        print(json.dumps(result))
    finally:
        broker.stop()
        pg.stop()
        remove_tree(root)


if __name__ == "__main__":
    main()
