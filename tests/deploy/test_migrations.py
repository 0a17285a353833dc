"""Every service's migrations build the shared messaging tables (the outbox and the
processed-event table) exactly as `scanner_auth_shared.tables` declares them, the retention's
index included (migration 0002): the purge of old processed events stays an index range scan in
every service, not a sequential scan of a table that grows with every event consumed."""

from __future__ import annotations

import importlib
from pathlib import Path

import asyncpg
import pytest

from scanner_auth_shared.db import asyncpg_dsn
from scanner_auth_shared.tables import MESSAGING_METADATA, MESSAGING_TABLES
from scanner_auth_shared.testing.schema import assert_migrations_match_models

pytestmark = pytest.mark.integration

PACKAGES = ("token_issuer", "redeemer", "notifier", "scan_ingest")


def _migrations(package: str) -> Path:
    return Path(importlib.import_module(package).__file__ or "").parent / "migrations"


@pytest.mark.parametrize("package", PACKAGES)
async def test_the_messaging_tables_are_built_as_declared(database_url: str, package: str) -> None:
    await assert_migrations_match_models(
        database_url, _migrations(package), MESSAGING_METADATA, only=MESSAGING_TABLES
    )
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute("SET enable_seqscan = off")  # the planner's choice on an empty table
        plan = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) SELECT ctid FROM processed_events"
            " WHERE processed_at < now() - interval '35 days' LIMIT 10000"
        )
        options = await conn.fetchval("SELECT reloptions FROM pg_class WHERE relname = 'outbox'")
    finally:
        await conn.close()
    assert "processed_events_age" in plan
    assert "autovacuum_vacuum_threshold=1000" in (options or [])
