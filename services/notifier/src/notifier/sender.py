"""The sender: a background task that delivers due notifications, safe with several replicas.

- It claims due rows (`pending`, `next_attempt_at <= now()`) with `FOR UPDATE SKIP LOCKED`,
  setting them `sending` under a lease: two replicas never claim the same row.
- It wakes on a NOTIFY fired by every insert into `notifications` (LISTEN on a dedicated
  asyncpg connection), when a delivery finishes, when the next retry falls due, and at least
  every `sender_poll_seconds` in any case (the fallback when LISTEN is down).
- Each claimed row is delivered in its own task, at most `sender_concurrency` at a time: a slow
  or failing recipient never holds up the others.
- A row found `sending` after its lease expired belongs to a process that died mid-send: it is
  marked failed (outcome unknown), never sent again. See the README (at most once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import asyncpg

from scanner_auth_shared.db import is_infrastructure_error

from . import metrics
from .adapters.repository import WAKE_CHANNEL, Claimed

log = logging.getLogger("scanner_auth.notifier.sender")


class Work(Protocol):
    """What the sender needs of the use cases (handlers.Notifier)."""

    async def reap(self, mine: Sequence[str]) -> int: ...

    async def claim(self, limit: int, lease_seconds: float) -> list[Claimed]: ...

    async def seconds_to_next_due(self) -> float | None: ...

    async def deliver(self, claimed: Claimed) -> None: ...


class Sender:
    def __init__(
        self,
        notifier: Work,
        dsn: str | None,
        *,
        concurrency: int,
        poll_seconds: float,
        lease_seconds: float,
        drain_seconds: float,
    ) -> None:
        self.notifier = notifier
        self.dsn = dsn
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        self.lease_seconds = lease_seconds
        self.drain_seconds = drain_seconds
        self.listening = False
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[None]] = {}  # by claim id

    def __repr__(self) -> str:
        return f"Sender(in_flight={len(self._in_flight)})"

    # ------------------------------------------------------------------ life

    async def run(self) -> None:
        listener = asyncio.create_task(self._listen(), name="notifier:listen")
        backoff = 0.2
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                try:
                    wait = await self.pass_once()
                    backoff = 0.2
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if is_infrastructure_error(exc):
                        log.warning(
                            "sender cannot reach the database; retrying",
                            extra={"error": type(exc).__name__},
                        )
                    else:
                        log.exception("sender pass failed; retrying")
                    wait = backoff
                    backoff = min(backoff * 2, 10.0)
                await self._sleep(wait)
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)

    async def stop(self) -> None:
        """Claim nothing more; let the deliveries under way finish (bounded), then cancel them.
        A delivery cancelled mid-send ends, after its lease, as `outcome unknown`."""
        self._stopping.set()
        self._wake.set()
        tasks = list(self._in_flight.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.drain_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # ------------------------------------------------------------------ one pass

    async def pass_once(self) -> float:
        """Reap dead leases, claim what is due into free slots; return how long to sleep."""
        await self.notifier.reap(list(self._in_flight))
        free = self.concurrency - len(self._in_flight)
        if free > 0 and not self._stopping.is_set():
            for claimed in await self.notifier.claim(free, self.lease_seconds):
                self._start(claimed)
        if len(self._in_flight) >= self.concurrency:
            return self.poll_seconds  # a finished delivery wakes us
        due_in = await self.notifier.seconds_to_next_due()
        if due_in is None:
            return self.poll_seconds
        return min(self.poll_seconds, max(due_in, 0.05))

    def _start(self, claimed: Claimed) -> None:
        task = asyncio.create_task(
            self._deliver(claimed), name=f"notifier:deliver:{claimed.notification_id}"
        )
        self._in_flight[claimed.claim_id] = task

    async def _deliver(self, claimed: Claimed) -> None:
        metrics.IN_FLIGHT.inc()
        try:
            await self.notifier.deliver(claimed)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "delivery failed unexpectedly", extra={"notification_id": claimed.notification_id}
            )
        finally:
            metrics.IN_FLIGHT.dec()
            self._in_flight.pop(claimed.claim_id, None)
            self._wake.set()

    # ------------------------------------------------------------------ waking

    async def _listen(self) -> None:
        """LISTEN for new notifications on a dedicated connection, reconnecting forever."""
        if self.dsn is None:
            return  # polling only
        backoff = 0.5
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.dsn, timeout=10)
                lost = asyncio.Event()
                conn.add_termination_listener(_setter(lost))
                await conn.add_listener(WAKE_CHANNEL, self._on_notify)
                self.listening = True
                self._wake.set()  # whatever arrived while we were not listening
                backoff = 0.5
                await lost.wait()
                log.warning("sender lost its LISTEN connection; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "sender cannot LISTEN; polling meanwhile", extra={"error": type(exc).__name__}
                )
            finally:
                self.listening = False
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    return lambda _: event.set()
