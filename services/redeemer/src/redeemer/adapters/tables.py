"""The redeemer's tables (its own metadata): the one source of its schema. The migrations build
it (tests/test_schema.py checks that they build exactly this, indexes included); the
repositories (`postgres.py`) read and write it with SQL."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Column, DateTime, Index, Text, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlmodel import Field, SQLModel

from scanner_auth_shared.db import service_model_base

if TYPE_CHECKING:  # what the type checker needs to know of the base: it is a SQLModel
    Base = SQLModel
else:
    Base = service_model_base("Redeemer")


def _tz(nullable: bool = True) -> Column[datetime]:
    return Column(DateTime(timezone=True), nullable=nullable)


class Token(Base, table=True):
    """The redeemer's own view of a token, fed by TokenIssued / TokenRevoked / TokenExpired."""

    __tablename__ = "tokens"
    __table_args__ = (
        Index(
            "tokens_code_digest", "code_digest", postgresql_where=text("code_digest IS NOT NULL")
        ),
    )
    token_id: str = Field(sa_type=Text, primary_key=True)
    scanner_id: str = Field(sa_type=Text)
    org_id: str = Field(sa_type=Text)
    # None while only a TokenRevoked/TokenExpired has arrived
    code_digest: str | None = Field(default=None, sa_type=Text)
    issued_at: datetime | None = Field(default=None, sa_column=_tz())
    expires_at: datetime | None = Field(default=None, sa_column=_tz())
    status: str = Field(sa_type=Text)  # active | redeemed | expired | revoked
    redeemed_at: datetime | None = Field(default=None, sa_column=_tz())
    ended_at: datetime | None = Field(default=None, sa_column=_tz())
    updated_at: datetime = Field(sa_column=_tz(nullable=False))


class Scanner(Base, table=True):
    """The redeemer's own view of the directory's scanners."""

    __tablename__ = "scanners"
    scanner_id: str = Field(sa_type=Text, primary_key=True)
    org_id: str | None = Field(default=None, sa_type=Text)
    serial_number: str | None = Field(default=None, sa_type=Text)
    removed: bool = False
    updated_at: datetime = Field(sa_column=_tz(nullable=False))


class ScannerCredentialState(Base, table=True):
    """One row per scanner with credentials: locked first by every change of its credentials."""

    __tablename__ = "scanner_credential_state"
    scanner_id: str = Field(sa_type=Text, primary_key=True)
    # No longer written (issue 18: a deauthorisation is applied in this service's order, not
    # compared by time); kept so that the schema only grows.
    deauthorised_at: datetime | None = Field(default=None, sa_column=_tz())
    updated_at: datetime = Field(sa_column=_tz(nullable=False))


class Credential(Base, table=True):
    """A scanner credential: only its SHA-256 digest is stored."""

    __tablename__ = "credentials"
    __table_args__ = (
        Index(
            "credentials_live_by_scanner",
            "scanner_id",
            postgresql_where=text("status IN ('active', 'rotating')"),
        ),
        # The rotation limit counts a scanner's recent rotations (ROTATION_LIMIT_PER_HOUR).
        Index(
            "credentials_rotations_by_scanner",
            "scanner_id",
            "issued_at",
            postgresql_where=text("previous_credential_id IS NOT NULL"),
        ),
    )
    credential_id: str = Field(sa_type=Text, primary_key=True)
    scanner_id: str = Field(sa_type=Text)
    org_id: str = Field(sa_type=Text)
    credential_digest: str = Field(sa_type=Text, unique=True)
    status: str = Field(sa_type=Text)  # active | rotating | replaced | revoked
    issued_at: datetime = Field(sa_column=_tz(nullable=False))
    valid_until: datetime | None = Field(default=None, sa_column=_tz())
    token_id: str | None = Field(default=None, sa_type=Text)
    previous_credential_id: str | None = Field(default=None, sa_type=Text)
    ended_at: datetime | None = Field(default=None, sa_column=_tz())


class SerialThrottleRow(Base, table=True):
    __tablename__ = "serial_throttle"
    serial_key: str = Field(sa_type=Text, primary_key=True)
    failures: int
    locked_until: datetime | None = Field(default=None, sa_column=_tz())
    updated_at: datetime = Field(sa_column=_tz(nullable=False))


class AddressThrottleRow(Base, table=True):
    __tablename__ = "address_throttle"
    address: str = Field(sa_type=Text, primary_key=True)
    failures: list[datetime] = Field(
        sa_column=Column(ARRAY(DateTime(timezone=True)), nullable=False)
    )
    locked_until: datetime | None = Field(default=None, sa_column=_tz())
    updated_at: datetime = Field(sa_column=_tz(nullable=False))
