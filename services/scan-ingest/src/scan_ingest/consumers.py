"""scan-ingest's consumer group: the gate writer on the public authorisation topic."""

from __future__ import annotations

from scanner_auth_shared.consumer import Consumer
from scanner_auth_shared.events import (
    PUBLIC_TOPIC,
    CredentialRotated,
    CredentialsRevoked,
    ScannerAuthorised,
)

from . import handlers
from .adapters.ports import GateUnitOfWork

# A change in authorisation must reach the gate quickly (the contract: within one second; the
# benchmark: redeem 201 → the gate accepts, p99 ≤ 100 ms). On Tansu a hop waits up to the
# fetch's wait: 50 ms rather than the shared 100 (bench/README.md, "Hops").
GATE_FETCH_MAX_WAIT_MS = 50

# Group `scanner-auth.scan-ingest.gate`; its processed-event rows are keyed "scan-ingest.gate".
GATE_WRITER: Consumer[GateUnitOfWork] = Consumer(
    name="scan-ingest.gate",
    topic=PUBLIC_TOPIC,
    handlers={
        ScannerAuthorised: handlers.on_scanner_authorised,
        CredentialRotated: handlers.on_credential_rotated,
        CredentialsRevoked: handlers.on_credentials_revoked,
    },
    description="Applies ScannerAuthorised, CredentialRotated and CredentialsRevoked to the "
    "gate's credential table and notifies every replica. (ScannerDeauthorised closes nothing "
    "here: the redeemer answers it with CredentialsRevoked, naming the credentials.)",
    wait_ms=GATE_FETCH_MAX_WAIT_MS,
)
