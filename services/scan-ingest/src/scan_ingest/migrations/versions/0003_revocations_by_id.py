"""scan-ingest: revocations by credential id, and the indexes of the retention purge (issue 18).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

"""
from typing import Sequence, Union

from alembic import op

revision: str = "0003"
down_revision: Union[str, Sequence[str], None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE gate_revocations (
            credential_id TEXT PRIMARY KEY,
            scanner_id TEXT NOT NULL,
            revoked_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX gate_revocations_scanner ON gate_revocations (scanner_id)")
    op.execute("CREATE INDEX gate_revocations_revoked_at ON gate_revocations (revoked_at)")
    # What the time-based deauthorisations revoked stays revoked, now by id.
    op.execute(
        """
        INSERT INTO gate_revocations (credential_id, scanner_id)
        SELECT credential_id, scanner_id FROM gate_credentials WHERE state = 'revoked'
        ON CONFLICT (credential_id) DO NOTHING
        """
    )
    op.execute(
        "CREATE INDEX gate_credentials_rotated_until ON gate_credentials (valid_until) "
        "WHERE state = 'rotating'"
    )
    op.execute(
        "CREATE INDEX gate_credentials_ended ON gate_credentials (updated_at) "
        "WHERE state IN ('replaced', 'revoked')"
    )
    # gate_deauthorisations is no longer used; dropped by a later migration, once no replica
    # of the previous release can still read it.


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS gate_credentials_ended")
    op.execute("DROP INDEX IF EXISTS gate_credentials_rotated_until")
    op.execute("DROP TABLE IF EXISTS gate_revocations")
