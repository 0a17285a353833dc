"""token-issuer: the messaging tables' retention (an index that makes purging processed events cheap,
autovacuum tuned for the outbox queue).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

"""

from typing import Sequence, Union

from alembic import op

from scanner_auth_shared.outbox import MESSAGING_RETENTION_DDL

revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    for statement in MESSAGING_RETENTION_DDL:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS processed_events_age")
    op.execute(
        "ALTER TABLE outbox RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,"
        " autovacuum_vacuum_insert_scale_factor, autovacuum_vacuum_insert_threshold)"
    )
