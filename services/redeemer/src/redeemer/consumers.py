"""The redeemer's consumer groups: which handler applies each event type it reads.

Both concerns on the public topic (the token view, and credentials following
ScannerDeauthorised) share one group: every group reads the whole topic, including the flood of
AuthorisationRejected a brute-force attack produces, so a second group would read it twice.
"""

from __future__ import annotations

from scanner_auth_shared.consumer import Consumer
from scanner_auth_shared.events import (
    DIRECTORY_TOPIC,
    PUBLIC_TOPIC,
    ScannerDeauthorised,
    ScannerRegistered,
    ScannerRemoved,
    TokenExpired,
    TokenIssued,
    TokenRevoked,
)

from . import handlers
from .adapters.ports import UnitOfWork

AUTHORISATION = Consumer[UnitOfWork](
    name="redeemer.authorisation",
    topic=PUBLIC_TOPIC,
    handlers={
        TokenIssued: handlers.on_token_issued,
        TokenRevoked: handlers.on_token_revoked,
        TokenExpired: handlers.on_token_expired,
        ScannerDeauthorised: handlers.on_scanner_deauthorised,
    },
    description="the redeemer's view of tokens (digest, scanner, expiry, status); "
    "a deauthorised scanner's credentials are revoked",
)

DIRECTORY = Consumer[UnitOfWork](
    name="redeemer.directory",
    topic=DIRECTORY_TOPIC,
    handlers={
        ScannerRegistered: handlers.on_scanner_registered,
        ScannerRemoved: handlers.on_scanner_removed,
    },
    description="the redeemer's view of scanners' serial numbers",
)

CONSUMERS = (AUTHORISATION, DIRECTORY)
