"""The floor of the capacity figures (`issue_capacity`, `redeem_capacity`): one INSERT a request.

The same process model as a service (`scanner-auth serve`'s event loop and logging, `serve()`),
the same `ServiceRuntime` with a started Kafka broker, the same FastAPI app and middleware
(`fastapi_app`), the same asyncpg pool (`runtime.use_postgres`: DATABASE_POOL_SIZE, the statement
cache) on the same database as the redeemer (run with its environment). Its one route,
`POST /v1/floor`, answers 201 after one INSERT round trip: what a use case would cost if it did
nothing but write one row.

Run by bench/run.py as its own process, configured from the environment like the redeemer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import APIRouter

from scanner_auth.cli import _run
from scanner_auth_shared.api import fastapi_app
from scanner_auth_shared.logs import configure_logging
from scanner_auth_shared.messaging import create_broker
from scanner_auth_shared.runtime import ServiceRuntime, serve
from scanner_auth_shared.settings import DatabaseSettings, load_settings

# The redeemer's migrations: its database is already migrated, so they change nothing.
MIGRATIONS = Path(__file__).resolve().parents[1] / "services/redeemer/src/redeemer/migrations"
TABLE = """
    CREATE TABLE IF NOT EXISTS bench_capacity_floor (
        id bigserial PRIMARY KEY, body text NOT NULL, at timestamptz NOT NULL DEFAULT now()
    )
"""
INSERT = "INSERT INTO bench_capacity_floor (body) VALUES ($1) RETURNING id"


def main() -> None:
    configure_logging("bench-capacity-floor", os.environ.get("LOG_LEVEL", "INFO"))
    settings = load_settings(DatabaseSettings)
    runtime = ServiceRuntime(
        name="bench-capacity-floor",
        settings=settings,
        broker=create_broker(settings, "bench-capacity-floor"),
    )
    database = runtime.use_postgres(MIGRATIONS)

    async def create_table() -> None:
        async with database.connection() as conn:
            await conn.execute(TABLE)

    runtime.on_start.append(create_table)
    router = APIRouter()

    @router.post("/v1/floor", status_code=201)
    async def floor(body: dict[str, Any]) -> dict[str, Any]:
        async with database.connection() as conn:
            row_id = await conn.fetchval(INSERT, str(body.get("n", "")))
        return {"id": row_id}

    fastapi_app(runtime, title="bench capacity floor", routers=[router])
    _run(serve(runtime))


if __name__ == "__main__":
    main()
