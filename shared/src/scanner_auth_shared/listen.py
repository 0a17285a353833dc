"""A dedicated PostgreSQL connection that LISTENs, kept alive: the one listener every service
uses (the outbox relay's wake-up, the notifier's sender, scan-ingest's gate).

`Listener(database, {channel: on_notify}, name=…)`:

- `run(session)` connects, LISTENs on every channel, then runs `session(conn)` on that
  connection (a full load, a relay's pump…) until the connection is lost or `session` returns;
  then it reconnects with backoff (`retry.through_outages`), for ever. `connected` says whether
  it is listening now.
- `await listener.idle(seconds)` (from `session`) waits for a notification or `seconds`; when
  nothing arrived it checks the connection (`SELECT 1`, bounded by `keepalive_seconds`), so a
  connection that died silently (a dropped network path sends nothing) is noticed and replaced
  within a keep-alive period. A termination noticed by asyncpg wakes it at once.
- Each notification calls its channel's `on_notify(payload)` in the event loop, then wakes
  `idle`. A reconnection calls nothing: `session` runs again, and should assume it missed
  notifications while disconnected (reload what it follows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .outages import is_infrastructure_error
from .postgres import Connection, Database
from .retry import through_outages

log = logging.getLogger("scanner_auth.listen")

Session = Callable[[Connection], Awaitable[None]]


class ConnectionLost(ConnectionError):
    """The listening connection is gone: reconnect."""


class Listener:
    def __init__(
        self,
        database: Database,
        channels: Mapping[str, Callable[[str], None]],
        *,
        name: str,
        keepalive_seconds: float = 5.0,
    ) -> None:
        self.database = database
        self.channels = dict(channels)
        self.name = name
        self.keepalive_seconds = keepalive_seconds
        self.connected = False
        self._wake = asyncio.Event()
        self._lost = asyncio.Event()
        self._conn: Connection | None = None

    async def run(self, session: Session) -> None:
        """Listen and run `session`; after a lost connection, connect again (backoff from
        0.2 s while the database stays unreachable) and run it again. Returns when `session`
        returns."""
        while True:
            conn: Connection | None = None
            async for attempt in through_outages(f"listener {self.name}", maximum=5.0):
                with attempt:
                    conn = await self._connect()
            assert conn is not None
            try:
                await session(conn)
                return
            except Exception as exc:
                if not is_infrastructure_error(exc):
                    raise
                log.warning(
                    "listener lost its connection; reconnecting",
                    extra={"listener": self.name, "error": type(exc).__name__},
                )
            finally:
                self.connected = False
                self._conn = None
                if not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(0.2)

    async def _connect(self) -> Connection:
        conn = await self.database.connect_dedicated(application_name=self.name)
        try:
            self._lost.clear()
            self._wake.clear()
            conn.add_termination_listener(self._on_terminated)
            for channel, callback in self.channels.items():
                await conn.add_listener(channel, _dispatch(callback, self._wake))
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self.connected = True
        log.info("listening", extra={"listener": self.name, "channels": list(self.channels)})
        return conn

    async def idle(self, seconds: float) -> bool:
        """Wait for a notification (True) or `seconds` (False). Raises ConnectionLost when the
        connection died: the session ends and `run` reconnects."""
        conn = self._conn
        if conn is None or self._lost.is_set() or conn.is_closed():
            raise ConnectionLost(f"listener {self.name} lost its connection")
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            left = deadline - asyncio.get_running_loop().time()
            step = min(left, self.keepalive_seconds)
            if step <= 0:
                return False
            # asyncio.timeout, not wait_for: on Python 3.11 a cancellation that lands as
            # wait_for's own timeout fires comes out as TimeoutError, and suppressing that lost
            # the cancellation: a stopping service's listener then never ended (found by
            # test_listen, one run in three).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(step):
                    await self._wake.wait()
            if self._lost.is_set() or conn.is_closed():
                raise ConnectionLost(f"listener {self.name} lost its connection")
            if self._wake.is_set():
                self._wake.clear()
                return True
            await self.check(conn)

    async def check(self, conn: Connection) -> None:
        """The connection answers within a keep-alive period, or ConnectionLost."""
        try:
            await conn.fetchval("SELECT 1", timeout=self.keepalive_seconds)
        except (TimeoutError, OSError) as exc:
            raise ConnectionLost(f"listener {self.name}: no answer") from exc

    def wake(self) -> None:
        """Wake `idle` without a notification (work arrived some other way)."""
        self._wake.set()

    def _on_terminated(self, _conn: Any) -> None:
        self.connected = False
        self._lost.set()
        self._wake.set()


def _dispatch(
    callback: Callable[[str], None], wake: asyncio.Event
) -> Callable[[Any, int, str, str], None]:
    def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        callback(payload)
        wake.set()

    return on_notify
