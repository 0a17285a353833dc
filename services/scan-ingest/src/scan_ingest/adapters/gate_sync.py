"""Keeps one replica's gate in step with `gate_credentials`.

On a dedicated asyncpg connection: LISTEN scan_ingest_gate first, then load every row (so no
change committed meanwhile can be missed), then on each notification reload the rows of the
scanners it names. Every `resync_seconds`, and on every reconnection, everything is loaded again
and swapped in at once (a safety net: nothing is lost if a notification ever were).

All loads run in this one task, one after another, so a scanner reload never races a full load:
a notification that arrives during a full load is applied after it, from newer data.

While idle the connection is checked every `keepalive_seconds`; a connection that is lost or
does not answer is replaced. `ready` is true once a full load completed and while the listener
is connected; the gate keeps answering from memory in between (readiness takes the replica out
of rotation).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

import asyncpg

from .. import metrics
from ..gate import CredentialGate, GateBuilder
from .store import FULL_RELOAD, NOTIFY_CHANNEL

log = logging.getLogger("scanner_auth.scan_ingest.gate")

APPLICATION_NAME = "scan-ingest-gate"  # how operators (and tests) spot the listening connection
_COLUMNS = "credential_digest, credential_id, scanner_id, org_id, state, valid_until"
_ALL = f"SELECT {_COLUMNS} FROM gate_credentials"
_SCANNERS = f"SELECT {_COLUMNS} FROM gate_credentials WHERE scanner_id = ANY($1::text[])"


class GateSync:
    def __init__(
        self,
        dsn: str,
        gate: CredentialGate,
        *,
        resync_seconds: float = 60.0,
        keepalive_seconds: float = 5.0,
        chunk_rows: int = 20_000,
    ) -> None:
        self.dsn = dsn
        self.gate = gate
        self.resync_seconds = resync_seconds
        self.keepalive_seconds = keepalive_seconds
        self.chunk_rows = chunk_rows
        self.connected = False
        self.full_loads = 0
        self._pending: set[str] = set()
        self._full_requested = False
        self._wake = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self.connected and self.gate.loaded

    async def readiness(self) -> bool:
        return self.ready

    async def run(self) -> None:
        backoff = 0.2
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self.dsn, timeout=10, server_settings={"application_name": APPLICATION_NAME}
                )
                conn.add_termination_listener(self._on_lost)
                await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
                self._pending.clear()
                self._full_requested = False
                await self._full_load(conn)
                self._set_connected(True)
                log.info("gate listening", extra={"credentials": len(self.gate)})
                backoff = 0.2
                await self._follow(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "gate listener interrupted; reconnecting",
                    extra={"error": type(exc).__name__, "detail": str(exc)[:300]},
                )
            finally:
                self._set_connected(False)
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(backoff * (1 + random.random() / 2))
            backoff = min(backoff * 2, 5.0)

    async def _follow(self, conn: asyncpg.Connection) -> None:
        next_full = time.monotonic() + self.resync_seconds
        while True:
            wait = min(self.keepalive_seconds, max(0.0, next_full - time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()
            if conn.is_closed():
                raise ConnectionError("the gate's listening connection was closed")
            if self._full_requested or time.monotonic() >= next_full:
                self._full_requested = False
                self._pending.clear()
                await self._full_load(conn)
                next_full = time.monotonic() + self.resync_seconds
            elif self._pending:
                scanners = sorted(self._pending)
                self._pending.clear()
                await self._reload(conn, scanners)
            else:
                await conn.fetchval("SELECT 1", timeout=self.keepalive_seconds)

    async def _full_load(self, conn: asyncpg.Connection) -> None:
        started = time.perf_counter()
        builder = GateBuilder()
        # One snapshot, read in chunks: a million rows never sit in memory as records at once.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            cursor = await conn.cursor(_ALL)
            while rows := await cursor.fetch(self.chunk_rows):
                builder.add(rows)
        self.gate.replace_all(builder)
        self.full_loads += 1
        elapsed = time.perf_counter() - started
        metrics.FULL_RELOAD.observe(elapsed)
        metrics.GATE_CREDENTIALS.set(len(self.gate))
        metrics.GATE_LAST_FULL_LOAD.set(time.time())
        log.info(
            "gate loaded",
            extra={"credentials": len(self.gate), "seconds": round(elapsed, 3)},
        )

    async def _reload(self, conn: asyncpg.Connection, scanners: list[str]) -> None:
        started = time.perf_counter()
        rows = await conn.fetch(_SCANNERS, scanners)
        self.gate.upsert(rows)
        metrics.SCANNER_RELOAD.observe(time.perf_counter() - started)
        metrics.GATE_CREDENTIALS.set(len(self.gate))

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if payload == FULL_RELOAD or not payload:
            self._full_requested = True
        else:
            self._pending.add(payload)
        self._wake.set()

    def _on_lost(self, _conn: Any) -> None:
        self._set_connected(False)
        self._wake.set()

    def _set_connected(self, connected: bool) -> None:
        self.connected = connected
        metrics.GATE_LISTENER_CONNECTED.set(1 if connected else 0)
