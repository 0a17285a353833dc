"""The one PostgreSQL listener (`scanner_auth_shared.listen`): notifications, keep-alive, and a
connection the server cut replaced, on real PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from scanner_auth_shared.listen import Listener
from scanner_auth_shared.postgres import Database, asyncpg_dsn

pytestmark = pytest.mark.integration


async def _until(check: Any, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not in time"
        await asyncio.sleep(0.02)


async def test_notifications_arrive_and_a_cut_connection_is_replaced(database_url: str) -> None:
    database = Database(database_url)
    payloads: list[str] = []
    sessions: list[int] = []
    wakes: list[bool] = []
    listener = Listener(
        database, {"test_channel": payloads.append}, name="test-listener", keepalive_seconds=0.3
    )

    async def session(conn: Any) -> None:
        sessions.append(conn.get_server_pid())
        while True:
            wakes.append(await listener.idle(10.0))

    task = asyncio.create_task(listener.run(session))
    notifier = await asyncpg.connect(asyncpg_dsn(database_url), timeout=10, command_timeout=10)
    try:
        await _until(lambda: listener.connected)
        await notifier.execute("SELECT pg_notify('test_channel', 'one')")
        await _until(lambda: payloads == ["one"] and wakes[-1:] == [True])

        # The server cuts the listening connection: a new one, a new session, still listening.
        await notifier.execute("SELECT pg_terminate_backend($1, 10000)", sessions[0])
        await _until(lambda: len(sessions) == 2 and listener.connected)
        assert sessions[1] != sessions[0]
        await notifier.execute("SELECT pg_notify('test_channel', 'two')")
        await _until(lambda: payloads == ["one", "two"])
    finally:
        task.cancel()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10)
        await asyncio.wait_for(notifier.close(), 10)
    assert not listener.connected


async def test_a_bug_in_the_session_is_raised_not_retried(database_url: str) -> None:
    listener = Listener(Database(database_url), {}, name="test-listener")
    runs = []

    async def session(_conn: Any) -> None:
        runs.append(1)
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        await asyncio.wait_for(listener.run(session), 15)
    assert runs == [1]


async def test_a_session_that_returns_ends_the_listener(database_url: str) -> None:
    listener = Listener(Database(database_url), {}, name="test-listener")

    async def session(conn: Any) -> None:
        assert await conn.fetchval("SELECT 1") == 1

    await asyncio.wait_for(listener.run(session), 15)
    assert not listener.connected
