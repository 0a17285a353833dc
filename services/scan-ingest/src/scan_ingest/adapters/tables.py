"""scan-ingest's tables (created by migrations/versions/0001_initial.py)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, DateTime, LargeBinary, Text
from sqlmodel import Field

from scanner_auth_shared.db import service_model_base

Model = service_model_base("ScanIngest")


class GateCredential(Model, table=True):  # type: ignore[call-arg,misc,valid-type]
    """A credential announced on the public topic, and its derived standing."""

    __tablename__ = "gate_credentials"

    credential_digest: bytes = Field(sa_column=Column(LargeBinary, primary_key=True))
    credential_id: str = Field(sa_column=Column(Text, nullable=False))
    scanner_id: str = Field(sa_column=Column(Text, nullable=False, index=True))
    org_id: str = Field(sa_column=Column(Text, nullable=False))
    issued_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    previous_credential_id: str | None = Field(default=None, sa_column=Column(Text))
    previous_valid_until: datetime | None = Field(
        default=None, sa_column=Column(DateTime(timezone=True))
    )
    state: str = Field(sa_column=Column(Text, nullable=False))
    valid_until: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))


class GateDeauthorisation(Model, table=True):  # type: ignore[call-arg,misc,valid-type]
    """The latest deauthorisation seen for a scanner."""

    __tablename__ = "gate_deauthorisations"

    scanner_id: str = Field(sa_column=Column(Text, primary_key=True))
    deauthorised_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
