"""The notifier's consumer groups: which handler applies each event type."""

from __future__ import annotations

from scanner_auth_shared.consumer import Consumer
from scanner_auth_shared.events import (
    NOTIFICATIONS_TOPIC,
    PUBLIC_TOPIC,
    ScannerAuthorised,
    TokenEmailRequested,
    TokenExpired,
    TokenIssued,
    TokenRevoked,
)

from . import handlers
from .adapters.ports import NotifierUnitOfWork

EMAIL_REQUESTS: Consumer[NotifierUnitOfWork] = Consumer(
    name="notifier.email-requests",
    topic=NOTIFICATIONS_TOPIC,
    handlers={TokenEmailRequested: handlers.on_token_email_requested},
    description="Records each requested email once (by notification id) for the sender.",
)

TOKEN_STATES: Consumer[NotifierUnitOfWork] = Consumer(
    name="notifier.token-states",
    topic=PUBLIC_TOPIC,
    handlers={
        TokenIssued: handlers.on_token_issued,
        TokenRevoked: handlers.on_token_revoked,
        TokenExpired: handlers.on_token_expired,
        ScannerAuthorised: handlers.on_scanner_authorised,
    },
    description="Follows each token's life, so that no email goes out for a dead code.",
)

CONSUMERS = (EMAIL_REQUESTS, TOKEN_STATES)
