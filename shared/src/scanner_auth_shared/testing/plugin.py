"""pytest fixtures for real infrastructure.

Defaults: embedded PostgreSQL (one server per test session, a fresh database per test), a fresh
Tansu broker per test (it starts in ~0.1 s, and isolation beats cleaning topics), an aiosmtpd
sink per test.

Switches (documented in the README):
- TEST_INFRA=containers: testcontainers' PostgreSQL and Kafka (needs a Docker engine).
- TEST_POSTGRES_ADMIN_URL=postgresql://user:pw@host:port/postgres: an existing server; each test
  creates its own database there.
- TEST_KAFKA_BOOTSTRAP_SERVERS=host:port: an existing Kafka; tests use unique ids, so topics may
  be shared.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from ..infra import EmbeddedPostgres, MailSink, TansuBroker
from .identity import TestIdentity


class PostgresServer(Protocol):
    def create_database(self, name: str) -> str: ...


@dataclass
class ExternalPostgres:
    admin_url: str  # postgresql://user:pw@host:port/postgres

    def create_database(self, name: str) -> str:
        import asyncio

        import asyncpg

        async def create() -> None:
            conn = await asyncpg.connect(self.admin_url)
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        asyncio.run(create())
        base = self.admin_url.rsplit("/", 1)[0]
        return base.replace("postgresql://", "postgresql+asyncpg://", 1) + f"/{name}"


@dataclass
class KafkaUnderTest:
    bootstrap: str
    broker: TansuBroker | None = None  # None when external: cannot be paused from here

    def pause(self) -> None:
        assert self.broker is not None, "only the embedded broker can be paused"
        self.broker.pause()

    def resume(self) -> None:
        assert self.broker is not None
        self.broker.resume()


def _containers() -> bool:
    return os.environ.get("TEST_INFRA", "embedded") == "containers"


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    if url := os.environ.get("TEST_POSTGRES_ADMIN_URL"):
        yield ExternalPostgres(url)
        return
    if _containers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:17-alpine", driver=None) as pg:
            yield ExternalPostgres(pg.get_connection_url())
        return
    # Not under pytest's basetemp: concurrent pytest sessions prune each other's old basetemps.
    root = Path(tempfile.mkdtemp(prefix="scanner-auth-pg-"))
    server = EmbeddedPostgres(root / "data").start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def database_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database for this test."""
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture
def make_database(postgres_server: PostgresServer) -> Any:
    """Factory for more fresh databases in one test (one per service)."""
    return lambda: postgres_server.create_database(f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture(scope="session")
def _shared_kafka() -> Iterator[str | None]:
    if url := os.environ.get("TEST_KAFKA_BOOTSTRAP_SERVERS"):
        yield url
    elif _containers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield kafka.get_bootstrap_server()
    else:
        yield None


@pytest.fixture
def kafka(_shared_kafka: str | None, tmp_path: Path) -> Iterator[KafkaUnderTest]:
    if _shared_kafka is not None:
        yield KafkaUnderTest(_shared_kafka)
        return
    broker = TansuBroker(tmp_path / "tansu.log").start()
    try:
        yield KafkaUnderTest(broker.bootstrap, broker)
    finally:
        broker.stop()


@pytest.fixture
def mail_sink(tmp_path: Path) -> Iterator[MailSink]:
    sink = MailSink(folder=tmp_path / "mail").start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture
def identity() -> TestIdentity:
    return TestIdentity()


@dataclass(frozen=True)
class TestSecrets:
    __test__ = False
    pepper: str
    sealing_key: str
    code_key: str


@pytest.fixture
def test_secrets() -> TestSecrets:
    return TestSecrets(
        pepper=secrets.token_urlsafe(48),
        sealing_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        code_key=base64.b64encode(secrets.token_bytes(32)).decode(),
    )


# Fast group joins on the embedded broker (a join takes about half the session timeout).
FAST_CONSUMERS: dict[str, Any] = {
    "kafka_session_timeout_ms": 3000,
    "kafka_heartbeat_interval_ms": 500,
    "outbox_poll_interval_seconds": 0.5,
    "shutdown_grace_seconds": 5.0,
}
