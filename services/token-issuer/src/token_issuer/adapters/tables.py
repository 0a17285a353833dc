"""The token-issuer's tables: the one source of its schema. The migrations build exactly these
(tests/test_schema.py compares them, columns, types, nullability and indexes); the repositories
(postgres.py) reach them with SQL, never through these classes. Their own metadata
(`service_model_base`); the outbox and processed-event tables are the shared library's.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    LargeBinary,
    Text,
    UniqueConstraint,
    text,
)
from sqlmodel import Field

from scanner_auth_shared.db import service_model_base

if TYPE_CHECKING:  # mypy cannot use a base class returned by a function
    from sqlmodel import SQLModel as Base
else:
    Base = service_model_base("TokenIssuer")


def _text(*, nullable: bool = True, primary_key: bool = False, default: str | None = None) -> Any:
    return Field(
        default=default,
        sa_column=Column(
            Text,
            nullable=nullable and not primary_key,
            primary_key=primary_key,
            server_default=default if default is None else text(f"'{default}'"),
        ),
    )


def _time(*, nullable: bool = True, now: bool = False) -> Any:
    return Field(
        default=None,
        sa_column=Column(
            DateTime(timezone=True),
            nullable=nullable,
            server_default=text("now()") if now else None,
        ),
    )


def _flag() -> Any:
    return Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=text("false"))
    )


class ScannerRow(Base, table=True):
    """The directory's scanner and our view of its authorisation. Locked (FOR UPDATE) by every
    transaction that writes events for the scanner."""

    __tablename__ = "scanners"
    __table_args__ = (
        Index("scanners_org", "org_id", postgresql_where=text("registered AND removed_at IS NULL")),
    )

    scanner_id: str = _text(primary_key=True)
    org_id: str | None = _text()
    serial_number: str | None = _text()
    name: str = _text(nullable=False, default="")
    model: str = _text(nullable=False, default="")
    registered: bool = _flag()
    removed_at: datetime | None = _time()
    authorised: bool = _flag()
    authorised_at: datetime | None = _time()
    credential_id: str | None = _text()
    authorised_serial_number: str | None = _text()
    deauthorised_at: datetime | None = _time()
    updated_at: datetime = _time(nullable=False, now=True)


class UserRow(Base, table=True):
    __tablename__ = "users"

    user_id: str = _text(primary_key=True)
    org_id: str = _text(nullable=False)
    email: str = _text(nullable=False)
    display_name: str = _text(nullable=False, default="")
    updated_at: datetime = _time(nullable=False, now=True)


class GrantRow(Base, table=True):
    """No foreign keys: a grant may arrive before its scanner or its user."""

    __tablename__ = "access_grants"
    __table_args__ = (Index("access_grants_user", "user_id"),)

    scanner_id: str = _text(primary_key=True)
    user_id: str = _text(primary_key=True)
    granted_at: datetime = _time(nullable=False, now=True)


class PrincipalSeenRow(Base, table=True):
    __tablename__ = "principals_seen"
    __table_args__ = (Index("principals_seen_org", "org_id"),)

    user_id: str = _text(primary_key=True)
    org_id: str = _text(nullable=False)
    roles: list[str] = Field(
        default_factory=list,
        sa_column=Column(ARRAY(Text), nullable=False, server_default=text("'{}'")),
    )
    email: str | None = _text()
    last_seen_at: datetime = _time(nullable=False, now=True)


class TokenRow(Base, table=True):
    """The code only encrypted (AES-256-GCM bound to the token id, erased once the token is no
    longer active) and as its HMAC digest. At most one active token per scanner."""

    __tablename__ = "tokens"
    __table_args__ = (
        UniqueConstraint("seq", name="tokens_seq_key"),
        Index(
            "tokens_one_active",
            "scanner_id",
            unique=True,
            postgresql_where=text("status = 'active'"),
        ),
        Index("tokens_due", "expires_at", postgresql_where=text("status = 'active'")),
        Index("tokens_latest", "scanner_id", text("seq DESC")),
    )

    token_id: str = _text(primary_key=True)
    seq: int = Field(sa_column=Column(BigInteger, nullable=False, autoincrement=True))
    scanner_id: str = _text(nullable=False)
    org_id: str = _text(nullable=False)
    code_ciphertext: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    code_digest: str = _text(nullable=False)
    status: str = _text(nullable=False)  # CHECK: active | redeemed | expired | revoked
    issued_at: datetime = _time(nullable=False)
    issued_by: str = _text(nullable=False)
    expires_at: datetime = _time(nullable=False)
    redeemed_at: datetime | None = _time()
    revoked_at: datetime | None = _time()
    revoked_by: str | None = _text()
    revoke_reason: str | None = _text()
    expired_at: datetime | None = _time()


class AuditRow(Base, table=True):
    __tablename__ = "audit_log"
    __table_args__ = (Index("audit_log_scanner", "scanner_id", "at"),)

    id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    at: datetime = _time(nullable=False, now=True)
    actor_user_id: str = _text(nullable=False)
    actor_org_id: str | None = _text()
    action: str = _text(nullable=False)  # CHECK: generated | viewed_code | emailed | …
    scanner_id: str = _text(nullable=False)
    token_id: str | None = _text()
    recipient_user_id: str | None = _text()
    notification_id: str | None = _text()


class EmailRequestRow(Base, table=True):
    """The code emails requested in the last hour (older ones are purged), counted against the
    email quotas: per code (token) and per recipient address (lower-cased)."""

    __tablename__ = "email_requests"
    __table_args__ = (
        Index("email_requests_token", "token_id", "requested_at"),
        Index("email_requests_recipient", "recipient", "requested_at"),
        Index("email_requests_age", "requested_at"),
    )

    notification_id: str = _text(primary_key=True)
    token_id: str = _text(nullable=False)
    recipient: str = _text(nullable=False)
    requested_at: datetime = _time(nullable=False)
