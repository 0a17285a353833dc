"""Does the token INSERT with its audit row in one statement (a data-modifying CTE, as
adapters/postgres.py's TOKENS_ADD_AUDITED) pay, against the two INSERTs it replaces?

One transaction of just this, on the asyncpg pool the service uses, on an embedded PostgreSQL
with the service's migrations; 2,000 transactions per round, the two variants alternating for
7 rounds after a discarded warm-up round, on one connection and on eight. Reported: wall time
and this process's CPU time per transaction (median and best of the rounds).

    .venv/bin/python services/token-issuer/bench/token_insert.py
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from scanner_auth_shared.infra import EmbeddedPostgres
from scanner_auth_shared.migrations import upgrade
from scanner_auth_shared.postgres import asyncpg_dsn
from token_issuer.adapters.postgres import RECORD_AUDIT, TOKENS_ADD_AUDITED

MIGRATIONS = Path(__file__).parents[1] / "src" / "token_issuer" / "migrations"
TOKENS_ADD = TOKENS_ADD_AUDITED[TOKENS_ADD_AUDITED.index("INSERT INTO tokens") :]  # alone
TRANSACTIONS, ROUNDS = 2000, 7


async def one(pool: asyncpg.Pool, cte: bool) -> None:
    now = datetime.now(UTC)
    token_id = str(uuid.uuid4())
    scanner_id = f"sc-{token_id}"
    token = (token_id, scanner_id, "org-a", b"x" * 60, "d" * 64, "active", now, "u-1")
    token += (now + timedelta(days=3),)
    audit = (now, "u-1", "org-a", "generated", scanner_id, token_id, None, None)
    async with pool.acquire() as conn, conn.transaction():
        if cte:
            await conn.execute(TOKENS_ADD_AUDITED, *token, *audit)
        else:
            await conn.execute(TOKENS_ADD, *token)
            await conn.execute(RECORD_AUDIT, *audit)


async def measure(dsn: str, concurrency: int) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}

    async def worker(cte: bool) -> None:
        for _ in range(TRANSACTIONS // concurrency):
            await one(pool, cte)

    for n in range(ROUNDS + 1):
        for cte in (True, False) if n % 2 else (False, True):
            cpu, wall = time.process_time(), time.perf_counter()
            await asyncio.gather(*(worker(cte) for _ in range(concurrency)))
            per_wall = (time.perf_counter() - wall) / TRANSACTIONS * 1e6
            per_cpu = (time.process_time() - cpu) / TRANSACTIONS * 1e6
            if n:  # round 0 warms up
                results[cte].append((per_wall, per_cpu))
    await pool.close()
    for cte, name in ((True, "one statement (CTE)"), (False, "two INSERTs        ")):
        walls, cpus = [w for w, _ in results[cte]], [c for _, c in results[cte]]
        print(
            f"{concurrency} connection(s), {name}: wall {statistics.median(walls):.0f} µs "
            f"(best {min(walls):.0f}), client CPU {statistics.median(cpus):.0f} µs "
            f"(best {min(cpus):.0f}) per transaction"
        )


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="token-insert-bench-"))
    server = EmbeddedPostgres(root / "data").start()
    try:
        url = server.create_database("bench")
        asyncio.run(upgrade(url, MIGRATIONS))
        for concurrency in (1, 8):
            asyncio.run(measure(asyncpg_dsn(url), concurrency))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
