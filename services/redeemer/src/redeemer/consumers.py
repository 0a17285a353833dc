"""The redeemer's subscriptions: one consumer group per topic it follows.

Both concerns on the public topic (the token view, and credentials following
ScannerDeauthorised) share one group: every group reads the whole topic, including the flood of
AuthorisationRejected a brute-force attack produces, so a second group would read it twice.
"""

from __future__ import annotations

from faststream.kafka import KafkaBroker

from scanner_auth_shared.events import DIRECTORY_TOPIC, PUBLIC_TOPIC
from scanner_auth_shared.messaging import subscribe_events

from .handlers import AUTHORISATION_CONSUMER, DIRECTORY_CONSUMER, Redeemer
from .settings import Settings

AUTHORISATION_TYPES = {"TokenIssued", "TokenRevoked", "TokenExpired", "ScannerDeauthorised"}
DIRECTORY_TYPES = {"ScannerRegistered", "ScannerRemoved"}


def subscribe(broker: KafkaBroker, settings: Settings, redeemer: Redeemer) -> None:
    subscribe_events(
        broker,
        settings,
        topic=PUBLIC_TOPIC,
        consumer=AUTHORISATION_CONSUMER,
        group_id="scanner-auth.redeemer.authorisation",
        handler=redeemer.apply_public_event,
        types=AUTHORISATION_TYPES,
        description="the redeemer's view of tokens (digest, scanner, expiry, status); "
        "a deauthorised scanner's credentials are revoked",
    )
    subscribe_events(
        broker,
        settings,
        topic=DIRECTORY_TOPIC,
        consumer=DIRECTORY_CONSUMER,
        group_id="scanner-auth.redeemer.directory",
        handler=redeemer.apply_directory_event,
        types=DIRECTORY_TYPES,
        description="the redeemer's view of scanners' serial numbers",
    )
