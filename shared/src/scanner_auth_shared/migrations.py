"""Alembic migrations, one history per service (each owns its own database or schema).

A service's `migrations/env.py` is two lines: `from scanner_auth_shared.migrations import
run_env; run_env()`. Replicas starting together serialise on an advisory lock, so each
migration runs once.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

_LOCK = zlib.crc32(b"scanner-auth-migrations")


def _upgrade_sync(connection: Any, script_location: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", script_location)
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def upgrade(database_url: str, script_location: Path, revision: str = "head") -> None:
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK})
            await conn.commit()
            try:
                await conn.run_sync(_upgrade_sync, str(script_location), revision)
                await conn.commit()
            finally:
                await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK})
                await conn.commit()
    finally:
        await engine.dispose()


def run_env() -> None:
    """Body of every service's alembic env.py (online mode, connection given by `upgrade`)."""
    from alembic import context

    connection = context.config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations with `scanner-auth migrate <service>`")
    context.configure(connection=connection, target_metadata=None, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


def executing(statements: Sequence[str]) -> Callable[[], None]:
    """An alembic `upgrade`/`downgrade` that runs `statements`: a migration every service has
    (0002, the messaging tables' retention) is one line in each, its DDL written once."""

    def run() -> None:
        from alembic import op

        for statement in statements:
            op.execute(statement)

    return run
