"""Outbox relay drain rate, against a bare aiokafka producer sending the same events.

Its own process (started by bench/run.py). For each backlog size and run: the outbox table is
filled with N committed `TokenIssued` events (COPY), then
- relay: the service relay exactly as a service builds it (`ServiceRuntime.use_outbox_relay()`:
  its SELECT, record batches per partition through the broker's aiokafka producer, its wait
  for every acknowledgement, its DELETE) drains the table batch after batch until it is empty;
- floor: one bare `AIOKafkaProducer` with the services' producer settings (acks=all, linger)
  sends the same N payloads with the same keys and headers and waits for every
  acknowledgement.
- per row: the same relay without the producer (`OutboxRelay(producer=None)`, its fallback when
  the broker holds no aiokafka producer): one faststream publish per row.
Runs alternate (relay, per row, bare, relay, …) after one warm-up of each; prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from scanner_auth_shared.db import asyncpg_dsn
from scanner_auth_shared.events import TokenIssued, new_event
from scanner_auth_shared.messaging import aiokafka_producer, create_broker, start_broker
from scanner_auth_shared.outbox import MESSAGING_DDL, OutboxRelay
from scanner_auth_shared.runtime import ServiceRuntime
from scanner_auth_shared.settings import DatabaseSettings

TOPIC = "bench.relay.v1"


def make_events(n: int) -> list[tuple[str, str, str, str, bytes]]:
    """(event_id, event_type, topic, key, payload) of n TokenIssued events, 64 scanners."""
    now = datetime.now(UTC)
    out = []
    for i in range(n):
        scanner_id = f"bench-sc-{i % 64:05d}"
        event = new_event(
            TokenIssued(
                token_id=str(uuid.uuid4()),
                scanner_id=scanner_id,
                org_id="org-bench",
                issued_by="u-bench-admin",
                issued_at=now,
                expires_at=now + timedelta(days=3),
                code_digest=hashlib.sha256(str(i).encode()).hexdigest(),
            ),
            source="scanner-auth/token-issuer",
        )
        out.append((event.id, event.type, TOPIC, scanner_id, event.to_bytes()))
    return out


async def fill(conn: asyncpg.Connection, rows: list[tuple[str, str, str, str, bytes]]) -> None:
    await conn.execute("TRUNCATE outbox")
    await conn.copy_records_to_table(
        "outbox", records=rows, columns=["event_id", "event_type", "topic", "key", "payload"]
    )


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--database-url", required=True)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--sizes", default="10000")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=0, help="relay batch size (0: its default)")
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    settings = DatabaseSettings(
        database_url=args.database_url,
        kafka_bootstrap_servers=args.bootstrap,
        outbox_poll_interval_seconds=1.0,
    )
    runtime = ServiceRuntime(
        name="bench-relay", settings=settings, broker=create_broker(settings, "bench-relay")
    )
    relay = runtime.use_outbox_relay()
    # The same relay without the producer: one faststream publish per row (its fallback).
    per_row = OutboxRelay(
        relay.database, relay.send, service="bench-relay", producer=None, signer=relay.signer
    )
    if args.batch_size:
        relay.batch_size = per_row.batch_size = args.batch_size
    dsn = asyncpg_dsn(args.database_url)
    conn = await asyncpg.connect(dsn)
    for statement in MESSAGING_DDL:
        await conn.execute(statement)
    relay_conn = await asyncpg.connect(dsn)
    await start_broker(runtime.broker)
    if aiokafka_producer(runtime.broker) is None:
        raise RuntimeError("the broker holds no aiokafka producer: the relay would send per row")
    # The services' producer settings (create_broker): acks=all, no idempotence, linger 2 ms,
    # and the request size limit scan-ingest raises.
    bare = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap, acks="all", enable_idempotence=False, linger_ms=2
    )
    await bare.start()

    async def drain(which: OutboxRelay) -> float:
        started = time.perf_counter()
        while await which.drain_once(relay_conn):
            pass
        return time.perf_counter() - started

    async def send_bare(rows: list[tuple[str, str, str, str, bytes]]) -> float:
        started = time.perf_counter()
        futures = []
        for _, event_type, topic, key, payload in rows:
            headers = [
                ("content-type", b"application/cloudevents+json"),
                ("ce-type", event_type.encode()),
            ]
            futures.append(await bare.send(topic, payload, key=key.encode(), headers=headers))
        await asyncio.gather(*futures)
        return time.perf_counter() - started

    results: dict[str, Any] = {"batch_size": relay.batch_size, "sizes": {}}
    try:
        warm = make_events(2000)
        for which in (relay, per_row):
            await fill(conn, warm)
            await drain(which)
        await send_bare(warm)
        for size in sizes:
            rows = make_events(size)
            rates: dict[str, list[float]] = {"relay": [], "per_row": [], "bare": []}
            for _ in range(args.runs):
                for name, which in (("relay", relay), ("per_row", per_row)):
                    await fill(conn, rows)
                    seconds = await drain(which)
                    left = await conn.fetchval("SELECT count(*) FROM outbox")
                    if left:
                        raise RuntimeError(f"the relay left {left} rows")
                    rates[name].append(size / seconds)
                rates["bare"].append(size / await send_bare(rows))
            results["sizes"][str(size)] = {
                "relay_per_s": rates["relay"],
                "per_row_relay_per_s": rates["per_row"],
                "bare_per_s": rates["bare"],
                "relay_median": statistics.median(rates["relay"]),
                "per_row_relay_median": statistics.median(rates["per_row"]),
                "bare_median": statistics.median(rates["bare"]),
            }
    finally:
        await bare.stop()
        await runtime.broker.stop()
        await relay_conn.close()
        await conn.close()
    print("BENCH_JSON " + json.dumps(results), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
