"""The notifier's composition root: build(settings) -> ServiceRuntime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from faststream.kafka.security import parse_security

from scanner_auth_shared.api import starlette_app
from scanner_auth_shared.consumer import subscribe
from scanner_auth_shared.crypto import SecretBox
from scanner_auth_shared.events import PUBLIC_TOPIC, NotificationFailed, NotificationSent
from scanner_auth_shared.listen import Listener
from scanner_auth_shared.messaging import create_broker, kafka_security
from scanner_auth_shared.postgres import Database
from scanner_auth_shared.runtime import ServiceRuntime
from scanner_auth_shared.settings import aes_key_bytes

from . import consumers, domain
from .adapters.email import EmailRenderer
from .adapters.kafka import KafkaReadBarrier
from .adapters.postgres import WAKE_CHANNEL, PostgresNotifierUnitOfWork
from .adapters.smtp import SmtpRelay
from .handlers import Delivery, DeliveryPolicy
from .sender import Sender
from .settings import Settings

SERVICE = "notifier"
# What it publishes through its outbox (the AsyncAPI document: `scanner-auth contracts`).
PUBLISHES = (NotificationSent, NotificationFailed)

# What the handlers' safety net adds to the relay's own deadline.
SEND_MARGIN_SECONDS = 5.0


@dataclass(frozen=True)
class Services:
    """What the service is made of (on `app.state.services`)."""

    database: Database
    delivery: Delivery
    sender: Sender
    barrier: KafkaReadBarrier


def build(settings: Settings) -> ServiceRuntime:
    broker = create_broker(settings, SERVICE)
    runtime = ServiceRuntime(name=SERVICE, settings=settings, broker=broker)
    database = runtime.use_postgres(Path(__file__).parent / "migrations")
    runtime.use_outbox_relay()

    def unit_of_work() -> PostgresNotifierUnitOfWork:
        return PostgresNotifierUnitOfWork(database)

    for consumer in consumers.CONSUMERS:
        subscribe(broker, settings, consumer, unit_of_work)

    barrier = _barrier(settings)
    delivery = Delivery(
        unit_of_work=unit_of_work,
        mailer=_relay(settings),
        composer=EmailRenderer(settings.smtp_from),
        box=SecretBox(aes_key_bytes(settings.sealing_key)),
        barrier=barrier,
        policy=_policy(settings),
    )
    sender = Sender(
        delivery,
        Listener(database, {WAKE_CHANNEL: lambda _: None}, name=f"{SERVICE}-sender"),
        concurrency=settings.sender_concurrency,
        poll_seconds=settings.sender_poll_seconds,
        lease_seconds=settings.lease_seconds,
        drain_seconds=min(settings.shutdown_grace_seconds, settings.lease_seconds / 2),
    )
    runtime.background["sender"] = sender.run
    runtime.on_stop.append(sender.stop)
    runtime.on_stop.append(barrier.close)

    app = starlette_app(runtime)
    app.state.services = Services(database, delivery, sender, barrier)
    return runtime


def _policy(settings: Settings) -> DeliveryPolicy:
    """The lease covers a delivery's wait for its turn (a quarter of it at most) and its SMTP
    attempt (half, plus the margin), so that a live delivery is never taken for a dead one."""
    return DeliveryPolicy(
        backoff=domain.Backoff(settings.retry_base_seconds, settings.retry_max_seconds),
        send_deadline_seconds=settings.lease_seconds / 2 + SEND_MARGIN_SECONDS,
        barrier_timeout_seconds=min(settings.barrier_timeout_seconds, settings.lease_seconds / 4),
        release_seconds=settings.barrier_release_seconds,
    )


def _relay(settings: Settings) -> SmtpRelay:
    password = settings.smtp_password
    return SmtpRelay(
        host=settings.smtp_host,
        port=settings.smtp_port,
        tls=settings.smtp_tls,
        username=settings.smtp_username,
        password=password.get_secret_value() if password is not None else None,
        timeout=settings.smtp_timeout_seconds,
        ca_file=settings.smtp_ca_file,
        helo_hostname=settings.smtp_helo_hostname,
        deadline=settings.lease_seconds / 2,
    )


def _barrier(settings: Settings) -> KafkaReadBarrier:
    return KafkaReadBarrier(
        topic=PUBLIC_TOPIC,
        group_id=consumers.TOKEN_STATES.group_id,
        client_options={
            "bootstrap_servers": settings.kafka_bootstrap_servers,
            "client_id": f"{settings.kafka_client_id}-{SERVICE}-barrier",
            **parse_security(kafka_security(settings)),
        },
        poll_seconds=settings.barrier_poll_seconds,
    )
