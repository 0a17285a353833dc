"""scan-ingest's decisions, pure (no I/O).

- Which credentials of a scanner work, derived from the facts the public topic announced
  (`derive_standings`): a function of the set of facts, so the order in which the events
  arrive, and how often, does not matter.
- Whether a credential in the gate admits an upload now (`admits`).
- The scan id of an upload (`scan_id_for`): the client's, a fresh one, or none (refused).
- The `ScanIngested` event of an accepted upload, built straight into bytes
  (`scan_ingested_bytes`): the uploaded document is embedded as the bytes the scanner sent
  (already validated), never re-serialised.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any

import orjson

from scanner_auth_shared.events import ScanIngested

SOURCE = "scanner-auth/scan-ingest"
MAX_SCAN_ID_LENGTH = 200
INVALID_SCAN_ID = f"scan_id must be a string of 1 to {MAX_SCAN_ID_LENGTH} characters"


class CredentialState(IntEnum):
    """A credential's standing; a higher value is more final (never undone by a later fact)."""

    ACTIVE = 0
    ROTATING = 1  # replaced by rotation; works until its valid_until
    REPLACED = 2  # the scanner was authorised again with a newer credential
    REVOKED = 3  # the scanner was deauthorised after this credential was issued

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> CredentialState:
        return cls[label.upper()]


@dataclass(frozen=True, slots=True)
class CredentialFact:
    """One credential as the public topic announced it (ScannerAuthorised or CredentialRotated)."""

    digest: bytes
    credential_id: str
    issued_at: datetime
    previous_credential_id: str | None = None  # set when it came from a rotation
    previous_valid_until: datetime | None = None

    @property
    def from_authorisation(self) -> bool:
        return self.previous_credential_id is None

    @property
    def order(self) -> tuple[datetime, str]:
        # The credential id breaks ties between two credentials issued in the same microsecond.
        return (self.issued_at, self.credential_id)


@dataclass(frozen=True, slots=True)
class Standing:
    state: CredentialState
    valid_until: datetime | None = None


def derive_standings(
    facts: Iterable[CredentialFact], deauthorised_at: datetime | None
) -> dict[bytes, Standing]:
    """The standing of each of one scanner's credentials, from everything known about it.

    - revoked: issued at or before the scanner's latest deauthorisation (fail closed: a
      deauthorisation also covers a credential whose announcement arrives after it);
    - replaced: issued before the scanner's latest authorisation (a redemption replaces every
      earlier credential, rotated ones included);
    - a rotated credential whose predecessor was already revoked or replaced inherits that
      (it should not exist; fail closed);
    - rotating: a later rotation named it as its previous credential; it works until the
      earliest `previous_valid_until` announced for it;
    - active otherwise.
    """
    ordered = sorted(facts, key=lambda f: f.order)
    authorisations = [f.order for f in ordered if f.from_authorisation]
    latest_authorisation = max(authorisations) if authorisations else None
    grace: dict[str, datetime] = {}
    for fact in ordered:
        if fact.previous_credential_id is not None and fact.previous_valid_until is not None:
            known = grace.get(fact.previous_credential_id)
            until = fact.previous_valid_until
            grace[fact.previous_credential_id] = until if known is None else min(known, until)

    by_id: dict[str, Standing] = {}
    standings: dict[bytes, Standing] = {}
    for fact in ordered:
        standing: Standing
        predecessor = (
            by_id.get(fact.previous_credential_id) if fact.previous_credential_id else None
        )
        if deauthorised_at is not None and fact.issued_at <= deauthorised_at:
            standing = Standing(CredentialState.REVOKED)
        elif latest_authorisation is not None and fact.order < latest_authorisation:
            standing = Standing(CredentialState.REPLACED)
        elif predecessor is not None and predecessor.state >= CredentialState.REPLACED:
            standing = Standing(predecessor.state)
        elif fact.credential_id in grace:
            standing = Standing(CredentialState.ROTATING, grace[fact.credential_id])
        else:
            standing = Standing(CredentialState.ACTIVE)
        by_id[fact.credential_id] = standing
        standings[fact.digest] = standing
    return standings


def admits(state: int, valid_until: float, now: float) -> bool:
    """Whether a credential in this state admits an upload at `now` (POSIX seconds)."""
    if state == CredentialState.ACTIVE:
        return True
    return state == CredentialState.ROTATING and now <= valid_until


def scan_id_for(document: dict[str, Any]) -> str | None:
    """The upload's scan id: the client's `scan_id` when the upload carries one, a fresh uuid4
    when it carries none; None when it carries one that is not a string of 1 to
    MAX_SCAN_ID_LENGTH characters (null, a number, "", too long): the upload is refused with
    422 (INVALID_SCAN_ID), as the OpenAPI document declares, rather than silently renamed."""
    if "scan_id" not in document:
        return str(uuid.uuid4())
    candidate = document["scan_id"]
    if isinstance(candidate, str) and 0 < len(candidate) <= MAX_SCAN_ID_LENGTH:
        return candidate
    return None


def scan_ingested_bytes(
    *,
    scan_id: str,
    scanner_id: str,
    org_id: str,
    credential_id: str,
    received_at: str,
    body: bytes,
) -> bytes:
    """The CloudEvents document of `ScanIngested`, `body` (a validated JSON object) embedded as is.

    Same shape as `new_event(ScanIngested(...), source=SOURCE).to_bytes()`, without walking the
    (up to INGEST_MAX_BODY_BYTES) document three times through pydantic.
    """
    return orjson.dumps(
        {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "type": ScanIngested.event_type,
            "source": SOURCE,
            "time": received_at,
            "subject": scanner_id,
            "datacontenttype": "application/json",
            "data": {
                "scan_id": scan_id,
                "scanner_id": scanner_id,
                "org_id": org_id,
                "credential_id": credential_id,
                "received_at": received_at,
                "size_bytes": len(body),
                "scan": orjson.Fragment(body),
            },
        }
    )


def rfc3339(moment: datetime) -> str:
    """`moment` (aware, UTC) as the events write times: `2026-01-02T03:04:05.123456Z`."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
