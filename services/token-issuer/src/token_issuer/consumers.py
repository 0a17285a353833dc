"""The token-issuer's consumer groups: which handler applies each event type they read.

The names are the consumer groups' (`scanner-auth.<name>`, in deploy/) and the keys of their
rows in `processed_events`: they never change.
"""

from __future__ import annotations

from functools import partial

from scanner_auth_shared.consumer import Consumer
from scanner_auth_shared.events import (
    DIRECTORY_TOPIC,
    PUBLIC_TOPIC,
    CredentialRotated,
    ScannerAccessGranted,
    ScannerAccessRevoked,
    ScannerAuthorised,
    ScannerRegistered,
    ScannerRemoved,
    UserUpserted,
)

from . import SERVICE, handlers
from .adapters.ports import UnitOfWork
from .handlers import Clock

DIRECTORY = f"{SERVICE}.directory"
AUTHORISATIONS = f"{SERVICE}.authorisations"


def directory(clock: Clock) -> Consumer[UnitOfWork]:
    return Consumer(
        name=DIRECTORY,
        topic=DIRECTORY_TOPIC,
        handlers={
            ScannerRegistered: handlers.on_scanner_registered,
            ScannerRemoved: partial(handlers.on_scanner_removed, clock=clock),
            UserUpserted: handlers.on_user_upserted,
            ScannerAccessGranted: handlers.on_access_granted,
            ScannerAccessRevoked: handlers.on_access_revoked,
        },
        description="The directory view: scanners, users and access grants.",
    )


def authorisations(clock: Clock) -> Consumer[UnitOfWork]:
    return Consumer(
        name=AUTHORISATIONS,
        topic=PUBLIC_TOPIC,
        handlers={
            ScannerAuthorised: partial(handlers.on_scanner_authorised, clock=clock),
            CredentialRotated: handlers.on_credential_rotated,
        },
        description="The authorisation view: redeemed tokens, authorised scanners, credentials.",
    )
