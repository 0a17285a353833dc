"""Subscriptions of the token-issuer: one per concern, each its own consumer group."""

from __future__ import annotations

from faststream.kafka import KafkaBroker

from scanner_auth_shared.events import DIRECTORY_TOPIC, PUBLIC_TOPIC
from scanner_auth_shared.messaging import subscribe_events

from .handlers import AUTHORISATIONS_CONSUMER, DIRECTORY_CONSUMER, SERVICE, TokenIssuer
from .settings import Settings

DIRECTORY_TYPES = {
    "ScannerRegistered",
    "ScannerRemoved",
    "UserUpserted",
    "ScannerAccessGranted",
    "ScannerAccessRevoked",
}
AUTHORISATION_TYPES = {"ScannerAuthorised", "CredentialRotated"}


def subscribe(broker: KafkaBroker, settings: Settings, issuer: TokenIssuer) -> None:
    subscribe_events(
        broker,
        settings,
        topic=DIRECTORY_TOPIC,
        consumer=DIRECTORY_CONSUMER,
        group_id=f"scanner-auth.{SERVICE}.directory",
        handler=issuer.apply_directory_event,
        types=DIRECTORY_TYPES,
        description="The directory view: scanners, users and access grants.",
    )
    subscribe_events(
        broker,
        settings,
        topic=PUBLIC_TOPIC,
        consumer=AUTHORISATIONS_CONSUMER,
        group_id=f"scanner-auth.{SERVICE}.authorisations",
        handler=issuer.apply_authorisation_event,
        types=AUTHORISATION_TYPES,
        description="The authorisation view: redeemed tokens, authorised scanners, credentials.",
    )
