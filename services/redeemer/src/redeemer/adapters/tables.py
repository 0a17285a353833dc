"""The redeemer's tables (own metadata). The schema itself is created by the migrations; these
models document it and serve simple reads."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Column, DateTime
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
    token_id: str = Field(primary_key=True)
    scanner_id: str
    org_id: str
    code_digest: str | None = None  # None while only a TokenRevoked/TokenExpired has arrived
    issued_at: datetime | None = Field(default=None, sa_column=_tz())
    expires_at: datetime | None = Field(default=None, sa_column=_tz())
    status: str  # active | redeemed | expired | revoked
    redeemed_at: datetime | None = Field(default=None, sa_column=_tz())
    ended_at: datetime | None = Field(default=None, sa_column=_tz())
    updated_at: datetime = Field(sa_column=_tz(nullable=False))


class Scanner(Base, table=True):
    """The redeemer's own view of the directory's scanners."""

    __tablename__ = "scanners"
    scanner_id: str = Field(primary_key=True)
    org_id: str | None = None
    serial_number: str | None = None
    removed: bool = False
    updated_at: datetime = Field(sa_column=_tz(nullable=False))


class ScannerCredentialState(Base, table=True):
    """One row per scanner with credentials: locked first by every change of its credentials."""

    __tablename__ = "scanner_credential_state"
    scanner_id: str = Field(primary_key=True)
    deauthorised_at: datetime | None = Field(default=None, sa_column=_tz())
    updated_at: datetime = Field(sa_column=_tz(nullable=False))


class Credential(Base, table=True):
    """A scanner credential: only its SHA-256 digest is stored."""

    __tablename__ = "credentials"
    credential_id: str = Field(primary_key=True)
    scanner_id: str
    org_id: str
    credential_digest: str = Field(unique=True)
    status: str  # active | rotating | replaced | revoked
    issued_at: datetime = Field(sa_column=_tz(nullable=False))
    valid_until: datetime | None = Field(default=None, sa_column=_tz())
    token_id: str | None = None
    previous_credential_id: str | None = None
    ended_at: datetime | None = Field(default=None, sa_column=_tz())


class SerialThrottleRow(Base, table=True):
    __tablename__ = "serial_throttle"
    serial_key: str = Field(primary_key=True)
    failures: int
    locked_until: datetime | None = Field(default=None, sa_column=_tz())
    updated_at: datetime = Field(sa_column=_tz(nullable=False))


class AddressThrottleRow(Base, table=True):
    __tablename__ = "address_throttle"
    address: str = Field(primary_key=True)
    failures: list[datetime] = Field(
        sa_column=Column(ARRAY(DateTime(timezone=True)), nullable=False)
    )
    locked_until: datetime | None = Field(default=None, sa_column=_tz())
    updated_at: datetime = Field(sa_column=_tz(nullable=False))
