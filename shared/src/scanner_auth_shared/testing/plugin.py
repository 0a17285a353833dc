"""pytest fixtures for real infrastructure.

Defaults: embedded PostgreSQL (one server per test session, a fresh database per test), one
Apache Kafka broker (KRaft, one node, from Maven Central's jars: `make kafka`) shared by the
test session, an aiosmtpd sink per test. Before each test that uses `kafka`, every topic is
truncated to its end (DeleteRecords): a consumer group, new or not, then starts at this test's
first record, and reading a topic "from the beginning" reads this test's records only.
`private_kafka` gives a test a broker of its own (to pause it); `kafka_cluster` is a
controller and three brokers with the production topic settings (the broker-fault tests).

Switches (documented in the README):
- TEST_INFRA=containers: testcontainers' PostgreSQL and Kafka (needs a Docker engine).
- TEST_POSTGRES_ADMIN_URL=postgresql://user:pw@host:port/postgres: an existing server; each test
  creates its own database there.
- TEST_KAFKA_BOOTSTRAP_SERVERS=host:port: an existing Kafka; tests use unique ids, so topics may
  be shared (they are never truncated there).
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

from ..infra import EmbeddedPostgres, MailSink
from ..kafka_broker import ApacheKafka, run_sync
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
    broker: ApacheKafka | None = None  # None when external: cannot be paused from here

    def pause(self) -> None:
        assert self.broker is not None, "only a broker of the test's own can be paused"
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


@pytest.fixture(scope="session")
def private_tmp() -> Iterator[Any]:
    """`private_tmp(name)`: a new folder outside pytest's basetemp, removed when the session
    ends. For what an embedded PostgreSQL runs from (a `Stack`): every pytest session that
    starts resets /tmp/pytest-of-<user> to mode 0700, which locks the server's own user out of
    a data folder below it."""
    root = Path(tempfile.mkdtemp(prefix="scanner-auth-tests-"))
    try:
        yield lambda name: Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def database_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database for this test."""
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture
def make_database(postgres_server: PostgresServer) -> Any:
    """Factory for more fresh databases in one test (one per service)."""
    return lambda: postgres_server.create_database(f"t_{uuid.uuid4().hex[:16]}")


def kafka_description() -> str:
    """What the session's `kafka` fixture runs on (the pytest header names it)."""
    if url := os.environ.get("TEST_KAFKA_BOOTSTRAP_SERVERS"):
        return f"external Kafka at {url}"
    if _containers():
        return "testcontainers Kafka"
    return ApacheKafka.describe(brokers=1)


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"kafka: {kafka_description()}"]


@dataclass
class SharedKafka:
    bootstrap: str
    broker: ApacheKafka | None  # ours, when embedded: its topics may be truncated


@pytest.fixture(scope="session")
def _shared_kafka() -> Iterator[SharedKafka]:
    if url := os.environ.get("TEST_KAFKA_BOOTSTRAP_SERVERS"):
        yield SharedKafka(url, None)
    elif _containers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as container:
            yield SharedKafka(container.get_bootstrap_server(), None)
    else:
        # Not under pytest's basetemp: concurrent pytest sessions prune each other's.
        root = Path(tempfile.mkdtemp(prefix="scanner-auth-kafka-"))
        broker = ApacheKafka(root).start()
        try:
            yield SharedKafka(broker.bootstrap, broker)
        finally:
            broker.remove()


@pytest.fixture
def kafka(_shared_kafka: SharedKafka) -> KafkaUnderTest:
    """The session's broker, every topic truncated to its end first (our own broker only)."""
    if _shared_kafka.broker is not None:
        truncate_topics(_shared_kafka.bootstrap)
    return KafkaUnderTest(_shared_kafka.bootstrap)


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[KafkaUnderTest]:
    """A single-node Apache Kafka of this test's own, which it may pause and resume."""
    broker = ApacheKafka(tmp_path / "kafka").start()
    try:
        yield KafkaUnderTest(broker.bootstrap, broker)
    finally:
        broker.remove()


@pytest.fixture(scope="session")
def kafka_cluster() -> Iterator[ApacheKafka]:
    """A controller and three brokers, the contract's topics with their production settings
    (replication 3, min.insync.replicas 2): for the broker-fault tests."""
    root = Path(tempfile.mkdtemp(prefix="scanner-auth-kafka3-"))
    cluster = ApacheKafka(root, brokers=3).start()
    try:
        yield cluster
    finally:
        cluster.remove()


def truncate_topics(bootstrap: str) -> None:
    """Delete every record now on every topic but Kafka's own (DeleteRecords up to each
    partition's high watermark): what a test reads and consumes starts with its own records."""
    import asyncio

    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
    from aiokafka.errors import LeaderNotAvailableError, NotLeaderForPartitionError

    async def truncate() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
        await admin.start()
        try:
            topics = [t for t in await admin.list_topics() if not t.startswith("__")]
            described = await admin.describe_topics(topics) if topics else []
            to_end = RecordsToDelete(-1)  # -1: up to the high watermark
            wanted = {
                TopicPartition(t["topic"], p["partition"]): to_end
                for t in described
                for p in t["partitions"]
            }
            # A topic a test just auto-created may still be electing its leader: retry.
            for attempt in range(50):
                try:
                    if wanted:
                        await admin.delete_records(wanted, timeout_ms=10_000)
                    return
                except (NotLeaderForPartitionError, LeaderNotAvailableError):
                    if attempt == 49:
                        raise
                    await asyncio.sleep(0.2)
        finally:
            await admin.close()

    run_sync(truncate())


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
