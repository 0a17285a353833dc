"""scan-ingest's use cases.

The gate writer: one handler per event type of the public topic it consumes (consumers.py: one
batch per unit of work, the inbox making each event count once). Each locks the scanner, records
the fact, derives the standing of every credential of that scanner again from all its facts
(domain.py), stores what changed, and tells every replica's gate to reload that scanner (a
NOTIFY delivered at commit).

The upload, in two steps around the body (the route reads the body only for an admitted
credential): `admit` (the credential against the gate in memory) and `ingest_scan` (the
document, its `ScanIngested` event, published and acknowledged).
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime

from scanner_auth_shared.events import (
    CloudEvent,
    CredentialRotated,
    CredentialsRevoked,
    ScannerAuthorised,
    rfc3339,
)

from .adapters.ports import Gate, GateUnitOfWork, ScanPublisher
from .domain import (
    MAX_CREDENTIAL_LENGTH,
    Admission,
    CredentialFact,
    CredentialState,
    GateLoading,
    NoCredential,
    ScanNotStored,
    Standing,
    UnknownCredential,
    changed_standings,
    refusal_for,
    scan_id_of,
    scan_ingested_bytes,
)

# The loggers' names as operators know them (the gate writer's, the upload path's).
gate_log = logging.getLogger("scanner_auth.scan_ingest.gate")
upload_log = logging.getLogger("scanner_auth.scan_ingest.api")

# ------------------------------------------------------------------------------ the gate writer


async def on_scanner_authorised(
    uow: GateUnitOfWork, event: CloudEvent, data: ScannerAuthorised
) -> None:
    fact = CredentialFact(
        digest=bytes.fromhex(data.credential_digest),
        credential_id=data.credential_id,
        issued_at=data.authorised_at,
    )
    await _learn_credential(uow, event, data.scanner_id, data.org_id, fact)


async def on_credential_rotated(
    uow: GateUnitOfWork, event: CloudEvent, data: CredentialRotated
) -> None:
    fact = CredentialFact(
        digest=bytes.fromhex(data.credential_digest),
        credential_id=data.credential_id,
        issued_at=data.rotated_at,
        previous_credential_id=data.previous_credential_id,
        previous_valid_until=data.previous_valid_until,
    )
    await _learn_credential(uow, event, data.scanner_id, data.org_id, fact)


async def on_credentials_revoked(
    uow: GateUnitOfWork, event: CloudEvent, data: CredentialsRevoked
) -> None:
    """The credentials the redeemer revoked stop working: exactly the ids it names, whenever
    they were issued and whether or not their announcement has arrived yet (issue 18: by
    identity, decided by the redeemer's order; no clock compared).

    And every credential of the scanner this gate still holds as working (active or rotating)
    when it applies the event: the topic delivers a scanner's events in the order the redeemer
    committed them (one producer, one key, one partition), so every credential the redeemer
    issued before the revocation is named, and one issued after it has not been announced yet.
    A working credential the gate knows but the redeemer did not name was never issued by the
    redeemer (a forged ScannerAuthorised, say): closing it too is failing closed.

    `ScannerDeauthorised` itself closes nothing here any more: the gate waits for the
    redeemer's `CredentialsRevoked` (one more hop, measured in tests/e2e)."""
    await uow.credentials.lock_scanner(data.scanner_id)
    known = await uow.credentials.facts(data.scanner_id)
    working = {
        fact.credential_id
        for fact in known.credentials
        if known.standings.get(fact.digest, _WORKING).state <= CredentialState.ROTATING
    }
    unnamed = working - set(data.credential_ids)
    if unnamed:
        gate_log.warning(
            "credentials the redeemer did not name closed with its revocation",
            extra={"scanner_id": data.scanner_id, "credential_ids": sorted(unnamed)},
        )
    await uow.credentials.record_revocations(data.scanner_id, {*data.credential_ids, *working})
    await _restand(uow, event, data.scanner_id, learned=False)


_WORKING = Standing(CredentialState.ACTIVE)


async def purge_ended(uow: GateUnitOfWork, *, rotated_after: float, ended_after: float) -> int:
    """Forget credentials past any use (retention): rotated-out ones once their grace ended
    (plus `rotated_after`), replaced and revoked ones `ended_after` seconds after they ended.
    A forgotten credential answers 401 like one never issued; every replica's memory drops it
    at its next full load (GATE_RESYNC_SECONDS)."""
    async with uow:
        gone = await uow.credentials.purge_ended(
            rotated_after=rotated_after, ended_after=ended_after
        )
        await uow.commit()
    if gone:
        gate_log.info("ended credentials forgotten", extra={"credentials": gone})
    return gone


async def _learn_credential(
    uow: GateUnitOfWork, event: CloudEvent, scanner_id: str, org_id: str, fact: CredentialFact
) -> None:
    await uow.credentials.lock_scanner(scanner_id)
    learned = await uow.credentials.add(fact, scanner_id=scanner_id, org_id=org_id)
    if not learned:
        # The same credential announced twice under two event ids (a producer's retry): the
        # first announcement stands.
        gate_log.warning(
            "credential already known; announcement ignored",
            extra={"scanner_id": scanner_id, "credential_id": fact.credential_id},
        )
    await _restand(uow, event, scanner_id, learned=learned)


async def _restand(uow: GateUnitOfWork, event: CloudEvent, scanner_id: str, learned: bool) -> None:
    """Store the standings the scanner's facts now give, and have the replicas reload it if a
    credential was learned or a standing changed."""
    changed = changed_standings(await uow.credentials.facts(scanner_id))
    for digest, standing in changed.items():
        await uow.credentials.set_standing(digest, standing)
    if learned or changed:
        await uow.credentials.notify_replicas(scanner_id)
    gate_log.info(
        "gate event applied",
        extra={"event_type": event.type, "event_id": event.id, "scanner_id": scanner_id},
    )


# ------------------------------------------------------------------------------ uploads


def admit(gate: Gate, credential: str | None, now: float) -> Admission:
    """The credential's scanner, if the credential admits an upload at `now` (POSIX seconds).
    Refused: no credential; one that cannot be one or that the gate does not know; the gate
    not loaded yet; a known credential that no longer works (revoked, replaced, grace ended)."""
    if credential is None:
        raise NoCredential()
    if len(credential) > MAX_CREDENTIAL_LENGTH or not credential.isascii():
        raise UnknownCredential()
    if not gate.loaded:
        raise GateLoading()
    admission = gate.lookup(hashlib.sha256(credential.encode()).digest(), now)
    if admission is None:
        raise UnknownCredential()
    if not admission.admitted:
        raise refusal_for(admission)
    return admission


async def ingest_scan(
    publisher: ScanPublisher, admission: Admission, body: bytes, received: datetime
) -> tuple[str, str]:
    """Publish the upload `body` of an admitted scanner as `ScanIngested`; accepted only once
    Kafka acknowledged it. Refused: not a JSON object, an unusable scan_id; not acknowledged
    (ScanNotStored: the scanner retries with the same scan_id; a timed-out send may still land
    later, and consumers drop repeats by scan_id). Returns (scan_id, received_at)."""
    scan_id = scan_id_of(body)
    received_at = rfc3339(received)
    scanner_id = admission.scanner_id
    payload = scan_ingested_bytes(
        scan_id=scan_id,
        scanner_id=scanner_id,
        org_id=admission.org_id,
        credential_id=admission.credential_id,
        received_at=received_at,
        body=body,
    )
    try:
        await publisher.publish(scanner_id.encode(), payload)
    except Exception as exc:
        upload_log.warning(
            "upload not stored: Kafka did not acknowledge it",
            extra={"scanner_id": scanner_id, "scan_id": scan_id, "error": type(exc).__name__},
        )
        raise ScanNotStored() from exc
    return scan_id, received_at
