"""The notifier's subscriptions: one per concern."""

from __future__ import annotations

from faststream.kafka import KafkaBroker

from scanner_auth_shared.events import NOTIFICATIONS_TOPIC, PUBLIC_TOPIC
from scanner_auth_shared.messaging import subscribe_events

from .handlers import REQUESTS_CONSUMER, TOKENS_CONSUMER, Notifier
from .settings import Settings


def subscribe(broker: KafkaBroker, settings: Settings, notifier: Notifier) -> None:
    subscribe_events(
        broker,
        settings,
        topic=NOTIFICATIONS_TOPIC,
        consumer=REQUESTS_CONSUMER,
        group_id="scanner-auth.notifier.email-requests",
        handler=notifier.record_email_request,
        types={"TokenEmailRequested"},
        description="Records each requested email once (by notification id) for the sender.",
    )
    subscribe_events(
        broker,
        settings,
        topic=PUBLIC_TOPIC,
        consumer=TOKENS_CONSUMER,
        group_id="scanner-auth.notifier.token-states",
        handler=notifier.apply_token_event,
        types={"TokenIssued", "TokenRevoked", "TokenExpired", "ScannerAuthorised"},
        description="Follows each token's life, so that no email goes out for a dead code.",
    )
