"""Kafka through faststream: the broker with production producer settings (idempotence,
acks=all, SASL/TLS), the aiokafka producer the relay and scan-ingest send record batches with,
its renewal, the partitioner, and the documented body of a subscriber. Consumers are
`consumer.py`'s."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import operator
import ssl
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, Literal

from aiokafka.partitioner import murmur2
from faststream.kafka import KafkaBroker
from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from pydantic import Field, PlainValidator, create_model

from . import metrics
from .events import CloudEvent, EventData
from .settings import ConfigurationError, ServiceSettings

log = logging.getLogger("scanner_auth.messaging")

Handler = Callable[[CloudEvent, EventData], Awaitable[None]]
Idempotence = Literal["auto", "required", "off"]


def kafka_security(settings: ServiceSettings) -> BaseSecurity | None:
    """TLS and SASL for a managed cluster, from KAFKA_SECURITY_PROTOCOL and friends."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    tls = protocol.endswith("SSL")
    context = ssl.create_default_context(cafile=settings.kafka_ssl_cafile) if tls else None
    if protocol == "SSL":
        return BaseSecurity(ssl_context=context, use_ssl=True)
    if not settings.kafka_sasl_username or settings.kafka_sasl_password is None:
        raise ConfigurationError(
            "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD are required with "
            f"KAFKA_SECURITY_PROTOCOL={protocol}"
        )
    mechanism = {
        "PLAIN": SASLPlaintext,
        "SCRAM-SHA-256": SASLScram256,
        "SCRAM-SHA-512": SASLScram512,
    }[settings.kafka_sasl_mechanism]
    return mechanism(
        settings.kafka_sasl_username,
        settings.kafka_sasl_password.get_secret_value(),
        ssl_context=context,
        use_ssl=tls,
    )


# Producer options every service gets unless it passes its own to `create_broker`: what a Kafka
# operator expects of a producer that must neither lose nor reorder nor duplicate on retry.
# - acks=all: a record is acknowledged once every in-sync replica has it (the topics require
#   min.insync.replicas 2 of 3, deploy/k8s/topics).
# - enable_idempotence: the broker drops a retried batch it already wrote and keeps a
#   partition's batches in order across retries (aiokafka sends one batch per partition at a
#   time). KAFKA_IDEMPOTENCE decides (see `start_broker`).
# - request_timeout_ms: how long one produce request may wait for its acknowledgement; the
#   outbox relay then retries from the oldest row, scan-ingest answers 503.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    "linger_ms": 2,
    "request_timeout_ms": 15_000,
    "retry_backoff_ms": 100,
}


def create_broker(settings: ServiceSettings, service: str, **producer: Any) -> KafkaBroker:
    """The service's broker; `producer` passes aiokafka producer options (max_request_size,
    max_batch_size…) and overrides PRODUCER_DEFAULTS (linger_ms…). Idempotence follows
    KAFKA_IDEMPOTENCE: `off` turns it off; `auto` and `required` ask for it (`start_broker`)."""
    options = {**PRODUCER_DEFAULTS, **producer}
    if settings.kafka_idempotence == "off":
        options["enable_idempotence"] = False
    return KafkaBroker(
        # A list: faststream wraps a string in one, and "h1:9092,h2:9092" is then one bad host.
        [h.strip() for h in settings.kafka_bootstrap_servers.split(",") if h.strip()],
        client_id=f"{settings.kafka_client_id}-{service}",
        logger=logging.getLogger(f"scanner_auth.{service}.kafka"),
        graceful_timeout=settings.shutdown_grace_seconds,
        security=kafka_security(settings),
        **options,
    )


def producer_options(broker: KafkaBroker) -> dict[str, Any]:
    """The options faststream will build the broker's aiokafka producer with at connect().
    faststream 0.7 keeps them in `broker._connection_kwargs`; `shared/tests/test_messaging.py`
    fails if that moves."""
    options = getattr(broker, "_connection_kwargs", None)
    if not isinstance(options, dict):
        raise RuntimeError("faststream's KafkaBroker no longer keeps _connection_kwargs")
    return options


async def broker_grants_producer_ids(broker: KafkaBroker) -> bool:
    """Whether the cluster hands out producer ids (InitProducerId), which idempotence needs.
    Kafka does; Tansu (`scanner-auth dev`'s default broker, the acceptance checks') answers
    UNKNOWN_SERVER_ERROR. A connection failure raises: that is an outage, not an answer."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.errors import KafkaConnectionError, KafkaError, for_code
    from aiokafka.protocol.transaction import InitProducerIdRequest

    accepted = set(inspect.signature(AIOKafkaClient).parameters)
    options = {k: v for k, v in producer_options(broker).items() if k in accepted}
    client = AIOKafkaClient(**options)
    try:
        await client.bootstrap()
        # A cluster that has just started answers COORDINATOR_LOAD_IN_PROGRESS and the like
        # for a moment: retriable answers are asked again, for up to about 10 s.
        for _ in range(50):
            node = client.get_random_node()
            try:
                response = await client.send(
                    node,
                    InitProducerIdRequest(transactional_id=None, transaction_timeout_ms=60_000),
                )
            except KafkaConnectionError:
                raise
            except KafkaError:
                return False
            code = getattr(response, "error_code", -1)
            if code == 0:
                return True
            if not getattr(for_code(code), "retriable", False):
                return False
            await asyncio.sleep(0.2)
        return False
    finally:
        await client.close()


def kafka_headers(event_type: str) -> dict[str, str]:
    """The Kafka headers of an event of `event_type` (structured-mode CloudEvents)."""
    return {"content-type": "application/cloudevents+json", "ce-type": event_type}


def record_headers(event_type: str) -> list[tuple[str, bytes]]:
    """`kafka_headers`, as aiokafka's record batches take them."""
    return [(name, value.encode()) for name, value in kafka_headers(event_type).items()]


def default_partition(key: bytes | None, partitions: Sequence[int]) -> int:
    """The partition Kafka's default partitioner chooses for `key` among `partitions` (sorted):
    murmur2 of the key, as the Java client and aiokafka's `send()` do; the first partition for
    no key. For records handed to aiokafka as batches, which bypass its partitioner."""
    if key is None:
        return partitions[0]
    index: int = (murmur2(key) & 0x7FFFFFFF) % len(partitions)
    return partitions[index]


def documented_body(models: Sequence[type[EventData]]) -> Any:
    """A bytes body type whose JSON schema (AsyncAPI) is the CloudEvents envelope around each
    model's data: what `subscribe_events` consumes and `scanner-auth contracts` publishes."""
    envelopes = [
        create_model(
            f"{model.event_type}Event",
            __base__=CloudEvent,
            __doc__=f"{model.event_type}, in its CloudEvents envelope. {model.__doc__}",
            type=(Literal[model.event_type], Field(description="The event type.")),  # type: ignore[arg-type]
            data=(model, Field(description=f"The {model.event_type} data.")),
        )
        for model in sorted(models, key=lambda m: m.event_type)
    ]
    documented: Any = (
        Annotated[functools.reduce(operator.or_, envelopes), Field(discriminator="type")]
        if len(envelopes) > 1
        else envelopes[0]
    )

    def one_of(schema: dict[str, Any]) -> None:
        # A lone $ref would be read by faststream as its definitions' first entry.
        if "$ref" in schema:
            schema["oneOf"] = [{"$ref": schema.pop("$ref")}]

    return Annotated[
        bytes,
        PlainValidator(lambda body: body, json_schema_input_type=documented),
        Field(json_schema_extra=one_of),
    ]


def aiokafka_producer(broker: KafkaBroker) -> Any | None:
    """The started `AIOKafkaProducer` inside faststream's broker, or None (not connected yet).

    For what needs aiokafka's record batches (`create_batch`/`send_batch`): the outbox relay
    and scan-ingest's uploads. faststream 0.7 keeps it at `broker.config.producer._producer
    .producer`; a faststream whose internals moved makes this None, which
    `shared/tests/test_outbox.py` catches (the relay would silently send row by row)."""
    state = getattr(getattr(broker.config, "producer", None), "_producer", None)
    producer = getattr(state, "producer", None)
    return producer if callable(getattr(producer, "send_batch", None)) else None


def producer_stopped(producer: Any) -> bool:
    """Whether an aiokafka producer's sender has stopped for good. aiokafka 0.14's idempotent
    producer does after OUT_OF_ORDER_SEQUENCE_NUMBER (a batch failed after it was given a
    sequence number while its partition had no leader, e.g. a whole cluster down longer than
    the request timeout): every later send then fails until the producer is replaced."""
    sender = getattr(producer, "_sender", None)
    task = getattr(sender, "sender_task", None)
    return task is not None and task.done()


async def renew_producer(broker: KafkaBroker) -> bool:
    """Replace the broker's aiokafka producer by a new one (same options) if its sender has
    stopped (`producer_stopped`); True if it did. The outbox relay calls it after a failed
    drain, scan-ingest after a failed upload batch: a new producer gets a new producer id, and
    the events the old one failed are sent again from the outbox (consumers deduplicate)."""
    producer = aiokafka_producer(broker)
    if producer is None or not producer_stopped(producer):
        return False
    fast: Any = broker.config.producer  # faststream 0.7: AioKafkaFastProducerImpl
    with contextlib.suppress(Exception):
        await fast.disconnect()
    from aiokafka import AIOKafkaProducer

    await fast.connect(
        AIOKafkaProducer(**producer_options(broker)),
        serializer=getattr(fast, "serializer", None),
        codec=getattr(fast, "codec", None),
    )
    metrics.PRODUCER_RENEWED.inc()
    log.warning("the Kafka producer had stopped for good; replaced by a new one")
    return True


async def start_broker(broker: KafkaBroker, idempotence: Idempotence = "required") -> None:
    """Like `broker.start()`, but subscribers join their groups concurrently (each join is a
    round of the group protocol, and a service has several), and the producer's idempotence
    settled first.

    KAFKA_IDEMPOTENCE=auto (the default): idempotent when the cluster hands out producer ids,
    as every Kafka since 0.11 does; a broker that cannot (Tansu) gets a plain acks=all producer,
    with a warning and `scanner_auth_kafka_idempotent_producer` 0. `required` never falls back:
    a refusing broker then gets no record from us. `off`: never idempotent."""
    options = producer_options(broker)
    asks = idempotence == "auto" and options.get("enable_idempotence")
    if asks and not await broker_grants_producer_ids(broker):
        options["enable_idempotence"] = False
        log.warning(
            "the Kafka cluster hands out no producer ids: producing without idempotence "
            "(acks=all still); set KAFKA_IDEMPOTENCE=required to refuse instead",
            extra={"bootstrap": options.get("bootstrap_servers")},
        )
    metrics.KAFKA_IDEMPOTENT.set(1 if options.get("enable_idempotence") else 0)
    await broker.connect()
    await asyncio.gather(*(sub.start() for sub in broker.subscribers))
    for pub in broker.publishers:
        await pub.start()
    broker.running = True
