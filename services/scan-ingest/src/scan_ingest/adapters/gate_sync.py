"""Keeps one replica's gate in step with `gate_credentials`, on the shared listener.

The gate writer (handlers.py) NOTIFYs `scan_ingest_gate` with the scanner id whenever one of a
scanner's credentials changes; every replica listens (`scanner_auth_shared.listen.Listener`,
one dedicated connection, `application_name` scan-ingest-gate) and runs `GateSync.session` on
that connection:

1. load every row (one repeatable-read snapshot, read in chunks, swapped in at once). The
   listener LISTENs before the session starts, so no change committed meanwhile is missed;
2. then follow: wait (`listener.idle`) for a notification or the next resync; on a
   notification reload the rows of the scanners it named; every `resync_seconds` load
   everything again (a safety net: nothing is lost if a notification ever were).

All loads run in this one session, one after another, so a scanner reload never races a full
load: a notification that arrives during a full load is applied after it, from newer data.
The listener checks an idle connection every keep-alive period and, when the connection is
lost, connects again and runs the session again (a full load first).

Ready (`ready`) once a full load completed on the current connection and while the listener is
connected; the gate keeps answering from memory in between (readiness takes the replica out of
rotation), and uploads answer 503 only until the very first full load.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from scanner_auth_shared.postgres import Connection

from .. import metrics
from .gate import CredentialGate, GateBuilder
from .ports import GateCredentials

log = logging.getLogger("scanner_auth.scan_ingest.gate")

APPLICATION_NAME = "scan-ingest-gate"  # how operators (and tests) spot the listening connection
NOTIFY_CHANNEL = "scan_ingest_gate"
# A notification's payload is a scanner id; PostgreSQL limits payloads to 8000 bytes, so a
# longer id (or an empty payload) asks for a full reload instead.
FULL_RELOAD = "*"
_MAX_PAYLOAD_BYTES = 7900


def notification_for(scanner_id: str) -> str:
    """The payload the writer sends when `scanner_id`'s credentials changed."""
    return scanner_id if len(scanner_id.encode()) <= _MAX_PAYLOAD_BYTES else FULL_RELOAD


class Changes:
    """What the notifications asked for since the last load (pure: no I/O, no clock)."""

    def __init__(self) -> None:
        self.scanners: set[str] = set()
        self.everything = False

    def note(self, payload: str) -> None:
        if payload == FULL_RELOAD or not payload:
            self.everything = True
        else:
            self.scanners.add(payload)

    def clear(self) -> None:
        self.scanners.clear()
        self.everything = False

    def take(self, *, resync_due: bool) -> tuple[bool, list[str]]:
        """(load everything?, else the scanners to reload, sorted), and forget them."""
        everything = self.everything or resync_due
        scanners = [] if everything else sorted(self.scanners)
        self.clear()
        return everything, scanners


class Idle(Protocol):
    """What a session needs of its listener (`scanner_auth_shared.listen.Listener`)."""

    async def idle(self, seconds: float) -> bool: ...


class GateSync:
    def __init__(
        self,
        gate: CredentialGate,
        credentials: Callable[[Connection], GateCredentials],
        *,
        resync_seconds: float = 60.0,
        chunk_rows: int = 20_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gate = gate
        self.credentials = credentials  # the repository on the listening connection
        self.resync_seconds = resync_seconds
        self.chunk_rows = chunk_rows
        self.clock = clock
        self.changes = Changes()
        self.following = False  # a full load completed on the current connection
        self.full_loads = 0

    @property
    def ready(self) -> bool:
        return self.following and self.gate.loaded

    def note(self, payload: str) -> None:
        """The listener's callback for NOTIFY_CHANNEL."""
        self.changes.note(payload)

    async def session(self, listener: Idle, conn: Connection) -> None:
        """Load everything, then follow the notifications, until the connection is lost."""
        credentials = self.credentials(conn)
        self.changes.clear()  # the load below covers everything notified so far
        await self.load_everything(credentials)
        self._following(True)
        log.info("gate listening", extra={"credentials": len(self.gate)})
        try:
            resync_at = self.clock() + self.resync_seconds
            while True:
                await listener.idle(max(0.0, resync_at - self.clock()))
                everything, scanners = self.changes.take(resync_due=self.clock() >= resync_at)
                if everything:
                    await self.load_everything(credentials)
                    resync_at = self.clock() + self.resync_seconds
                elif scanners:
                    await self.reload(credentials, scanners)
        finally:
            self._following(False)

    async def load_everything(self, credentials: GateCredentials) -> None:
        started = time.perf_counter()
        builder = GateBuilder()
        await credentials.load_all(builder.add, chunk_rows=self.chunk_rows)
        self.gate.replace_all(builder)
        self.full_loads += 1
        elapsed = time.perf_counter() - started
        metrics.FULL_RELOAD.observe(elapsed)
        metrics.GATE_CREDENTIALS.set(len(self.gate))
        metrics.GATE_LAST_FULL_LOAD.set(time.time())
        log.info("gate loaded", extra={"credentials": len(self.gate), "seconds": round(elapsed, 3)})

    async def reload(self, credentials: GateCredentials, scanners: Sequence[str]) -> None:
        started = time.perf_counter()
        self.gate.upsert(await credentials.of_scanners(scanners))
        metrics.SCANNER_RELOAD.observe(time.perf_counter() - started)
        metrics.GATE_CREDENTIALS.set(len(self.gate))

    def _following(self, following: bool) -> None:
        self.following = following
        metrics.GATE_LISTENER_CONNECTED.set(1 if following else 0)
