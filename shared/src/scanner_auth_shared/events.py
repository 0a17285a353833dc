"""Every event of the contract, in one CloudEvents 1.0 envelope, and the topics they travel on.

The models are the single source of truth for the public schemas: their field descriptions end
up in the AsyncAPI document. Schemas only grow by optional fields; a breaking change is a new
topic with a new version suffix.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

# ------------------------------------------------------------------------------------ topics

PUBLIC_TOPIC = "myscanner.scanner-auth.v1"
NOTIFICATIONS_TOPIC = "myscanner.scanner-auth.notifications.v1"
SCANS_TOPIC = "myscanner.scans.v1"
DIRECTORY_TOPIC = "myscanner.directory.v1"

ALL_TOPICS = (PUBLIC_TOPIC, NOTIFICATIONS_TOPIC, SCANS_TOPIC, DIRECTORY_TOPIC)


def dlq_topic(topic: str) -> str:
    """Where a consumer of `topic` parks a message it could not process."""
    return f"{topic}.dlq"


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    """An aware `moment` as every answer and event writes times: RFC 3339 in UTC with
    microseconds and `Z`, e.g. `2026-01-02T03:04:05.123456Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class PoisonMessage(Exception):
    """A message that will never be processable, however often it is retried."""


# ------------------------------------------------------------------------------------ envelope


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 document in structured JSON mode: the one envelope of every topic."""

    model_config = ConfigDict(extra="allow")

    specversion: Literal["1.0"] = Field("1.0", description="CloudEvents specification version.")
    id: str = Field(
        default_factory=lambda: str(uuid.uuid4()),
        min_length=1,
        max_length=200,
        description="Unique id of this event; consumers deduplicate on it.",
    )
    type: str = Field(min_length=1, max_length=200, description="The event name, e.g. TokenIssued.")
    source: str = Field(
        min_length=1, max_length=200, description="Producer, e.g. scanner-auth/token-issuer."
    )
    time: AwareDatetime = Field(default_factory=utcnow, description="When it happened (RFC 3339).")
    subject: str | None = Field(
        None, max_length=200, description="The scanner id (the user id for UserUpserted)."
    )
    datacontenttype: str = Field("application/json", description="Always application/json.")
    data: dict[str, Any] = Field(default_factory=dict, description="The event's own data.")

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_bytes(cls, raw: bytes) -> CloudEvent:
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise PoisonMessage(f"not a CloudEvents 1.0 JSON document: {_summary(exc)}") from exc


def _summary(exc: ValidationError) -> str:
    # Field locations and error kinds only: input values may hold anything, secrets included.
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['type']}" for e in exc.errors()
    )


class EventData(BaseModel):
    """The `data` of one event type. The class name is the CloudEvents `type`."""

    model_config = ConfigDict(extra="allow", frozen=True)

    event_type: ClassVar[str]
    topic: ClassVar[str]
    # Who may produce it: one of the four services, or "directory" (MyScanner's directory).
    # Consumers check it (signatures: scanner_auth_shared.signing).
    producer: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.event_type = cls.__name__


Time = AwareDatetime


# ------------------------------------------------------------------------------------ directory
# Consumed, not owned: MyScanner's directory publishes these.


class ScannerRegistered(EventData):
    """A scanner exists (or its details changed) in the MyScanner directory."""

    topic: ClassVar[str] = DIRECTORY_TOPIC
    producer: ClassVar[str] = "directory"
    scanner_id: str = Field(min_length=1, max_length=200, description="Scanner id.")
    org_id: str = Field(min_length=1, max_length=200, description="Owning organisation.")
    serial_number: str = Field(min_length=1, max_length=64, description="Device serial number.")
    name: str = Field("", max_length=200, description="Display name.")
    model: str = Field("", max_length=50, description="LVS or MPS.")


class ScannerRemoved(EventData):
    """The scanner was removed from the directory."""

    topic: ClassVar[str] = DIRECTORY_TOPIC
    producer: ClassVar[str] = "directory"
    scanner_id: str = Field(min_length=1, max_length=200, description="Scanner id.")


class UserUpserted(EventData):
    """A user exists (or changed) in the directory."""

    topic: ClassVar[str] = DIRECTORY_TOPIC
    producer: ClassVar[str] = "directory"
    user_id: str = Field(min_length=1, max_length=200, description="User id (JWT sub).")
    org_id: str = Field(min_length=1, max_length=200, description="The user's organisation.")
    email: str = Field(min_length=3, max_length=320, description="Email address.")
    display_name: str = Field("", max_length=200, description="Name to show.")


class ScannerAccessGranted(EventData):
    """The user may view the scanner."""

    topic: ClassVar[str] = DIRECTORY_TOPIC
    producer: ClassVar[str] = "directory"
    scanner_id: str = Field(min_length=1, max_length=200, description="Scanner id.")
    user_id: str = Field(min_length=1, max_length=200, description="User id.")


class ScannerAccessRevoked(EventData):
    """The user may no longer view the scanner."""

    topic: ClassVar[str] = DIRECTORY_TOPIC
    producer: ClassVar[str] = "directory"
    scanner_id: str = Field(min_length=1, max_length=200, description="Scanner id.")
    user_id: str = Field(min_length=1, max_length=200, description="User id.")


# ------------------------------------------------------------------------------------ public


class TokenIssued(EventData):
    """An authorisation code was generated for a scanner. Carries its digest, never the code."""

    topic: ClassVar[str] = PUBLIC_TOPIC
    producer: ClassVar[str] = "token-issuer"
    token_id: str = Field(description="Token id.")
    scanner_id: str = Field(description="Scanner id.")
    org_id: str = Field(description="The scanner's organisation.")
    issued_by: str = Field(description="User id of the admin or support user who generated it.")
    issued_at: Time = Field(description="When it was generated.")
    expires_at: Time = Field(description="When it stops being redeemable.")
    code_digest: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="Hex HMAC-SHA256 of the normalised code under TOKEN_PEPPER.",
    )


class TokenRevoked(EventData):
    """An active code was withdrawn: replaced by a newer one, or revoked by a manager."""

    topic: ClassVar[str] = PUBLIC_TOPIC
    producer: ClassVar[str] = "token-issuer"
    token_id: str = Field(description="Token id.")
    scanner_id: str = Field(description="Scanner id.")
    org_id: str = Field(description="The scanner's organisation.")
    revoked_by: str = Field(description="User id, or `system`.")
    reason: Literal["superseded", "revoked"] = Field(description="superseded or revoked.")
    revoked_at: Time = Field(description="When.")


class TokenExpired(EventData):
    """An unused code reached its expiry time."""

    topic: ClassVar[str] = PUBLIC_TOPIC
    producer: ClassVar[str] = "token-issuer"
    token_id: str = Field(description="Token id.")
    scanner_id: str = Field(description="Scanner id.")
    org_id: str = Field(description="The scanner's organisation.")
    expired_at: Time = Field(description="The token's expiry time.")


class ScannerAuthorised(EventData):
    """A scanner redeemed a code and received a credential; scan-ingest accepts it from now on."""

    topic: ClassVar[str] = PUBLIC_TOPIC
    producer: ClassVar[str] = "redeemer"
    scanner_id: str = Field(description="Scanner id.")
    org_id: str = Field(description="The scanner's organisation.")
    token_id: str = Field(description="The redeemed token.")
    serial_number: str = Field(description="Serial number the scanner presented.")
    credential_id: str = Field(description="Id of the new credential.")
    credential_digest: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the credential."
    )
    authorised_at: Time = Field(description="When.")


class ScannerDeauthorised(EventData):
    """A manager withdrew a scanner's authorisation: its credentials stop working."""

    topic: ClassVar[str] = PUBLIC_TOPIC
    producer: ClassVar[str] = "token-issuer"
    scanner_id: str = Field(description="Scanner id.")
    org_id: str = Field(description="The scanner's organisation.")
    credential_id: str | None = Field(
        None, description="The credential known to be current, if any."
    )
    deauthorised_by: str = Field(
        description="User id, or `directory` when the scanner was removed."
    )
    reason: str = Field(description="Why, e.g. deauthorised or scanner_removed.")
    deauthorised_at: Time = Field(
        description="When. Every credential of the scanner issued up to then stops working."
    )


class CredentialRotated(EventData):
    """A scanner exchanged its credential for a new one; the old one works until a deadline."""

    topic: ClassVar[str] = PUBLIC_TOPIC
    producer: ClassVar[str] = "redeemer"
    scanner_id: str = Field(description="Scanner id.")
    org_id: str = Field(description="The scanner's organisation.")
    credential_id: str = Field(description="Id of the new credential.")
    credential_digest: str = Field(
        pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the new credential."
    )
    previous_credential_id: str = Field(description="Id of the credential it replaces.")
    previous_valid_until: Time = Field(description="The old credential stops working then.")
    rotated_at: Time = Field(description="When.")


class CredentialsRevoked(EventData):
    """The redeemer revoked a scanner's credentials, by id: they stop working everywhere."""

    # Decided by the redeemer's own order, not by any clock: it names every credential of the
    # scanner it had issued, still live, when it applied the cause (a ScannerDeauthorised).

    topic: ClassVar[str] = PUBLIC_TOPIC
    producer: ClassVar[str] = "redeemer"
    scanner_id: str = Field(description="Scanner id.")
    org_id: str = Field(description="The scanner's organisation.")
    credential_ids: list[str] = Field(
        max_length=10_000,
        description="Ids of the credentials revoked (possibly none: the scanner had no live "
        "credential). Each stops working at once, whenever it was issued.",
    )
    reason: str = Field(
        description="Why: the cause's reason, e.g. deauthorised or scanner_removed."
    )
    revoked_at: Time = Field(description="When the redeemer revoked them (its own clock).")
    cause_event_id: str | None = Field(
        None, description="Id of the event that caused it (the ScannerDeauthorised)."
    )


class AuthorisationRejected(EventData):
    """A redemption attempt failed. Never carries the attempted code."""

    topic: ClassVar[str] = PUBLIC_TOPIC
    producer: ClassVar[str] = "redeemer"
    serial_number: str = Field(max_length=64, description="As presented, at most 64 characters.")
    reason: Literal[
        "invalid_code", "expired", "already_used", "revoked", "serial_mismatch", "rate_limited"
    ] = Field(description="The real reason; the scanner only ever sees a uniform answer.")
    client_ip: str = Field(description="The client's address.")
    rejected_at: Time = Field(description="When (the last of them, when `attempts` > 1).")
    attempts: int = Field(
        1,
        ge=1,
        description="How many attempts this event stands for. Attempts refused while the serial "
        "number or address is locked out are reported together: the first at once, the rest as "
        "one event per serial number and address per report period (the redeemer's "
        "REJECTION_REPORT_SECONDS, 60 s by default). Absent in older events: 1.",
    )


# ------------------------------------------------------------------------------------ internal


class TokenEmailRequested(EventData):
    """Someone asked for the code to be emailed. Internal: carries the code sealed."""

    topic: ClassVar[str] = NOTIFICATIONS_TOPIC
    producer: ClassVar[str] = "token-issuer"
    notification_id: str = Field(description="Id of this email; one email per id at most.")
    token_id: str = Field(description="Token id.")
    scanner_id: str = Field(description="Scanner id.")
    org_id: str = Field(description="The scanner's organisation.")
    recipient_user_id: str = Field(description="User id of the recipient.")
    recipient_email: str = Field(description="Where to send it.")
    requested_by: str = Field(description="User id of the requester.")
    expires_at: Time = Field(description="The code's expiry time.")
    scanner_name: str = Field(description="Scanner display name.")
    serial_number: str = Field(description="Scanner serial number.")
    sealed_code: str = Field(
        description="The code under AES-256-GCM with SEALING_KEY, base64url(nonce || ciphertext)."
    )


class NotificationSent(EventData):
    """The SMTP relay accepted the email."""

    topic: ClassVar[str] = NOTIFICATIONS_TOPIC
    producer: ClassVar[str] = "notifier"
    notification_id: str = Field(description="Notification id.")
    sent_at: Time = Field(description="When the relay answered 250.")
    smtp_message_id: str = Field(description="The Message-ID header of the email.")


class NotificationFailed(EventData):
    """The email was not sent and will not be."""

    topic: ClassVar[str] = NOTIFICATIONS_TOPIC
    producer: ClassVar[str] = "notifier"
    notification_id: str = Field(description="Notification id.")
    permanent: bool = Field(description="True for a permanent refusal (5xx) or a dead code.")
    attempts: int = Field(description="Delivery attempts made.")
    error: str = Field(description="What went wrong, without the code.")


class ScanIngested(EventData):
    """An authorised scanner uploaded scan data."""

    topic: ClassVar[str] = SCANS_TOPIC
    producer: ClassVar[str] = "scan-ingest"
    scan_id: str = Field(description="The client's scan id when the upload carried one.")
    scanner_id: str = Field(description="Scanner id.")
    org_id: str = Field(description="The scanner's organisation.")
    credential_id: str = Field(description="The credential that authenticated the upload.")
    received_at: Time = Field(description="When the gateway received it.")
    size_bytes: int = Field(description="Size of the uploaded body in bytes.")
    scan: dict[str, Any] = Field(description="The uploaded JSON document.")


EVENT_TYPES: dict[str, type[EventData]] = {
    cls.event_type: cls
    for cls in (
        ScannerRegistered,
        ScannerRemoved,
        UserUpserted,
        ScannerAccessGranted,
        ScannerAccessRevoked,
        TokenIssued,
        TokenRevoked,
        TokenExpired,
        ScannerAuthorised,
        ScannerDeauthorised,
        CredentialRotated,
        CredentialsRevoked,
        AuthorisationRejected,
        TokenEmailRequested,
        NotificationSent,
        NotificationFailed,
        ScanIngested,
    )
}


def new_event(data: EventData, *, source: str, subject: str | None = None) -> CloudEvent:
    """Wrap `data` in a fresh envelope. `subject` defaults to the data's scanner id."""
    if subject is None:
        subject = getattr(data, "scanner_id", None) or getattr(data, "user_id", None)
    return CloudEvent(
        type=data.event_type,
        source=source,
        subject=subject,
        data=data.model_dump(mode="json"),
    )


def parse_data(event: CloudEvent) -> EventData | None:
    """The typed data of `event`; None for a type this system does not know (schemas grow).

    Raises PoisonMessage when a known type carries data that does not fit its schema.
    """
    model = EVENT_TYPES.get(event.type)
    if model is None:
        return None
    try:
        return model.model_validate(event.data)
    except ValidationError as exc:
        raise PoisonMessage(f"{event.type} data does not fit its schema: {_summary(exc)}") from exc
