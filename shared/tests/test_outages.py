"""Which failures are outages (`outages.is_infrastructure_error`): every HTTP route answers them
503 with `Retry-After`, every consumer and relay retries them without limit.

First the failures are caused for real, on a PostgreSQL and a Kafka of the test's own: a
connection cut mid-transaction, the server gone, restarting, read-only, out of connections, a
statement timing out, the broker unreachable. Each caused exception must classify as an outage,
and its class is one of `CAUSED`. Then one unit test per class (and the wrappers libraries put
around them), and the ones that must not count (bugs, bad input), and the HTTP answer itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import asyncpg.exceptions as pg
import httpx
import pytest
import sqlalchemy.exc as sa
from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors
from aiokafka.errors import KafkaError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message

from scanner_auth_shared.api import OutageMiddleware
from scanner_auth_shared.infra import EmbeddedPostgres, free_port
from scanner_auth_shared.outages import is_infrastructure_error
from scanner_auth_shared.postgres import Database, asyncpg_dsn
from scanner_auth_shared.testing.waiting import eventually

# The classes the failures below really raised (asyncpg 0.32, SQLAlchemy 2.1, aiokafka 0.14).
CAUSED = {
    "ConnectionDoesNotExistError",  # a statement on a connection the server cut
    "AdminShutdownError",  # 57P01: terminated by pg_terminate_backend or a fast shutdown
    "ConnectionRefusedError",  # nothing listens: the server is down
    "CannotConnectNowError",  # 57P03: the server is starting or shutting down
    "ReadOnlySQLTransactionError",  # 25006: a write on a read-only server (a failover)
    "TooManyConnectionsError",  # 53300: connection limit reached
    "QueryCanceledError",  # 57014: statement_timeout
    "TimeoutError",  # asyncpg's command_timeout, a connect timeout
    "InterfaceError",  # asyncpg: "connection is closed" (a statement after the cut)
    # asyncpg, the statement after a cut mid-transaction: "cannot switch to state 15; another
    # operation (2) is in progress" (its protocol state left behind by the broken one)
    "InternalClientError",
    "OperationalError",  # SQLAlchemy around a refused connection (migrations at start)
    "KafkaConnectionError",  # aiokafka: no broker to bootstrap from
    "KafkaTimeoutError",  # aiokafka: a send not acknowledged in time
    "RequestTimedOutError",  # aiokafka: the broker did not answer a produce request in time
    "ConnectionResetError",
}


# ------------------------------------------------------------------------------ caused for real


@pytest.fixture(scope="module")
def own_postgres() -> Any:
    """A PostgreSQL of this module's own, to stop and start."""
    root = Path(tempfile.mkdtemp(prefix="scanner-auth-outage-pg-"))
    server = EmbeddedPostgres(root / "data").start()
    try:
        yield server
    finally:
        server.stop()


async def _caught(coro: Any) -> BaseException:
    try:
        await coro
    except BaseException as exc:  # what the failure really raised
        return exc
    raise AssertionError("the failure raised nothing")


def _check(exc: BaseException) -> str:
    assert is_infrastructure_error(exc), f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    assert type(exc).__name__ in CAUSED, f"add {type(exc).__name__} to CAUSED and its unit test"
    return type(exc).__name__


@contextlib.asynccontextmanager
async def _connect(url: str) -> AsyncIterator[Any]:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        yield conn
    finally:
        if not conn.is_closed():
            await conn.close()


@pytest.mark.integration
async def test_a_connection_cut_mid_transaction(database_url: str) -> None:
    seen = set()
    async with _connect(database_url) as killer:
        for _ in range(2):
            conn = await asyncpg.connect(asyncpg_dsn(database_url))
            transaction = conn.transaction()
            await transaction.start()
            await conn.execute("CREATE TEMP TABLE t (x int)")
            await killer.execute("SELECT pg_terminate_backend($1, 10000)", conn.get_server_pid())
            seen.add(_check(await _caught(conn.execute("INSERT INTO t VALUES (1)"))))
            # and what the next statement on the same connection raises
            seen.add(_check(await _caught(conn.execute("SELECT 1"))))
    # Which class depends on whether asyncpg noticed the cut before the statement: each must
    # be an outage (checked above), and something was raised both times.
    assert seen


@pytest.mark.integration
async def test_a_pooled_connection_the_server_cut(database_url: str) -> None:
    """What a service's Database sees: its transaction's connection cut mid-way raises an
    outage; an idle connection the server cut is replaced by the pool without an error."""
    database = Database(database_url, pool_size=2)
    await database.connect()
    try:
        async with _connect(database_url) as killer:
            exc = await _caught(_cut_mid_transaction(database, killer))
            _check(exc)
            async with database.connection() as conn:
                pid = conn.get_server_pid()
            await killer.execute("SELECT pg_terminate_backend($1, 10000)", pid)
        for _ in range(3):
            async with database.transaction() as conn:  # a working connection each time
                assert await conn.fetchval("SELECT 1") == 1
    finally:
        await database.dispose()


async def _cut_mid_transaction(database: Database, killer: Any) -> None:
    async with database.transaction() as conn:
        await conn.fetchval("SELECT 1")
        await killer.execute("SELECT pg_terminate_backend($1, 10000)", conn.get_server_pid())
        await conn.fetchval("SELECT 2")


@pytest.mark.integration
async def test_a_read_only_server(database_url: str) -> None:
    async with _connect(database_url) as conn:
        await conn.execute("CREATE TABLE w (x int)")
        await conn.execute("SET default_transaction_read_only = on")
        assert _check(await _caught(conn.execute("INSERT INTO w VALUES (1)"))) == (
            "ReadOnlySQLTransactionError"
        )


@pytest.mark.integration
async def test_out_of_connections(database_url: str) -> None:
    async with _connect(database_url) as admin:
        role = f"limited_{free_port()}"
        await admin.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1")
        dsn = asyncpg_dsn(database_url).replace("postgres@", f"{role}@", 1)
        first = await asyncpg.connect(dsn)
        try:
            assert _check(await _caught(asyncpg.connect(dsn))) == "TooManyConnectionsError"
        finally:
            await first.close()


@pytest.mark.integration
async def test_statements_that_time_out(database_url: str) -> None:
    async with _connect(database_url) as conn:
        await conn.execute("SET statement_timeout = '50ms'")
        assert _check(await _caught(conn.execute("SELECT pg_sleep(2)"))) == "QueryCanceledError"
        await conn.execute("SET statement_timeout = 0")
        assert _check(await _caught(conn.fetchval("SELECT pg_sleep(2)", timeout=0.05))) in {
            "TimeoutError"
        }


@pytest.mark.integration
async def test_the_server_stopping_restarting_and_gone(own_postgres: EmbeddedPostgres) -> None:
    url = own_postgres.create_database("outages")
    seen = set()
    conn = await asyncpg.connect(asyncpg_dsn(url))
    stopping = asyncio.create_task(asyncio.to_thread(own_postgres.pause))  # fast shutdown
    try:
        seen.add(_check(await _caught(conn.fetchval("SELECT pg_sleep(5)"))))
        await stopping
        seen.add(_check(await _caught(asyncpg.connect(asyncpg_dsn(url), timeout=5))))
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            seen.add(_check(await _caught(_sqlalchemy_select(engine))))
        finally:
            await engine.dispose()
        starting = asyncio.create_task(asyncio.to_thread(own_postgres.resume))
        # Connecting while it starts may be refused (nothing listens yet), or told to wait.
        while not starting.done():
            with contextlib.suppress(Exception):
                early = await asyncpg.connect(asyncpg_dsn(url), timeout=2)
                await early.close()
                break
            await asyncio.sleep(0.01)
        await starting
    finally:
        if not conn.is_closed():
            conn.terminate()
        if not stopping.done():
            await stopping
    print("raised while the server stopped, was gone and restarted:", sorted(seen))
    assert seen & {"AdminShutdownError", "ConnectionDoesNotExistError"}  # the cut
    assert seen & {"ConnectionRefusedError", "CannotConnectNowError"}  # the server gone


async def _sqlalchemy_select(engine: Any) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


@pytest.mark.integration
async def test_kafka_unreachable() -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    producer = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=1000)
    assert _check(await _caught(producer.start())) == "KafkaConnectionError"
    await producer.stop()


@pytest.mark.integration
async def test_kafka_not_acknowledging(private_kafka: Any) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=private_kafka.bootstrap, request_timeout_ms=1500, acks="all"
    )
    await producer.start()

    async def acknowledged() -> bool:
        # On a loaded machine a first send (metadata, leader) can itself outlast 1.5 s.
        try:
            await producer.send_and_wait("myscanner.scanner-auth.v1", b"x")
        except KafkaError:
            return False
        return True

    try:
        await eventually(acknowledged, 60, "a first acknowledgement")
        private_kafka.pause()
        try:
            exc = await _caught(producer.send_and_wait("myscanner.scanner-auth.v1", b"y"))
        finally:
            private_kafka.resume()
        assert _check(exc) in {"KafkaTimeoutError", "RequestTimedOutError"}
    finally:
        await producer.stop()


# ------------------------------------------------------------------------------ one per class


def _pg(cls: type[pg.PostgresError], message: str = "x") -> BaseException:
    return cls(message)


OUTAGES: dict[str, BaseException] = {
    "asyncpg ConnectionDoesNotExistError": _pg(pg.ConnectionDoesNotExistError),
    "asyncpg AdminShutdownError": _pg(pg.AdminShutdownError),
    "asyncpg CrashShutdownError": _pg(pg.CrashShutdownError),
    "asyncpg CannotConnectNowError": _pg(pg.CannotConnectNowError),
    "asyncpg IdleSessionTimeoutError": _pg(pg.IdleSessionTimeoutError),
    "asyncpg ConnectionFailureError": _pg(pg.ConnectionFailureError),
    "asyncpg ClientCannotConnectError": _pg(pg.ClientCannotConnectError),
    "asyncpg ConnectionRejectionError": _pg(pg.ConnectionRejectionError),
    "asyncpg TooManyConnectionsError": _pg(pg.TooManyConnectionsError),
    "asyncpg InsufficientResourcesError": _pg(pg.InsufficientResourcesError),
    "asyncpg ReadOnlySQLTransactionError": _pg(pg.ReadOnlySQLTransactionError),
    "asyncpg QueryCanceledError": _pg(pg.QueryCanceledError),
    "asyncpg SerializationError": _pg(pg.SerializationError),
    "asyncpg DeadlockDetectedError": _pg(pg.DeadlockDetectedError),
    "asyncpg LockNotAvailableError": _pg(pg.LockNotAvailableError),
    "asyncpg InterfaceError connection is closed": pg.InterfaceError(
        "cannot call Connection.fetch(): connection is closed"
    ),
    "asyncpg InterfaceError pool is closing": pg.InterfaceError("pool is closing"),
    "asyncpg InternalClientError": pg.InternalClientError("x"),
    "OSError ConnectionRefusedError": ConnectionRefusedError(111, "Connection refused"),
    "OSError ConnectionResetError": ConnectionResetError(104, "Connection reset by peer"),
    "OSError BrokenPipeError": BrokenPipeError(32, "Broken pipe"),
    "OSError socket.gaierror": socket.gaierror(-2, "Name or service not known"),
    "OSError EHOSTUNREACH": OSError(113, "No route to host"),
    "TimeoutError": TimeoutError(),
    "asyncio.TimeoutError": TimeoutError(),
    "sqlalchemy OperationalError": sa.OperationalError("SELECT 1", {}, OSError("refused")),
    "sqlalchemy InterfaceError": sa.InterfaceError("SELECT 1", {}, Exception("closed")),
    "sqlalchemy DBAPIError invalidated": sa.DBAPIError(
        "SELECT 1", {}, Exception("x"), connection_invalidated=True
    ),
    "aiokafka KafkaConnectionError": kafka_errors.KafkaConnectionError(),
    "aiokafka KafkaTimeoutError": kafka_errors.KafkaTimeoutError(),
    "aiokafka RequestTimedOutError": kafka_errors.RequestTimedOutError(),
    "aiokafka NodeNotReadyError": kafka_errors.NodeNotReadyError(),
    "aiokafka NotLeaderForPartitionError": kafka_errors.NotLeaderForPartitionError(),
    "aiokafka LeaderNotAvailableError": kafka_errors.LeaderNotAvailableError(),
    "aiokafka NotEnoughReplicasError": kafka_errors.NotEnoughReplicasError(),
    "aiokafka NotEnoughReplicasAfterAppendError": (
        kafka_errors.NotEnoughReplicasAfterAppendError()
    ),
}


def _wrapped_by_sqlalchemy() -> BaseException:
    """SQLAlchemy's asyncpg dialect raises its own DBAPIError with asyncpg's as the cause."""
    try:
        try:
            raise pg.AdminShutdownError("terminating connection due to administrator command")
        except pg.AdminShutdownError as inner:
            raise sa.DBAPIError("SELECT 1", {}, inner) from inner
    except sa.DBAPIError as outer:
        return outer


OUTAGES["sqlalchemy DBAPIError around AdminShutdownError"] = _wrapped_by_sqlalchemy()
OUTAGES["ExceptionGroup of outages"] = ExceptionGroup(
    "tasks", [ConnectionResetError(), pg.ConnectionDoesNotExistError("x")]
)


def _raised_while_handling() -> BaseException:
    try:
        try:
            raise ConnectionResetError()
        except ConnectionResetError:
            raise KeyError("a bug in the error handling") from None
    except KeyError as exc:
        return exc


NOT_OUTAGES: dict[str, BaseException] = {
    "asyncpg UniqueViolationError": _pg(pg.UniqueViolationError),
    "asyncpg UndefinedColumnError (a bug)": _pg(pg.UndefinedColumnError),
    "asyncpg DataError": _pg(pg.DataError),
    "asyncpg InterfaceError another operation (a bug)": pg.InterfaceError(
        "cannot perform operation: another operation is in progress"
    ),
    "ValueError": ValueError("bad input"),
    "KeyError": KeyError("x"),
    "aiokafka MessageSizeTooLargeError": kafka_errors.MessageSizeTooLargeError(),
    "aiokafka TopicAuthorizationFailedError": kafka_errors.TopicAuthorizationFailedError(),
    "sqlalchemy IntegrityError": sa.IntegrityError("INSERT", {}, Exception("duplicate")),
    "ExceptionGroup with a bug": ExceptionGroup("tasks", [ConnectionResetError(), ValueError()]),
    "FileNotFoundError (an OSError, not a network one)": FileNotFoundError(2, "No such file"),
    "PermissionError": PermissionError(13, "Permission denied"),
    "a bug raised while handling an outage": _raised_while_handling(),
}


@pytest.mark.unit
@pytest.mark.parametrize("exc", OUTAGES.values(), ids=OUTAGES.keys())
def test_an_outage_class(exc: BaseException) -> None:
    assert is_infrastructure_error(exc)


@pytest.mark.unit
@pytest.mark.parametrize("exc", NOT_OUTAGES.values(), ids=NOT_OUTAGES.keys())
def test_not_an_outage(exc: BaseException) -> None:
    assert not is_infrastructure_error(exc)


@pytest.mark.unit
def test_every_caused_class_has_its_unit_test() -> None:
    assert {type(e).__name__ for e in OUTAGES.values()} >= CAUSED


@pytest.mark.unit
@pytest.mark.parametrize("exc", OUTAGES.values(), ids=OUTAGES.keys())
async def test_every_route_answers_an_outage_503_with_retry_after(exc: BaseException) -> None:
    async def route(_: Request) -> Response:
        raise exc

    app = Starlette(routes=[Route("/x", route, methods=["GET", "POST"])])
    app.add_middleware(OutageMiddleware)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://t"
    ) as client:
        for method in ("GET", "POST"):
            answer = await client.request(method, "/x")
            assert answer.status_code == 503
            assert answer.headers["content-type"] == "application/problem+json"
            assert int(answer.headers["retry-after"]) >= 1
            assert answer.json()["status"] == 503
            assert str(exc) not in answer.text or not str(exc)


@pytest.mark.unit
async def test_a_bug_is_still_a_500() -> None:
    async def route(_: Request) -> Response:
        raise ValueError("a bug")

    app = Starlette(routes=[Route("/x", route)])
    app.add_middleware(OutageMiddleware)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://t"
    ) as client:
        assert (await client.get("/x")).status_code == 500


@pytest.mark.unit
async def test_a_request_cut_by_shutdown_is_a_503_not_uvicorns_500() -> None:
    """Issue #13, found by the rolling-restart test: uvicorn cancels the requests still running
    when a stopping replica's grace period ends, and answered those with its own plain 500."""
    entered = asyncio.Event()

    async def route(_: Request) -> Response:
        entered.set()
        await asyncio.Event().wait()  # a request that outlives the grace period
        raise AssertionError("unreachable")

    app = Starlette(routes=[Route("/x", route)])
    app.add_middleware(OutageMiddleware)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/x", "headers": [], "query_string": b""}
    task = asyncio.create_task(app(scope, receive, send))
    await entered.wait()
    task.cancel()  # what uvicorn does at the end of timeout_graceful_shutdown
    with pytest.raises(asyncio.CancelledError):
        await task  # the cancellation goes on
    start = sent[0]
    assert start["status"] == 503
    headers = dict(start["headers"])
    assert headers[b"retry-after"] == b"1"
    assert headers[b"content-type"] == b"application/problem+json"
