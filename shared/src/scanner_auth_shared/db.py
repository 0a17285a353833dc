"""PostgreSQL through SQLModel over asyncpg. Nothing connects at import time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Executable, Result, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import registry
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession


def service_model_base(name: str) -> type[SQLModel]:
    """A SQLModel base with its own metadata, so that two services may both have a `tokens`
    table while being imported into one process (tests, the dev command)."""
    return type(f"{name}Model", (SQLModel,), {}, registry=registry())


def asyncpg_dsn(database_url: str) -> str:
    """`postgresql+asyncpg://…` as the plain DSN asyncpg.connect() takes."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


class Database:
    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        self.pool_size = pool_size
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("database not connected")
        return self._engine

    def connect(self) -> None:
        self._engine = create_async_engine(
            self.url,
            # As many connections as before (2 x pool_size), but all kept open: an overflow
            # connection was closed on its return whenever pool_size were idle, so a burst of
            # requests opened and closed a PostgreSQL connection per request (connect, SSL
            # negotiation, dialect setup: several ms of CPU each) exactly when busiest.
            pool_size=2 * self.pool_size,
            max_overflow=0,
            pool_pre_ping=True,
            pool_recycle=1800,
            # A statement that waits this long on a lock or a dead server is failed, not hung.
            connect_args={
                "command_timeout": 30,
                "server_settings": {"application_name": "scanner-auth"},
            },
        )
        self._sessions = async_sessionmaker(
            self._engine, class_=AsyncSession, expire_on_commit=False
        )

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        if self._sessions is None:
            raise RuntimeError("database not connected")
        async with self._sessions() as session:
            yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction that commits on success and rolls back on error."""
        async with self.session() as session, session.begin():
            yield session

    async def ping(self, timeout: float = 2.0) -> bool:
        try:
            async with asyncio.timeout(timeout), self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    async def dispose(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None


async def run_sql(
    session: AsyncSession, statement: str | Executable, params: Mapping[str, Any] | None = None
) -> Result[Any]:
    """Execute SQL text (or any Core statement) in the session's transaction.

    sqlmodel's `exec` is typed for SELECTs only and its `execute` warns; this is the one place
    that bridges the two for raw SQL."""
    stmt = text(statement) if isinstance(statement, str) else statement
    return await session.exec(stmt, params=params)  # type: ignore[call-overload,no-any-return]


def is_infrastructure_error(exc: BaseException) -> bool:
    """True when retrying later may succeed: the database or network was unavailable."""
    if isinstance(
        exc, OperationalError | InterfaceError | OSError | ConnectionError | TimeoutError
    ):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    name = type(exc).__name__
    return name in {
        "ConnectionDoesNotExistError",
        "CannotConnectNowError",
        "ConnectionFailureError",
        "InterfaceError",
        "TooManyConnectionsError",
        "AdminShutdownError",
        "KafkaConnectionError",
        "KafkaTimeoutError",
        "NodeNotReadyError",
        "RequestTimedOutError",
    }


# Re-exported for services' repositories
__all__ = [
    "AsyncSession",
    "Database",
    "asyncpg_dsn",
    "is_infrastructure_error",
    "service_model_base",
]
