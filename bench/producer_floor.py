"""Which Kafka client should scan-ingest's uploads use? A floor-like app per producer.

The same server as bench/floor_server.py (`serve()`, `ServiceRuntime` with a started broker,
Starlette app and middleware); its `POST /v1/scans` reads the body (wrk sends 1 KiB), produces
it to a topic with the scans topic's partitions, keyed by the credential header, `acks=all`,
idempotent, and answers 202 only once Kafka acknowledged that record. PRODUCER picks the client:

- `aiokafka`: the broker's own `AIOKafkaProducer` (the services' settings, PRODUCER_DEFAULTS),
  one `send()` per upload, its future awaited;
- `aiokafka-batches`: the same producer through scan-ingest's own group commit
  (`scan_ingest.adapters.kafka.ScanBatches`: record batches per partition), as the service
  publishes today;
- `confluent`: librdkafka (`confluent_kafka.Producer`, the same acks, idempotence and linger),
  its delivery callback (run by a poll thread) resolving an asyncio future through
  `loop.call_soon_threadsafe`.

PRODUCER_TOPIC names the topic (bench/run.py creates it). Run by bench/run.py as its own
process, configured from the environment like scan-ingest.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from scanner_auth.cli import _run
from scanner_auth_shared.api import starlette_app
from scanner_auth_shared.logs import configure_logging
from scanner_auth_shared.messaging import PRODUCER_DEFAULTS, aiokafka_producer, create_broker
from scanner_auth_shared.runtime import ServiceRuntime, serve
from scanner_auth_shared.settings import ServiceSettings, load_settings

_BODY = (
    b'{"scan_id":"00000000-0000-4000-8000-000000000000",'
    b'"received_at":"2026-01-01T00:00:00.000000Z"}'
)
_HEADERS: list[tuple[str, str | bytes | None]] = [("content-type", b"application/json")]


def confluent_publisher(
    bootstrap: str, topic: str
) -> tuple[Callable[..., Any], Callable[[], None]]:
    from confluent_kafka import KafkaException, Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": bool(PRODUCER_DEFAULTS["enable_idempotence"]),
            "linger.ms": PRODUCER_DEFAULTS["linger_ms"],
            "request.timeout.ms": PRODUCER_DEFAULTS["request_timeout_ms"],
            "retry.backoff.ms": PRODUCER_DEFAULTS["retry_backoff_ms"],
        }
    )
    running = True

    def poll() -> None:  # delivery callbacks run in this thread
        while running:
            producer.poll(0.1)

    thread = threading.Thread(target=poll, name="librdkafka-poll", daemon=True)
    thread.start()
    loop = asyncio.get_running_loop()

    def settle(future: asyncio.Future[None], err: Any) -> None:
        if future.done():
            return
        if err is None:
            future.set_result(None)
        else:
            future.set_exception(KafkaException(err))

    def publish(key: bytes, value: bytes) -> Awaitable[None]:
        future = loop.create_future()

        def delivered(err: Any, _msg: Any) -> None:
            loop.call_soon_threadsafe(settle, future, err)

        producer.produce(topic, value, key, headers=_HEADERS, on_delivery=delivered)
        return future

    def stop() -> None:
        nonlocal running
        producer.flush(10)
        running = False
        thread.join(5)

    return publish, stop


def main() -> None:
    configure_logging("bench-producer-floor", os.environ.get("LOG_LEVEL", "INFO"))
    settings = load_settings(ServiceSettings)
    kind = os.environ.get("PRODUCER", "aiokafka")
    topic = os.environ["PRODUCER_TOPIC"]
    runtime = ServiceRuntime(
        name="bench-producer-floor",
        settings=settings,
        broker=create_broker(settings, "bench-producer-floor"),
    )
    publish: Callable[[bytes, bytes], Awaitable[Any]] | None = None

    async def start_producer() -> None:
        nonlocal publish
        if kind == "confluent":
            publish, stop = confluent_publisher(settings.kafka_bootstrap_servers, topic)
            runtime.on_stop.append(lambda: asyncio.to_thread(stop))
            return
        producer = aiokafka_producer(runtime.broker)
        assert producer is not None, "the broker holds no aiokafka producer"
        if kind == "aiokafka-batches":
            from scan_ingest.adapters.kafka import ScanBatches

            batches = ScanBatches(
                producer, topic, [("content-type", b"application/json")], timeout=15
            )
            publish = batches.publish
        else:

            async def send(key: bytes, value: bytes) -> None:
                sent = await producer.send(topic, value, key=key, headers=_HEADERS)
                await sent

            publish = send

    # After the broker started (the aiokafka producer lives in it): readiness waits for it.
    async def ready() -> bool:
        if publish is None and runtime.started:
            await start_producer()
        return publish is not None

    runtime.probes["producer"] = ready

    async def upload(request: Request) -> Response:
        body = await request.body()
        key = request.headers.get("authorization", "").encode()
        assert publish is not None
        await publish(key, body)
        return Response(_BODY, status_code=202, media_type="application/json")

    starlette_app(runtime, routes=[Route("/v1/scans", upload, methods=["POST"])])
    _run(serve(runtime))


if __name__ == "__main__":
    main()
