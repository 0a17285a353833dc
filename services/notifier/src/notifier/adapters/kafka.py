"""The read barrier over Kafka (the `ReadBarrier` port): has the token-state consumer group
applied every token event of a scanner that is on the public topic now?

A scanner's token events are keyed by its id, so they all sit in one partition of the public
topic: the one Kafka's default partitioner (murmur2) gives its key. `wait_caught_up(scanner)`:

1. takes that partition's end offset, read after the call began (so after the notification
   was claimed): every token event published before then lies below it;
2. waits until the group's committed offset for that partition has reached it. The consumer
   commits an offset only after the unit of work that applied the records below it committed
   (`scanner_auth_shared.consumer`), so by then each of those events is in `token_states`.
   Where the group's committed offset is missing (never committed, or expired) or below the
   partition's log start offset (retention deleted records it never read), it stands at the log
   start offset: where it resumes, and no record below it can ever be applied any more. An
   idle group in that state commits nothing, so waiting for its commit would wait for ever.

Concurrent waits share their requests: one ListOffsets for every wait that began since the
last one, and one OffsetFetch per poll for every partition still waited on; the partition
count and the group's coordinator are cached, the coordinator asked for again after any failure
and after an answer without the partitions asked for (a coordinator that moved). Any failure
to read (broker unreachable, coordinator moving) only delays: the wait returns False at its
timeout, never True.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from scanner_auth_shared.messaging import default_partition
from scanner_auth_shared.retry import keep_running, through_outages

log = logging.getLogger("scanner_auth.notifier.barrier")


@dataclass(eq=False)
class _Wait:
    partition: int | None
    key: bytes
    done: asyncio.Future[bool]
    target: int | None = None  # the end offset to reach, once read


def _reached(wait: _Wait, positions: dict[int, int]) -> bool:
    if wait.partition is None or wait.target is None:
        return False
    position = positions.get(wait.partition)
    return position is not None and position >= wait.target


class KafkaReadBarrier:
    def __init__(
        self,
        *,
        topic: str,
        group_id: str,
        client_options: dict[str, Any],
        poll_seconds: float = 0.05,
        metadata_seconds: float = 60.0,
        request_timeout_ms: int = 10_000,
    ) -> None:
        """`client_options`: what aiokafka clients connect with (bootstrap_servers,
        client_id, security)."""
        self.topic = topic
        self.group_id = group_id
        self.client_options = client_options
        self.poll_seconds = poll_seconds
        self.metadata_seconds = metadata_seconds
        self.request_timeout_ms = request_timeout_ms
        self._joining: list[_Wait] = []
        self._waiting: list[_Wait] = []
        self._kick = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._admin: AIOKafkaAdminClient | None = None
        self._offsets: AIOKafkaConsumer | None = None
        self._partitions: list[int] = []
        self._partitions_read_at = float("-inf")
        self._coordinator: int | None = None

    def __repr__(self) -> str:
        return f"KafkaReadBarrier({self.topic}, {self.group_id})"

    # ---------------------------------------------------------------- the port

    async def wait_caught_up(self, scanner_id: str, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        wait = _Wait(None, scanner_id.encode(), loop.create_future())
        self._joining.append(wait)
        self._kick.set()
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(
                keep_running("the read barrier", self._run, initial=0.05, maximum=1.0),
                name="notifier:read-barrier",
            )
        try:
            return await asyncio.wait_for(wait.done, timeout)
        except TimeoutError:
            return False

    async def close(self) -> None:
        """Stop: every wait under way returns False."""
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
            self._pump = None
        for wait in (*self._joining, *self._waiting):
            if not wait.done.done():
                wait.done.set_result(False)
        self._joining, self._waiting = [], []
        await self._disconnect()

    # ---------------------------------------------------------------- the pump

    async def _run(self) -> None:
        """Rounds until no wait is left: the end offsets of the newcomers, then the committed
        offsets of everything waited on; an outage is retried (the waits time out meanwhile)."""
        while self._live():
            async for attempt in through_outages(
                "reading the token-state consumer's position", initial=0.05, maximum=1.0
            ):
                with attempt:
                    await self._round()
            if self._waiting and not self._joining:
                self._kick.clear()
                with contextlib.suppress(TimeoutError):  # asyncio.timeout: see listen.Listener.idle
                    async with asyncio.timeout(self.poll_seconds):
                        await self._kick.wait()

    def _live(self) -> bool:
        self._joining = [w for w in self._joining if not w.done.done()]
        self._waiting = [w for w in self._waiting if not w.done.done()]
        return bool(self._joining or self._waiting)

    async def _round(self) -> None:
        if not self._live():
            return
        try:
            await self._connect()
            joining, self._joining = self._joining, []
            try:
                await self._read_targets(joining)
            except BaseException:
                self._joining = joining + self._joining  # their targets are still to read
                raise
            self._waiting.extend(joining)
            await self._resolve_reached()
        except Exception:
            self._coordinator = None  # perhaps it moved; ask again next round
            self._partitions_read_at = float("-inf")
            raise

    async def _read_targets(self, waits: list[_Wait]) -> None:
        """Each wait's partition and the end offset it must reach, read now (one request)."""
        if not waits:
            return
        partitions = await self._topic_partitions()
        for wait in waits:
            wait.partition = default_partition(wait.key, partitions)
        assert self._offsets is not None
        wanted = {TopicPartition(self.topic, p) for p in {w.partition for w in waits}}
        ends = await self._offsets.end_offsets(list(wanted))
        for wait in waits:
            wait.target = ends[TopicPartition(self.topic, wait.partition)]

    async def _resolve_reached(self) -> None:
        """The group's committed offsets of the partitions waited on (one request); every wait
        whose target they reach is caught up."""
        if not self._waiting:
            return
        positions = await self._positions(self._waiting)
        for wait in self._waiting:
            if _reached(wait, positions) and not wait.done.done():
                wait.done.set_result(True)
        self._live()

    async def _positions(self, waits: list[_Wait]) -> dict[int, int]:
        """Where the group stands in each partition waited on: its committed offset, raised to
        the partition's log start offset (where it resumes, auto_offset_reset earliest) when it
        has none or is below it. The log start is asked for only where the committed offset does
        not reach the target already: in a round that is still waiting."""
        assert self._admin is not None and self._offsets is not None
        if self._coordinator is None:
            self._coordinator = await self._admin.find_coordinator(self.group_id)
        partitions = {w.partition for w in waits if w.partition is not None}
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        committed = await self._admin.list_consumer_group_offsets(
            self.group_id, group_coordinator_id=self._coordinator, partitions=tps
        )
        positions = {
            tp.partition: meta.offset
            for tp, meta in committed.items()
            if tp.topic == self.topic and meta.offset >= 0
        }
        if partitions - {tp.partition for tp in committed if tp.topic == self.topic}:
            # The coordinator answers every partition asked for (-1 where none is committed).
            # A broker that is no longer the group's coordinator answers NOT_COORDINATOR in the
            # response's top-level error, which aiokafka 0.14 drops: no offsets, no exception.
            # The coordinator is asked for again next round; else a wait that began after the
            # coordinator moved (a broker back, leaders rebalanced) would never be reached.
            self._coordinator = None
        behind = sorted(
            {
                TopicPartition(self.topic, w.partition)
                for w in waits
                if w.partition is not None and not _reached(w, positions)
            }
        )
        if behind:
            starts = await self._offsets.beginning_offsets(behind)
            for tp, start in starts.items():
                positions[tp.partition] = max(positions.get(tp.partition, -1), start)
        return positions

    async def _topic_partitions(self) -> list[int]:
        loop = asyncio.get_running_loop()
        if self._partitions and loop.time() - self._partitions_read_at < self.metadata_seconds:
            return self._partitions
        assert self._admin is not None
        described = await self._admin.describe_topics([self.topic])
        partitions = sorted(
            p["partition"]
            for t in described
            if t["topic"] == self.topic and not t["error_code"]
            for p in t["partitions"]
        )
        if not partitions:
            raise LookupError(f"the topic {self.topic} has no partitions (yet)")
        self._partitions, self._partitions_read_at = partitions, loop.time()
        return partitions

    # ---------------------------------------------------------------- clients

    async def _connect(self) -> None:
        if self._admin is None:
            admin = AIOKafkaAdminClient(
                **self.client_options, request_timeout_ms=self.request_timeout_ms
            )
            await admin.start()
            self._admin = admin
        if self._offsets is None:
            offsets = AIOKafkaConsumer(
                **self.client_options,
                group_id=None,
                enable_auto_commit=False,
                request_timeout_ms=self.request_timeout_ms,
            )
            await offsets.start()
            self._offsets = offsets

    async def _disconnect(self) -> None:
        admin, self._admin = self._admin, None
        offsets, self._offsets = self._offsets, None
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()
        if offsets is not None:
            with contextlib.suppress(Exception):
                await offsets.stop()
