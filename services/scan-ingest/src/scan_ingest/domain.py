"""scan-ingest's decisions, pure (no I/O).

- Which credentials of a scanner work, derived from the facts the public topic announced
  (`derive_standings`, `changed_standings`): a function of the set of facts, so the order in
  which the events arrive, and how often, does not matter; and a final standing (replaced,
  revoked) is never undone, so that purging old rows cannot reopen a credential.
- Whether a credential in the gate admits an upload now (`admits`), and the refusal when it
  does not (`refusal_for`).
- What an upload's body must be (`scan_id_of`): a JSON object; its scan id the client's, or a
  fresh one, or the upload is refused.
- The `ScanIngested` event of an accepted upload, built straight into bytes
  (`scan_ingested_bytes`): the uploaded document is embedded as the bytes the scanner sent
  (already validated), never re-serialised.
- The refusals (`Refusal` subclasses): the api answers each with its status.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum
from typing import Any, ClassVar, NamedTuple

import orjson

from scanner_auth_shared.api import Refusal
from scanner_auth_shared.events import ScanIngested

SOURCE = "scanner-auth/scan-ingest"
MAX_SCAN_ID_LENGTH = 200
# A credential is about 50 ASCII characters; anything far longer is not one (and is not hashed).
MAX_CREDENTIAL_LENGTH = 512
INVALID_SCAN_ID = f"scan_id must be a string of 1 to {MAX_SCAN_ID_LENGTH} characters"


# ------------------------------------------------------------------------------ standings


class CredentialState(IntEnum):
    """A credential's standing; a higher value is more final (never undone by a later fact)."""

    ACTIVE = 0
    ROTATING = 1  # replaced by rotation; works until its valid_until
    REPLACED = 2  # the scanner was authorised again with a newer credential
    REVOKED = 3  # named by a CredentialsRevoked (the scanner was deauthorised)

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


@dataclass(frozen=True, slots=True)
class ScannerFacts:
    """Everything known about one scanner's credentials, and their standings as stored now."""

    credentials: list[CredentialFact]
    standings: dict[bytes, Standing]
    # Credential ids a CredentialsRevoked named (or closed: see handlers.on_credentials_revoked)
    revoked: frozenset[str] = frozenset()


def derive_standings(
    facts: Iterable[CredentialFact], revoked: frozenset[str] = frozenset()
) -> dict[bytes, Standing]:
    """The standing of each of one scanner's credentials, from everything known about it.

    - revoked: its id was revoked (a `CredentialsRevoked` named it), whenever it was issued and
      whichever arrived first: no clock is compared (issue 18);
    - replaced: issued before the scanner's latest authorisation (a redemption replaces every
      earlier credential, rotated ones included);
    - a rotated credential whose predecessor was already revoked or replaced inherits that (it
      should not exist; fail closed);
    - rotating: a later rotation named it as its previous credential; it works until the
      earliest `previous_valid_until` announced for it;
    - active otherwise.
    """
    ordered = sorted(facts, key=lambda f: f.order)
    authorisations = [f.order for f in ordered if f.from_authorisation]
    latest_authorisation = max(authorisations) if authorisations else None
    grace = _grace_periods(ordered)
    by_id: dict[str, Standing] = {}
    standings: dict[bytes, Standing] = {}
    for fact in ordered:
        standing: Standing
        predecessor = (
            by_id.get(fact.previous_credential_id) if fact.previous_credential_id else None
        )
        if fact.credential_id in revoked:
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


def _grace_periods(facts: Iterable[CredentialFact]) -> dict[str, datetime]:
    """Credential id -> the earliest `previous_valid_until` a rotation announced for it."""
    grace: dict[str, datetime] = {}
    for fact in facts:
        if fact.previous_credential_id is not None and fact.previous_valid_until is not None:
            known = grace.get(fact.previous_credential_id)
            until = fact.previous_valid_until
            grace[fact.previous_credential_id] = until if known is None else min(known, until)
    return grace


def changed_standings(known: ScannerFacts) -> dict[bytes, Standing]:
    """The standings to store: those derived from the facts that differ from the stored ones.

    A stored final standing (replaced, revoked) is never lowered: no later fact can legitimately
    undo it, and the facts that made it so may have been purged since (`GATE_*_RETENTION`)."""
    derived = derive_standings(known.credentials, known.revoked)
    changed = {}
    for digest, standing in derived.items():
        stored = known.standings.get(digest)
        if stored == standing:
            continue
        if stored is not None and CredentialState.REPLACED <= stored.state >= standing.state:
            continue  # final, and not made more final
        changed[digest] = standing
    return changed


# ------------------------------------------------------------------------------ admission


class Admission(NamedTuple):
    """A credential the gate knows, decoded for one upload (a tuple: the cheapest object)."""

    scanner_id: str
    org_id: str
    credential_id: str
    state: int  # a CredentialState value
    admitted: bool


def admits(state: int, valid_until: float, now: float) -> bool:
    """Whether a credential in this state admits an upload at `now` (POSIX seconds)."""
    if state == CredentialState.ACTIVE:
        return True
    return state == CredentialState.ROTATING and now <= valid_until


# ------------------------------------------------------------------------------ refusals


class UploadRefused(Refusal):
    """An upload refused; each kind has one fixed message (`detail`), safe to show. Raised
    without arguments: creating one runs no Python code (the 401 flood is benchmarked)."""

    detail: ClassVar[str] = "the upload is refused"

    def __str__(self) -> str:
        return self.detail


class NoCredential(UploadRefused):
    detail = "a scanner credential is required: Authorization: Bearer <credential>"


class UnknownCredential(UploadRefused):
    """Malformed, or never issued by this system."""

    detail = "the credential is not valid"


class GateLoading(UploadRefused):
    """Before the gate's first full load: not a 401, which would tell a scanner it lost its
    authorisation."""

    detail = "the gate is still loading"


class CredentialRefused(UploadRefused):
    """A known credential that no longer works (which one, for the log: no secret)."""

    detail = "this credential does not work"

    def __init__(self, admission: Admission) -> None:
        super().__init__()
        self.admission = admission

    @property
    def state(self) -> CredentialState:
        return CredentialState(self.admission.state)


class CredentialRevoked(CredentialRefused):
    detail = "the scanner's authorisation was withdrawn"


class CredentialReplaced(CredentialRefused):
    detail = "this credential was replaced: the scanner was authorised again"


class GracePeriodEnded(CredentialRefused):
    detail = "this credential was rotated and its grace period has ended"


_REFUSALS: dict[int, type[CredentialRefused]] = {
    CredentialState.REVOKED: CredentialRevoked,
    CredentialState.REPLACED: CredentialReplaced,
    CredentialState.ROTATING: GracePeriodEnded,
}


def refusal_for(admission: Admission) -> CredentialRefused:
    """Why a known credential that does not admit the upload is refused."""
    return _REFUSALS.get(admission.state, CredentialRefused)(admission)


class BodyTooLarge(UploadRefused):
    detail = "the body is too large"  # the api says by how much: INGEST_MAX_BODY_BYTES


class InvalidScan(UploadRefused):
    """The body is not an acceptable scan document."""


class NotJson(InvalidScan):
    detail = "the body is not JSON"


class NotAnObject(InvalidScan):
    detail = "the body must be a JSON object"


class InvalidScanId(InvalidScan):
    detail = INVALID_SCAN_ID


class ScanNotStored(UploadRefused):
    """Kafka did not acknowledge the event: nothing is promised; the scanner retries."""

    detail = "the scan could not be stored; retry later with the same scan_id"


# ------------------------------------------------------------------------------ the upload


def scan_id_of(body: bytes) -> str:
    """The scan id of an upload whose body is `body`; refused unless the body is a JSON object
    (orjson: strict RFC 8259)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise NotJson() from None
    if not isinstance(document, dict):
        raise NotAnObject()
    return scan_id_for(document)


def scan_id_for(document: dict[str, Any]) -> str:
    """The upload's scan id: the client's `scan_id` when the upload carries one, a fresh uuid4
    when it carries none. One that is not a string of 1 to MAX_SCAN_ID_LENGTH characters (null,
    a number, "", too long) is refused (InvalidScanId), as the OpenAPI document declares,
    rather than silently renamed: a retry would no longer be recognised as one."""
    if "scan_id" not in document:
        return str(uuid.uuid4())
    candidate = document["scan_id"]
    if isinstance(candidate, str) and 0 < len(candidate) <= MAX_SCAN_ID_LENGTH:
        return candidate
    raise InvalidScanId()


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
