"""PostgreSQL: the one way the services reach their database, an asyncpg pool.

Every statement is SQL with `$n` parameters, run on a pooled connection; asyncpg prepares each
statement once per connection and keeps it (the statement cache), so a round trip costs about
40 µs of client CPU where the SQLAlchemy session cost 215-330 (bench/README.md). The schema's one
source is each service's SQLModel tables (`adapters/tables.py`); its migrations are checked
against them, and every statement of its repositories is prepared against the migrated schema
(`scanner_auth_shared.testing.schema`).

No pre-ping: a connection the server dropped fails its statement with an outage error
(`outages.is_infrastructure_error`), which the caller retries or answers 503, and the pool
replaces it. Nothing connects at import time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import asyncpg
from sqlalchemy.engine import make_url

# asyncpg.Connection and asyncpg.Record (asyncpg carries no type information for mypy).
Connection: TypeAlias = Any
Record: TypeAlias = Any


def asyncpg_dsn(database_url: str) -> str:
    """`postgresql+asyncpg://…` (DATABASE_URL) as the plain DSN asyncpg takes."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class Database:
    """A pool of connections to one service's database."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        application_name: str = "scanner-auth",
        statement_cache_size: int = 256,
        command_timeout: float = 30.0,
    ) -> None:
        """`statement_cache_size` 0 behind a transaction-mode PgBouncer (it cannot keep a
        prepared statement on a server connection). `command_timeout`: a statement that waits
        this long on a lock or a dead server fails (an outage) instead of hanging."""
        self.url = url
        self.dsn = asyncpg_dsn(url)
        self.pool_size = pool_size
        self.application_name = application_name
        self.statement_cache_size = statement_cache_size
        self.command_timeout = command_timeout
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("database not connected")
        return self._pool

    async def connect(self) -> None:
        """Create the pool (it opens connections as they are needed, up to `pool_size`)."""
        if self._pool is None:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=0,
                max_size=self.pool_size,
                max_inactive_connection_lifetime=300.0,
                statement_cache_size=self.statement_cache_size,
                command_timeout=self.command_timeout,
                server_settings={"application_name": self.application_name},
            )

    async def dispose(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await asyncio.wait_for(pool.close(), 5)
            except (TimeoutError, Exception):
                pool.terminate()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled connection, outside any transaction (each statement commits alone)."""
        async with self.pool.acquire() as conn:
            yield conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """A pooled connection in a transaction: committed when the block ends normally, rolled
        back when it raises."""
        async with self.pool.acquire() as conn, conn.transaction():
            yield conn

    async def ping(self, timeout: float = 2.0) -> bool:
        try:
            async with asyncio.timeout(timeout), self.connection() as conn:
                await conn.fetchval("SELECT 1")
            return True
        except Exception:
            return False

    async def connect_dedicated(self, **options: Any) -> Connection:
        """A connection of its own, outside the pool (LISTEN, advisory locks held for long)."""
        return await asyncpg.connect(
            self.dsn,
            timeout=10,
            statement_cache_size=self.statement_cache_size,
            server_settings={"application_name": self.application_name, **options},
        )
