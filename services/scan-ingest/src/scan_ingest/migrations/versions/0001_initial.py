"""scan-ingest: messaging tables and the gate's credential table.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

"""
from typing import Sequence, Union

from alembic import op

from scanner_auth_shared.outbox import MESSAGING_DDL

revision: str = "0001"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    for statement in MESSAGING_DDL:
        op.execute(statement)
    # One row per credential ever announced (the facts), with its derived standing.
    op.execute(
        """
        CREATE TABLE gate_credentials (
            credential_digest BYTEA PRIMARY KEY CHECK (octet_length(credential_digest) = 32),
            credential_id TEXT NOT NULL,
            scanner_id TEXT NOT NULL,
            org_id TEXT NOT NULL,
            issued_at TIMESTAMPTZ NOT NULL,
            previous_credential_id TEXT,
            previous_valid_until TIMESTAMPTZ,
            state TEXT NOT NULL
                CHECK (state IN ('active', 'rotating', 'replaced', 'revoked')),
            valid_until TIMESTAMPTZ,
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX gate_credentials_scanner ON gate_credentials (scanner_id)")
    # The latest deauthorisation seen per scanner: it also covers credentials announced later
    # but issued before it (events from two producers may arrive in either order).
    op.execute(
        """
        CREATE TABLE gate_deauthorisations (
            scanner_id TEXT PRIMARY KEY,
            deauthorised_at TIMESTAMPTZ NOT NULL
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS gate_deauthorisations")
    op.execute("DROP TABLE IF EXISTS gate_credentials")
