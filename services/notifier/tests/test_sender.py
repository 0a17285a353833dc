"""The sender's scheduling, with a fake of our own use cases: deliveries run side by side
(bounded), so one slow or failing recipient never holds up the others."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from notifier.adapters.repository import Claimed
from notifier.sender import Sender

pytestmark = pytest.mark.unit


def _claimed(name: str) -> Claimed:
    return Claimed(
        notification_id=name,
        claim_id=f"claim-{name}",
        token_id="t",
        scanner_id="s",
        recipient_email=f"{name}@example.test",
        scanner_name="Bay",
        serial_number="LVS-1",
        sealed_code="sealed",
        expires_at=datetime.now(UTC) + timedelta(days=1),
        attempts=0,
        token_state=None,
    )


class FakeWork:
    def __init__(self, names: list[str], slow: set[str]) -> None:
        self.due = [_claimed(n) for n in names]
        self.slow = slow
        self.release = asyncio.Event()
        self.delivered: list[str] = []
        self.running = 0
        self.most_running = 0
        self.claim_limits: list[int] = []
        self.reaped_excluding: list[list[str]] = []

    async def reap(self, mine: Sequence[str]) -> int:
        self.reaped_excluding.append(list(mine))
        return 0

    async def claim(self, limit: int, lease_seconds: float) -> list[Claimed]:
        self.claim_limits.append(limit)
        taken, self.due = self.due[:limit], self.due[limit:]
        return taken

    async def seconds_to_next_due(self) -> float | None:
        return 0.0 if self.due else None

    async def deliver(self, claimed: Claimed) -> None:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if claimed.notification_id in self.slow:
                await self.release.wait()
            else:
                await asyncio.sleep(0.01)
            self.delivered.append(claimed.notification_id)
        finally:
            self.running -= 1


async def _until(check, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not in time"
        await asyncio.sleep(0.01)


async def test_a_slow_recipient_does_not_hold_up_the_others() -> None:
    work = FakeWork(["slow", "a", "b", "c", "d"], slow={"slow"})
    sender = Sender(work, None, concurrency=2, poll_seconds=0.05, lease_seconds=60, drain_seconds=1)
    task = asyncio.create_task(sender.run())
    try:
        await _until(lambda: sorted(work.delivered) == ["a", "b", "c", "d"])
        assert "slow" not in work.delivered  # still in flight, and it blocked no one
        assert work.most_running == 2  # never more than SENDER_CONCURRENCY at once
        assert max(work.claim_limits) == 2 and min(work.claim_limits) == 1
        # The claim under way is never reaped from under this process.
        assert ["claim-slow"] in work.reaped_excluding
        work.release.set()
        await _until(lambda: "slow" in work.delivered)
    finally:
        await sender.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_stopping_waits_for_deliveries_under_way_then_gives_up() -> None:
    work = FakeWork(["slow"], slow={"slow"})
    sender = Sender(
        work, None, concurrency=2, poll_seconds=0.05, lease_seconds=60, drain_seconds=0.2
    )
    task = asyncio.create_task(sender.run())
    await _until(lambda: work.running == 1)
    await sender.stop()  # bounded by drain_seconds, then the delivery is cancelled
    assert work.running == 0 and work.delivered == []
    await asyncio.wait_for(task, 2)  # the loop ends by itself once stopping
