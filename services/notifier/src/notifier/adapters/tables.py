"""The notifier's tables: the one source of its schema. The migrations build exactly these
(tests/test_schema.py compares them); adapters/postgres.py is how they are read and written."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Column, DateTime, Index, Integer, Text, text
from sqlmodel import Field, SQLModel

from scanner_auth_shared.db import service_model_base

if TYPE_CHECKING:  # what the type checker needs to know of the base: it is a SQLModel
    NotifierModel = SQLModel
else:
    NotifierModel = service_model_base("Notifier")


def _text(nullable: bool = False, *, primary_key: bool = False) -> Column[str]:
    return Column(Text, nullable=nullable, primary_key=primary_key)


def _tz(nullable: bool = False) -> Column[datetime]:
    return Column(DateTime(timezone=True), nullable=nullable)


class Notification(NotifierModel, table=True):
    """One requested email. `sealed_code` is the code as received (sealed, never opened at
    rest); it is cleared once the notification is finished. `status`: pending, sending (claimed
    under a lease until `lease_until`), sent, failed, cancelled."""

    __tablename__ = "notifications"
    __table_args__ = (
        Index("notifications_due", "next_attempt_at", postgresql_where=text("status = 'pending'")),
        Index("notifications_leases", "lease_until", postgresql_where=text("status = 'sending'")),
        Index("notifications_token", "token_id"),
    )

    notification_id: str = Field(sa_column=_text(primary_key=True))
    token_id: str = Field(sa_column=_text())
    scanner_id: str = Field(sa_column=_text())
    org_id: str = Field(sa_column=_text())
    recipient_user_id: str = Field(sa_column=_text())
    recipient_email: str = Field(sa_column=_text())
    requested_by: str = Field(sa_column=_text())
    scanner_name: str = Field(sa_column=_text())
    serial_number: str = Field(sa_column=_text())
    sealed_code: str | None = Field(default=None, sa_column=_text(True))
    expires_at: datetime = Field(sa_column=_tz())
    status: str = Field(sa_column=_text())
    attempts: int = Field(default=0, sa_column=Column(Integer, nullable=False))
    next_attempt_at: datetime = Field(sa_column=_tz())
    claim_id: str | None = Field(default=None, sa_column=_text(True))
    lease_until: datetime | None = Field(default=None, sa_column=_tz(True))
    last_error: str | None = Field(default=None, sa_column=_text(True))
    smtp_message_id: str | None = Field(default=None, sa_column=_text(True))
    requested_at: datetime = Field(sa_column=_tz())
    sent_at: datetime | None = Field(default=None, sa_column=_tz(True))
    finished_at: datetime | None = Field(default=None, sa_column=_tz(True))


class TokenStateRow(NotifierModel, table=True):
    """What the notifier knows of a token's life: active, revoked, expired or redeemed."""

    __tablename__ = "token_states"

    token_id: str = Field(sa_column=_text(primary_key=True))
    scanner_id: str = Field(sa_column=_text())
    state: str = Field(sa_column=_text())
    updated_at: datetime = Field(sa_column=_tz())
