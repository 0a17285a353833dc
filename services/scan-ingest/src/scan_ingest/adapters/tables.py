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
        # The purge (retention): rotated-out credentials by the end of their grace, replaced
        # and revoked ones by when they ended.
        Index(
            "gate_credentials_rotated_until",
            "valid_until",
            postgresql_where=text("state = 'rotating'"),
        ),
        Index(
            "gate_credentials_ended",
            "updated_at",
            postgresql_where=text("state IN ('replaced', 'revoked')"),
        ),
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


class GateRevocation(Model, table=True):
    """A credential id a CredentialsRevoked closed: revoked whenever it was issued, and whether
    its announcement came before or after (issue 18: by identity, not by clock)."""

    __tablename__ = "gate_revocations"
    __table_args__ = (
        Index("gate_revocations_scanner", "scanner_id"),
        Index("gate_revocations_revoked_at", "revoked_at"),
    )

    credential_id: str = Field(sa_column=Column(Text, primary_key=True))
    scanner_id: str = Field(sa_column=Column(Text, nullable=False))
    revoked_at: datetime = Field(
        sa_column=Column(DateTime(timezone=True), nullable=False, server_default=text("now()"))
    )


class GateDeauthorisation(Model, table=True):
    """Before issue 18: the latest deauthorisation time seen for a scanner. No longer read or
    written (a deauthorisation closes credentials by id now); kept while replicas of the previous
    release may still run, to be dropped by a later migration."""

    __tablename__ = "gate_deauthorisations"

    scanner_id: str = Field(sa_column=Column(Text, primary_key=True))
    deauthorised_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
