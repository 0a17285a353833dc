"""The notifier's tables (created by migrations/versions/0001_initial.py)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Column, DateTime
from sqlmodel import Field, SQLModel

from scanner_auth_shared.db import service_model_base

if TYPE_CHECKING:  # what the type checker needs to know of the base: it is a SQLModel
    NotifierModel = SQLModel
else:
    NotifierModel = service_model_base("Notifier")


def _tz(nullable: bool = False) -> Column[datetime]:
    return Column(DateTime(timezone=True), nullable=nullable)


class Notification(NotifierModel, table=True):
    """One requested email. `sealed_code` is the code as received (sealed, never opened at
    rest); it is cleared once the notification is finished."""

    __tablename__ = "notifications"

    notification_id: str = Field(primary_key=True)
    token_id: str
    scanner_id: str
    org_id: str
    recipient_user_id: str
    recipient_email: str
    requested_by: str
    scanner_name: str
    serial_number: str
    sealed_code: str | None = None
    expires_at: datetime = Field(sa_column=_tz())
    status: str
    attempts: int = 0
    next_attempt_at: datetime = Field(sa_column=_tz())
    claim_id: str | None = None
    lease_until: datetime | None = Field(default=None, sa_column=_tz(True))
    last_error: str | None = None
    smtp_message_id: str | None = None
    requested_at: datetime = Field(sa_column=_tz())
    sent_at: datetime | None = Field(default=None, sa_column=_tz(True))
    finished_at: datetime | None = Field(default=None, sa_column=_tz(True))


class TokenStateRow(NotifierModel, table=True):
    """What the notifier knows of a token's life: active, revoked, expired or redeemed."""

    __tablename__ = "token_states"

    token_id: str = Field(primary_key=True)
    scanner_id: str
    state: str
    updated_at: datetime = Field(sa_column=_tz())
