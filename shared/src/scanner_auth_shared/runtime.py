"""The life of one service process: start in order, report readiness, stop gracefully.

Each service's composition root builds a `ServiceRuntime` from its settings: its database, its
broker with subscribers, its outbox relay, its background tasks and its HTTP app. The same
object runs under uvicorn (`scanner-auth serve`) and inside tests (start()/stop()).

Start: database (migrations unless MIGRATE_ON_START=false) → broker and subscribers → relay
and background tasks → HTTP. Stop (SIGTERM): uvicorn stops accepting and finishes in-flight
requests, then subscribers finish their current message and commit, background tasks stop,
the relay publishes what is committed, connections close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from faststream.kafka import KafkaBroker
from starlette.types import ASGIApp

from .messaging import aiokafka_producer, renew_producer, start_broker
from .migrations import upgrade
from .outbox import OutboxRelay, purge_processed_events
from .postgres import Database
from .retry import every, keep_running
from .settings import DatabaseSettings, ServiceSettings
from .signing import signer_for

log = logging.getLogger("scanner_auth.runtime")

BackgroundTask = Callable[[], Awaitable[None]]
ReadinessProbe = Callable[[], Awaitable[bool]]


@dataclass
class ServiceRuntime:
    name: str
    settings: ServiceSettings
    broker: KafkaBroker
    database: Database | None = None
    migrations: Path | None = None
    relay: OutboxRelay | None = None
    background: dict[str, BackgroundTask] = field(default_factory=dict)
    probes: dict[str, ReadinessProbe] = field(default_factory=dict)
    on_start: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    on_stop: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    app: ASGIApp | None = None
    _tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    started: bool = False

    # -------------------------------------------------------------------- wiring helpers

    def use_postgres(self, migrations: Path) -> Database:
        """The service's database (an asyncpg pool), migrated at start unless
        MIGRATE_ON_START=false."""
        assert isinstance(self.settings, DatabaseSettings)
        database = Database(
            self.settings.database_url,
            pool_size=self.settings.database_pool_size,
            application_name=self.name,
            statement_cache_size=self.settings.database_statement_cache_size,
        )
        self.database = database
        self.migrations = migrations
        self.forget_processed_events(database)
        return database

    def forget_processed_events(self, database: Database, every_seconds: float = 3600.0) -> None:
        """Purge the processed-event table past PROCESSED_EVENT_RETENTION_DAYS, hourly (every
        replica may: the purge is idempotent and batched)."""
        assert isinstance(self.settings, DatabaseSettings)
        retention = timedelta(days=self.settings.processed_event_retention_days)
        self.periodically(
            "processed-events-retention",
            every_seconds,
            lambda: purge_processed_events(database, retention),
        )

    def periodically(
        self, name: str, seconds: float, work: Callable[[], Awaitable[object]]
    ) -> None:
        """A background task that runs `work` every `seconds` (a failed round is logged)."""
        self.background[name] = lambda: every(seconds, name, work)

    def use_outbox_relay(self) -> OutboxRelay:
        assert isinstance(self.settings, DatabaseSettings)

        async def send(
            topic: str, key: bytes | None, payload: bytes, headers: dict[str, str]
        ) -> Any:
            return await self.broker.publish(
                payload, topic, key=key, headers=headers, no_confirm=True
            )

        self.relay = OutboxRelay(
            Database(
                self.settings.database_url,
                pool_size=1,
                application_name=f"{self.name}-outbox-relay",
            ),
            send,
            service=self.name,
            poll_interval=self.settings.outbox_poll_interval_seconds,
            # Whole record batches per partition through the broker's aiokafka producer (about
            # three times the events per second of one publish per row, bench/README.md); `send`
            # when the broker holds none.
            producer=lambda: aiokafka_producer(self.broker),
            signer=signer_for(self.settings, self.name),
            renew=lambda: renew_producer(self.broker),
        )
        return self.relay

    # -------------------------------------------------------------------- life

    async def migrate(self) -> None:
        if self.database is not None and self.migrations is not None:
            await upgrade(self.database.url, self.migrations)

    async def start(self) -> None:
        if self.database is not None:
            if self.settings.migrate_on_start:
                await self.migrate()
            connecting = self.database.connect()
            if connecting is not None:  # the asyncpg pool connects asynchronously
                await connecting
        for hook in self.on_start:
            await hook()
        await start_broker(self.broker, self.settings.kafka_idempotence)
        if self.relay is not None:
            self._spawn("outbox-relay", self.relay.run)
        for name, task in self.background.items():
            self._spawn(name, task)
        self.started = True
        log.info("service started", extra={"service": self.name})

    def _spawn(self, name: str, run: BackgroundTask) -> None:
        # A background loop that dies is restarted: it must never leave the service half alive.
        self._tasks[name] = asyncio.create_task(
            keep_running(f"background task {name}", run), name=f"{self.name}:{name}"
        )

    async def stop(self) -> None:
        if not self.started:
            return
        self.started = False
        # One deadline for the whole shutdown (SHUTDOWN_GRACE_SECONDS), shared by its phases.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_grace_seconds

        def left(cap: float | None = None) -> float:
            remaining = max(0.1, deadline - loop.time())
            return min(remaining, cap) if cap is not None else remaining

        # Subscribers first: each finishes its current message and commits its offset. The
        # producer stays up so that the relay can still publish what is committed.
        await asyncio.gather(
            *(asyncio.wait_for(sub.stop(), left()) for sub in self.broker.subscribers),
            return_exceptions=True,
        )
        for hook in self.on_stop:
            try:
                await asyncio.wait_for(hook(), left())
            except Exception:
                log.exception("stop hook failed")
        for name, task in self._tasks.items():
            if name != "outbox-relay":
                task.cancel()
        relay_task = self._tasks.get("outbox-relay")
        if self.relay is not None and relay_task is not None:
            await self.relay.stop()
            try:
                await asyncio.wait_for(asyncio.shield(relay_task), left(5.0))
            except Exception:
                relay_task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.broker.stop(), left())
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        if self.database is not None:
            await self.database.dispose()
        log.info("service stopped", extra={"service": self.name})

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ServiceRuntime]:
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    # -------------------------------------------------------------------- readiness

    async def readiness(self) -> dict[str, bool]:
        checks: dict[str, bool] = {"started": self.started}
        if not self.started:
            return checks
        if self.database is not None:
            checks["database"] = await self.database.ping()
        try:
            checks["kafka"] = await self.broker.ping(timeout=2.0)
        except Exception:
            checks["kafka"] = False
        subscribers = list(self.broker.subscribers)
        checks["consumers"] = all(getattr(s, "running", False) for s in subscribers)
        for name, task in self._tasks.items():
            checks[f"task:{name}"] = not task.done()
        if self.relay is not None:
            checks["outbox-relay"] = self.relay.healthy
        for name, probe in self.probes.items():
            try:
                checks[name] = await probe()
            except Exception:
                checks[name] = False
        return checks


def lifespan_for(
    runtime: ServiceRuntime,
) -> Callable[[Any], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    return lifespan


async def serve(runtime: ServiceRuntime) -> None:
    """Run the service's HTTP app (whose lifespan starts and stops everything) under uvicorn."""
    import gc
    import signal

    import uvicorn

    assert runtime.app is not None
    config = uvicorn.Config(
        runtime.app,
        host=runtime.settings.http_host,
        port=runtime.settings.http_port,
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=max(1, int(runtime.settings.shutdown_grace_seconds)),
        # uvicorn would otherwise take X-Forwarded-For from any peer on 127.0.0.1 as the
        # client (its FORWARDED_ALLOW_IPS default), overriding TRUSTED_PROXIES' "none": the
        # services read the header themselves, from TRUSTED_PROXIES only (http.client_address).
        proxy_headers=False,
        forwarded_allow_ips="",
        loop="auto",
        http="auto",
    )

    class Server(uvicorn.Server):
        # Once shut down, uvicorn raises the signal that stopped it again, so that the process
        # dies of it (exit 143 for SIGTERM). SIGTERM is how Kubernetes and `scanner-auth dev`
        # ask for a graceful stop: when it is done, the process exits 0.
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            if sig == signal.SIGTERM:
                self._captured_signals.remove(sig)

    server = Server(config)
    # Everything imported and built so far lives as long as the process: out of the garbage
    # collector's sight, a full collection no longer walks it (about 110 ms of a stopped event
    # loop every so often under load, the p99 of an upload; 9 ms after this: bench/README.md).
    gc.collect()
    gc.freeze()
    await server.serve()
    if not server.started:
        raise SystemExit(3)
