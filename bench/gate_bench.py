"""Gate memory per authorised scanner and the time to rebuild it, at one or more sizes.

Its own process (started by bench/run.py). For each size: `gate_credentials` (scan-ingest's own
migration) is filled with N active credentials of uuid-sized ids in 200 organisations (COPY),
then scan-ingest's `GateSync.load_everything` does its full load (the code path of a start, a
reconnection and a resync: one repeatable-read snapshot read by cursor in chunks, packed into a
fresh gate, swapped in) `runs` times after one warm-up; the median is reported.

Memory per scanner, two ways, after the load:
- `exact`: what the gate's own objects take (sys.getsizeof of its dict, every key and value,
  and the organisation table), divided by N;
- `rss`: the process's resident memory with the gate minus without it (gc'd), divided by N:
  the allocator's overhead and fragmentation included.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import psutil

import scan_ingest
from scan_ingest.adapters.gate import CredentialGate
from scan_ingest.adapters.gate_sync import GateSync
from scan_ingest.adapters.postgres import PostgresGateCredentials
from scanner_auth_shared.db import asyncpg_dsn
from scanner_auth_shared.migrations import upgrade

MIGRATIONS = Path(scan_ingest.__file__).parent / "migrations"


async def fill(conn: asyncpg.Connection, have: int, want: int) -> None:
    """Add credentials until the table holds `want` (in chunks: a million tuples would be big)."""
    now = datetime.now(UTC)
    step = 100_000
    for start in range(have, want, step):
        rows = [
            (
                hashlib.sha256(os.urandom(32)).digest(),
                str(uuid.uuid4()),
                str(uuid.uuid4()),
                f"org-{i % 200}",
                now,
                "active",
            )
            for i in range(start, min(want, start + step))
        ]
        await conn.copy_records_to_table(
            "gate_credentials",
            records=rows,
            columns=[
                "credential_digest",
                "credential_id",
                "scanner_id",
                "org_id",
                "issued_at",
                "state",
            ],
        )
    await conn.execute("ANALYZE gate_credentials")


def exact_bytes(gate: CredentialGate) -> int:
    entries: dict[bytes, bytes] = gate._entries
    orgs = gate._orgs
    total = sys.getsizeof(entries)
    for key, value in entries.items():
        total += sys.getsizeof(key) + sys.getsizeof(value)
    total += sys.getsizeof(orgs.names) + sys.getsizeof(orgs.index)
    total += sum(sys.getsizeof(name) for name in orgs.names)
    return total


async def memory(dsn: str) -> dict[str, int]:
    """One full load in this fresh process: resident memory with the gate minus without."""
    process = psutil.Process()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.fetchval("SELECT 1")
        gc.collect()
        before = process.memory_info().rss
        gate = CredentialGate()
        await GateSync(gate, PostgresGateCredentials).load_everything(PostgresGateCredentials(conn))
        gc.collect()
        return {"rss": process.memory_info().rss - before, "exact": exact_bytes(gate)}
    finally:
        await conn.close()


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--database-url", required=True)
    p.add_argument("--sizes", default="1000000")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--memory", action="store_true", help="(internal) one load in a fresh process")
    args = p.parse_args()
    if args.memory:
        print(json.dumps(await memory(asyncpg_dsn(args.database_url))))
        return
    sizes = sorted(int(s) for s in args.sizes.split(","))

    await upgrade(args.database_url, MIGRATIONS)
    dsn = asyncpg_dsn(args.database_url)
    conn = await asyncpg.connect(dsn)
    await conn.execute("TRUNCATE gate_credentials")
    results: dict[str, Any] = {"sizes": {}}
    have = 0
    try:
        for size in sizes:
            started = time.perf_counter()
            await fill(conn, have, size)
            have = size
            fill_seconds = time.perf_counter() - started

            seconds = []
            for run in range(args.runs + 1):
                gate = CredentialGate()
                sync = GateSync(gate, PostgresGateCredentials)
                gc.collect()
                t = time.perf_counter()
                await sync.load_everything(PostgresGateCredentials(conn))
                if run:  # the first load is the warm-up
                    seconds.append(time.perf_counter() - t)
                assert len(gate) == size, (len(gate), size)
                del gate, sync
            probe = subprocess.run(
                [sys.executable, __file__, "--database-url", args.database_url, "--memory"],
                capture_output=True,
                text=True,
            )
            if probe.returncode:
                raise RuntimeError(f"memory probe failed: {probe.stderr[-2000:]}")
            mem = json.loads(probe.stdout)
            results["sizes"][str(size)] = {
                "load_seconds": seconds,
                "load_median_s": statistics.median(seconds),
                "exact_bytes_per_scanner": mem["exact"] / size,
                "rss_bytes_per_scanner": mem["rss"] / size,
                "fill_seconds": fill_seconds,
            }
    finally:
        await conn.close()
    print("BENCH_JSON " + json.dumps(results), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
