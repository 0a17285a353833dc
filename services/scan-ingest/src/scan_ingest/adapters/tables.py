"""scan-ingest's tables: the one source of its schema. Nothing reads or writes through these
models at run time (adapters/postgres.py runs SQL on asyncpg); `tests/test_schema.py` checks
that the migrations build exactly these tables."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import CheckConstraint, Column, DateTime, Index, LargeBinary, Text, text
from sqlmodel import Field

from scanner_auth_shared.db import service_model_base

if TYPE_CHECKING:  # mypy cannot use a base class returned by a function
    from sqlmodel import SQLModel as Model
else:
    Model = service_model_base("ScanIngest")


class GateCredential(Model, table=True):
    """A credential announced on the public topic (the facts), and its derived standing."""

    __tablename__ = "gate_credentials"
    __table_args__ = (
        Index("gate_credentials_scanner", "scanner_id"),
        CheckConstraint("octet_length(credential_digest) = 32"),
        CheckConstraint("state IN ('active', 'rotating', 'replaced', 'revoked')"),
    )

    credential_digest: bytes = Field(sa_column=Column(LargeBinary, primary_key=True))
    credential_id: str = Field(sa_column=Column(Text, nullable=False))
    scanner_id: str = Field(sa_column=Column(Text, nullable=False))
    org_id: str = Field(sa_column=Column(Text, nullable=False))
    issued_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    previous_credential_id: str | None = Field(default=None, sa_column=Column(Text))
    previous_valid_until: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True))
    )
    state: str = Field(sa_column=Column(Text, nullable=False))
    valid_until: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    updated_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=text("now()"))
    )


class GateDeauthorisation(Model, table=True):
    """The latest deauthorisation seen for a scanner: it also covers credentials announced later
    but issued before it."""

    __tablename__ = "gate_deauthorisations"

    scanner_id: str = Field(sa_column=Column(Text, primary_key=True))
    deauthorised_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
