"""The tables every service has (created by `outbox.MESSAGING_DDL` in each first migration), as
SQLModel tables: the outbox and the processed-event table. Their own metadata; a service's
schema test compares them too (`testing.schema`)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, Column, DateTime, Index, LargeBinary, Text
from sqlmodel import Field

from .db import service_model_base

if TYPE_CHECKING:  # mypy cannot use a base class returned by a function
    from sqlmodel import SQLModel as Base
else:
    Base = service_model_base("Messaging")


class OutboxRow(Base, table=True):
    __tablename__ = "outbox"

    id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=True))
    event_id: str = Field(sa_column=Column(Text, nullable=False))
    event_type: str = Field(sa_column=Column(Text, nullable=False))
    topic: str = Field(sa_column=Column(Text, nullable=False))
    key: str | None = Field(default=None, sa_column=Column(Text))
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class ProcessedEventRow(Base, table=True):
    __tablename__ = "processed_events"
    # Purging by age (outbox.purge_processed_events); migration 0002 of every service.
    __table_args__ = (Index("processed_events_age", "processed_at"),)

    consumer: str = Field(sa_column=Column(Text, primary_key=True))
    event_id: str = Field(sa_column=Column(Text, primary_key=True))
    processed_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


MESSAGING_METADATA = Base.metadata
MESSAGING_TABLES = ("outbox", "processed_events")
