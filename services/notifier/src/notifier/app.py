"""The notifier's composition root."""

from __future__ import annotations

from pathlib import Path

from scanner_auth_shared.api import starlette_app
from scanner_auth_shared.db import asyncpg_dsn
from scanner_auth_shared.events import NotificationFailed, NotificationSent
from scanner_auth_shared.messaging import create_broker
from scanner_auth_shared.runtime import ServiceRuntime
from scanner_auth_shared.settings import aes_key_bytes

from . import consumers
from .adapters.email import EmailRenderer
from .adapters.smtp import SmtpRelay
from .handlers import Notifier
from .sender import Sender
from .settings import Settings

SERVICE = "notifier"
# What it publishes through its outbox (the AsyncAPI document: `scanner-auth contracts`).
PUBLISHES = (NotificationSent, NotificationFailed)


def build(settings: Settings) -> ServiceRuntime:
    broker = create_broker(settings, SERVICE)
    runtime = ServiceRuntime(name=SERVICE, settings=settings, broker=broker)
    database = runtime.use_database(Path(__file__).parent / "migrations")
    runtime.use_outbox_relay()

    relay = SmtpRelay(
        host=settings.smtp_host,
        port=settings.smtp_port,
        tls=settings.smtp_tls,
        username=settings.smtp_username,
        password=(
            settings.smtp_password.get_secret_value()
            if settings.smtp_password is not None
            else None
        ),
        timeout=settings.smtp_timeout_seconds,
        ca_file=settings.smtp_ca_file,
        helo_hostname=settings.smtp_helo_hostname,
    )
    notifier = Notifier(
        database,
        relay,
        EmailRenderer(settings.smtp_from),
        aes_key_bytes(settings.sealing_key),
        retry_base_seconds=settings.retry_base_seconds,
        retry_max_seconds=settings.retry_max_seconds,
        # Well inside the lease, so that a live delivery is never taken for a dead one.
        send_deadline_seconds=settings.lease_seconds / 2,
    )
    consumers.subscribe(broker, settings, notifier)

    sender = Sender(
        notifier,
        asyncpg_dsn(settings.database_url),
        concurrency=settings.sender_concurrency,
        poll_seconds=settings.sender_poll_seconds,
        lease_seconds=settings.lease_seconds,
        drain_seconds=min(settings.shutdown_grace_seconds, settings.lease_seconds / 2),
    )
    runtime.background["sender"] = sender.run
    runtime.on_stop.append(sender.stop)

    starlette_app(runtime)
    return runtime
