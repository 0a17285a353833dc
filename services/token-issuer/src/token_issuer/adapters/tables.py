"""The token-issuer's tables (created by migrations/versions/0001_initial.py), for typed reads.

Writes go through explicit SQL in `repository.py` (locks, upserts, RETURNING); these models
are read with `select()`. They live in their own metadata (`service_model_base`).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import ARRAY, Column, DateTime, LargeBinary, Text
from sqlmodel import Field

from scanner_auth_shared.db import service_model_base

if TYPE_CHECKING:  # mypy cannot use a base class returned by a function
    from sqlmodel import SQLModel as Base
else:
    Base = service_model_base("TokenIssuer")


def _time(nullable: bool = True) -> Column[datetime]:
    return Column(DateTime(timezone=True), nullable=nullable)


class ScannerRow(Base, table=True):
    __tablename__ = "scanners"

    scanner_id: str = Field(primary_key=True)
    org_id: str | None = None
    serial_number: str | None = None
    name: str = ""
    model: str = ""
    registered: bool = False
    removed_at: datetime | None = Field(default=None, sa_column=_time())
    authorised: bool = False
    authorised_at: datetime | None = Field(default=None, sa_column=_time())
    credential_id: str | None = None
    authorised_serial_number: str | None = None
    deauthorised_at: datetime | None = Field(default=None, sa_column=_time())
    updated_at: datetime = Field(sa_column=_time(False))

    @property
    def visible(self) -> bool:
        """Known to the directory and not removed: only such a scanner exists for users."""
        return self.registered and self.removed_at is None and self.org_id is not None


class UserRow(Base, table=True):
    __tablename__ = "users"

    user_id: str = Field(primary_key=True)
    org_id: str
    email: str
    display_name: str = ""
    updated_at: datetime = Field(sa_column=_time(False))


class GrantRow(Base, table=True):
    __tablename__ = "access_grants"

    scanner_id: str = Field(primary_key=True)
    user_id: str = Field(primary_key=True)
    granted_at: datetime = Field(sa_column=_time(False))


class PrincipalSeenRow(Base, table=True):
    __tablename__ = "principals_seen"

    user_id: str = Field(primary_key=True)
    org_id: str
    roles: list[str] = Field(default_factory=list, sa_column=Column(ARRAY(Text), nullable=False))
    email: str | None = None
    last_seen_at: datetime = Field(sa_column=_time(False))


class TokenRow(Base, table=True):
    __tablename__ = "tokens"

    token_id: str = Field(primary_key=True)
    seq: int
    scanner_id: str
    org_id: str
    code_ciphertext: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    code_digest: str
    status: str
    issued_at: datetime = Field(sa_column=_time(False))
    issued_by: str
    expires_at: datetime = Field(sa_column=_time(False))
    redeemed_at: datetime | None = Field(default=None, sa_column=_time())
    revoked_at: datetime | None = Field(default=None, sa_column=_time())
    revoked_by: str | None = None
    revoke_reason: str | None = None
    expired_at: datetime | None = Field(default=None, sa_column=_time())


class AuditRow(Base, table=True):
    __tablename__ = "audit_log"

    id: int = Field(primary_key=True)
    at: datetime = Field(sa_column=_time(False))
    actor_user_id: str
    actor_org_id: str | None = None
    action: str
    scanner_id: str
    token_id: str | None = None
    recipient_user_id: str | None = None
    notification_id: str | None = None
