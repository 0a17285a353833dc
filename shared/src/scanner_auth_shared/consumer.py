"""Consumers: a service's event handlers behind one faststream subscriber per consumer group,
written once for every service.

A service declares a `Consumer`: its name (the key of its processed-event rows and of its group,
`scanner-auth.<name>`), the topic, and one small handler per event type it reads,
`handler(uow, event, data)`. `subscribe()` registers one faststream batch subscriber for it. For
each batch of records:

1. every record is parsed as a CloudEvent and its data as the contract's model for its type; a
   record that is not one goes to `<topic>.dlq` at once (its original bytes, headers saying which
   consumer, why and when); a type without a handler is skipped (schemas grow); a record that
   does not prove it comes from its type's producer (`signing.TrustPolicy`) goes to the DLQ too,
   with reason `unverified`, and has no effect;
2. the batch is applied in one unit of work: the inbox claims the events' ids (one statement;
   an id seen before is skipped, so a redelivery has no second effect), each handler applies its
   event, one commit;
3. an outage (database or broker unreachable) is retried with backoff, forever: an outage must
   delay events, never empty a topic into its DLQ;
4. any other failure (a bug, a `PoisonMessage`) rolls the batch back and applies its events one
   unit of work each, so that only the failing event is retried (`CONSUMER_MAX_ATTEMPTS`) and
   then dead-lettered, and the others take effect;
5. the consumer's offsets are committed once the whole batch is done (one commit per batch). A
   crash before that redelivers the batch, which the inbox absorbs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.middlewares import AckPolicy
from pydantic import ValidationError

from . import metrics
from .events import CloudEvent, EventData, PoisonMessage, dlq_topic
from .logs import redact
from .messaging import documented_body
from .retry import through_outages
from .settings import ServiceSettings
from .signing import NO_TRUST, TrustPolicy, Unverified, policy_for
from .uow import UnitOfWork

log = logging.getLogger("scanner_auth.consumer")

U = TypeVar("U", bound=UnitOfWork)
EventHandler = Callable[[U, CloudEvent, Any], Awaitable[None]]

GROUP_PREFIX = "scanner-auth."


@dataclass(frozen=True)
class Consumer(Generic[U]):
    """One consumer group of a service: what it reads and what it does with each type."""

    name: str  # e.g. "redeemer.authorisation": processed-event rows, DLQ headers, metrics
    topic: str
    handlers: Mapping[type[EventData], EventHandler[U]]
    description: str
    # How long an idle subscriber waits for records before it looks again (faststream then
    # pauses as long again), so at most about twice this between an event and its handling
    # when the consumer was idle. Lower for a hop with a latency target (scan-ingest's gate).
    wait_ms: int = 100

    @property
    def group_id(self) -> str:
        return GROUP_PREFIX + self.name

    @property
    def types(self) -> dict[str, type[EventData]]:
        return {model.event_type: model for model in self.handlers}


@dataclass(frozen=True, slots=True)
class _Item:
    record: Any  # aiokafka ConsumerRecord
    event: CloudEvent
    data: EventData


class ConsumerRunner(Generic[U]):
    """What `subscribe` registers: parse, apply in units of work, dead-letter."""

    def __init__(
        self,
        consumer: Consumer[U],
        unit_of_work: Callable[[], U],
        broker: KafkaBroker,
        *,
        max_attempts: int,
        trust: TrustPolicy = NO_TRUST,
    ) -> None:
        self.consumer = consumer
        self.unit_of_work = unit_of_work
        self.broker = broker
        self.max_attempts = max_attempts
        self.trust = trust
        self._types = consumer.types
        self._handlers = {model.event_type: h for model, h in consumer.handlers.items()}

    # ---------------------------------------------------------------- one batch

    async def handle_batch(self, records: Sequence[Any]) -> None:
        items: list[_Item] = []
        for record in records:
            item = await self._parse(record)
            if item is not None:
                items.append(item)
        if not items:
            return
        try:
            await self._apply(items)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if len(items) == 1 and isinstance(exc, PoisonMessage):
                await self.dead_letter(items[0].record, "rejected", str(exc), attempts=1)
                return
            # Something in the batch is not an outage: find it, one event per unit of work.
            log.info(
                "batch failed; applying its events one by one",
                extra={"consumer": self.consumer.name, "error": type(exc).__name__},
            )
            for item in items:
                await self._apply_alone(item)

    async def _parse(self, record: Any) -> _Item | None:
        name = self.consumer.name
        try:
            event = CloudEvent.from_bytes(record.value or b"")
            model = self._types.get(event.type)
            if model is None:
                metrics.EVENTS_CONSUMED.labels(name, "ignored").inc()
                return None
            data = model.model_validate(event.data)
        except (PoisonMessage, ValidationError, ValueError) as exc:
            await self.dead_letter(record, "unparseable", _describe(exc), attempts=1)
            return None
        try:
            self.trust.verify(
                producer=model.producer,
                source=event.source,
                topic=record.topic,
                key=record.key,
                value=record.value or b"",
                headers=record.headers or (),
            )
        except Unverified as exc:
            metrics.EVENTS_UNVERIFIED.labels(name).inc()
            await self.dead_letter(record, "unverified", str(exc), attempts=1)
            return None
        return _Item(record, event, data)

    async def _apply(self, items: list[_Item]) -> None:
        """All of `items` in one unit of work, retried through outages."""
        async for attempt in through_outages(f"consumer {self.consumer.name}"):
            with attempt:
                applied = await self._apply_once(items)
        name = self.consumer.name
        metrics.EVENTS_CONSUMED.labels(name, "applied").inc(applied)
        if len(items) > applied:
            metrics.EVENTS_CONSUMED.labels(name, "duplicate").inc(len(items) - applied)

    async def _apply_once(self, items: list[_Item]) -> int:
        async with self.unit_of_work() as uow:
            fresh = await uow.inbox.claim(self.consumer.name, [i.event.id for i in items])
            applied = 0
            for item in items:
                if item.event.id in fresh:
                    fresh.discard(item.event.id)  # the same id twice in a batch: once
                    await self._handlers[item.event.type](uow, item.event, item.data)
                    applied += 1
            await uow.commit()
        return applied

    async def _apply_alone(self, item: _Item) -> None:
        attempt = 0
        while True:
            attempt += 1
            try:
                await self._apply([item])
                return
            except asyncio.CancelledError:
                raise
            except PoisonMessage as exc:
                await self.dead_letter(item.record, "rejected", str(exc), attempts=attempt)
                return
            except Exception as exc:
                if attempt >= self.max_attempts:
                    log.exception(
                        "consumer gave up on an event", extra={"consumer": self.consumer.name}
                    )
                    await self.dead_letter(
                        item.record, "failed", f"{type(exc).__name__}: {exc}", attempts=attempt
                    )
                    return
                metrics.CONSUMER_RETRIES.labels(self.consumer.name).inc()
                await asyncio.sleep(min(0.2 * 2**attempt, 5.0))

    # ---------------------------------------------------------------- dead letters

    async def dead_letter(self, record: Any, reason: str, error: str, *, attempts: int) -> None:
        """Park `record`'s original bytes in `<topic>.dlq`, with headers saying why. Awaited
        (through outages): the batch's offsets are committed only once the DLQ holds it."""
        topic = getattr(record, "topic", "unknown")
        headers = {
            "x-dlq-consumer": self.consumer.name,
            "x-dlq-reason": reason,
            "x-dlq-error": redact(error)[:1000],
            "x-dlq-failed-at": datetime.now(UTC).isoformat(),
            "x-dlq-attempts": str(attempts),
            "x-dlq-original-topic": topic,
            "x-dlq-original-partition": str(getattr(record, "partition", "")),
            "x-dlq-original-offset": str(getattr(record, "offset", "")),
        }
        async for attempt in through_outages(f"dead-lettering for {self.consumer.name}"):
            with attempt:
                await self.broker.publish(
                    record.value or b"",
                    dlq_topic(topic),
                    key=getattr(record, "key", None),
                    headers=headers,
                )
        metrics.EVENTS_CONSUMED.labels(self.consumer.name, "dead_lettered").inc()
        log.warning(
            "message dead-lettered",
            extra={
                "consumer": self.consumer.name,
                "reason": reason,
                "error": redact(error)[:300],
                "topic": topic,
                "offset": headers["x-dlq-original-offset"],
            },
        )


def _describe(exc: Exception) -> str:
    """Why a record could not be parsed: locations and kinds only, never input values (a
    malformed event may still carry a code or credential)."""
    if isinstance(exc, ValidationError):
        return "data does not match the schema: " + "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['type']}" for e in exc.errors()
        )
    return str(exc)


async def _safe_headers(records: Any, original: Callable[[Any], Awaitable[Any]]) -> Any:
    """faststream's batch parser decodes every header value as UTF-8 and fails the whole batch
    on one that is not: give it the records with such values replaced (the DLQ keeps the
    original value bytes; headers are ours to write there)."""

    def safe(record: Any) -> Any:
        headers = record.headers or ()
        if all(_utf8(value) for _, value in headers):
            return record
        fixed = [(k, (v or b"").decode("utf-8", "replace").encode()) for k, v in headers]
        return dataclasses.replace(record, headers=fixed)

    return await original(tuple(safe(r) for r in records))


def _utf8(value: bytes | None) -> bool:
    try:
        (value or b"").decode()
        return True
    except UnicodeDecodeError:
        return False


async def _keep_bytes(msg: Any) -> Any:
    """The records stay raw: parsing is ours, so that a bad record is ours to dead-letter."""
    return msg.body


def subscribe(
    broker: KafkaBroker,
    settings: ServiceSettings,
    consumer: Consumer[U],
    unit_of_work: Callable[[], U],
) -> Any:
    """Register `consumer` on `broker`: one batch subscriber of its own group."""
    runner = ConsumerRunner(
        consumer,
        unit_of_work,
        broker,
        max_attempts=settings.consumer_max_attempts,
        trust=policy_for(settings, (model.producer for model in consumer.handlers)),
    )

    async def on_batch(body: list[bytes], msg: KafkaMessage) -> None:
        await runner.handle_batch(msg.raw_message)

    # For the AsyncAPI document (`scanner-auth contracts`): what this consumer reads.
    # One record is one event: the document describes a message, not the batch it came in.
    on_batch.__annotations__["body"] = documented_body(list(consumer.handlers))

    subscriber = broker.subscriber(
        consumer.topic,
        group_id=consumer.group_id,
        batch=True,
        max_records=settings.consumer_batch_size,
        batch_timeout_ms=consumer.wait_ms,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        parser=_safe_headers,
        decoder=_keep_bytes,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        heartbeat_interval_ms=settings.kafka_heartbeat_interval_ms,
        max_poll_interval_ms=300_000,
        fetch_max_wait_ms=consumer.wait_ms,
        title=f"{consumer.name}:{consumer.topic}",
        description=consumer.description,
    )
    subscriber(on_batch)
    return subscriber


__all__ = ["Consumer", "ConsumerRunner", "EventHandler", "subscribe"]
