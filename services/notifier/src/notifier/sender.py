"""The sender: the background loop that delivers due notifications, safe with several replicas.

It runs on the shared listener (`scanner_auth_shared.listen.Listener`): LISTEN on the channel a
trigger NOTIFYs on every insert into `notifications`, reconnecting by itself. Each pass:

1. reaps dead leases: a notification left `sending` past its lease belongs to a process that
   died mid-send: failed (outcome unknown), never sent again (README, at most once);
2. claims due notifications (`FOR UPDATE SKIP LOCKED`, under a lease) into the free slots, at
   most `concurrency` deliveries at once, each in its own task: a slow or failing recipient
   never holds up the others;
3. sleeps until a NOTIFY, a delivery finishing, the next notification falling due, or
   `poll_seconds`, whichever comes first.

Each delivery first waits for its turn (the read barrier, `handlers.wait_for_turn`), then
makes one SMTP attempt (`handlers.deliver`). On stopping, nothing more is claimed; deliveries
still waiting for their turn are given back at once, those sending may finish (bounded by
`drain_seconds`), then are cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from . import handlers, metrics
from .adapters.ports import Wakeups
from .domain import Claimed

log = logging.getLogger("scanner_auth.notifier.sender")


class Sender:
    def __init__(
        self,
        delivery: handlers.Delivery,
        wakeups: Wakeups,
        *,
        concurrency: int,
        poll_seconds: float,
        lease_seconds: float,
        drain_seconds: float,
    ) -> None:
        self.delivery = delivery
        self.wakeups = wakeups
        self.concurrency = concurrency
        self.poll_seconds = poll_seconds
        self.lease_seconds = lease_seconds
        self.drain_seconds = drain_seconds
        self._stopping = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[None]] = {}  # by claim id
        self._sending: set[str] = set()  # the claims past their turn, in SMTP

    def __repr__(self) -> str:
        return f"Sender(in_flight={len(self._in_flight)})"

    @property
    def listening(self) -> bool:
        return self.wakeups.connected

    # ------------------------------------------------------------------ life

    async def run(self) -> None:
        """Passes until stopped (the listener reconnects after a lost connection)."""
        await self.wakeups.run(self._session)

    async def _session(self, _conn: Any) -> None:
        while not self._stopping.is_set():
            wait = await self.pass_once()
            await self.wakeups.idle(wait)

    async def stop(self) -> None:
        """Claim nothing more; give back the deliveries waiting for their turn, let those
        sending finish (up to `drain_seconds`), then cancel them: a delivery cancelled mid-send
        ends, after its lease, as `outcome unknown`."""
        self._stopping.set()
        self.wakeups.wake()
        waiting = [t for c, t in self._in_flight.items() if c not in self._sending]
        for task in waiting:
            task.cancel()
        tasks = list(self._in_flight.values())
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self.drain_seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # ------------------------------------------------------------------ one pass

    async def pass_once(self) -> float:
        """Reap dead leases, claim what is due into free slots; return how long to sleep."""
        await handlers.reap_dead_leases(self.delivery, list(self._in_flight))
        free = self.concurrency - len(self._in_flight)
        if free > 0 and not self._stopping.is_set():
            for claimed in await handlers.claim_due(self.delivery, free, self.lease_seconds):
                self._start(claimed)
        if len(self._in_flight) >= self.concurrency:
            return self.poll_seconds  # a finished delivery wakes us
        due_in = await handlers.seconds_to_next_due(self.delivery)
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
            if await handlers.wait_for_turn(self.delivery, claimed):
                self._sending.add(claimed.claim_id)
                await handlers.deliver(self.delivery, claimed)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "delivery failed unexpectedly", extra={"notification_id": claimed.notification_id}
            )
        finally:
            metrics.IN_FLIGHT.dec()
            self._in_flight.pop(claimed.claim_id, None)
            self._sending.discard(claimed.claim_id)
            self.wakeups.wake()
