"""The rotation limit counts a scanner's recent rotations: an index for it (issue 18).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 00:00:00

"""
from typing import Sequence, Union

from alembic import op

revision: str = "0003"
down_revision: Union[str, Sequence[str], None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX IF NOT EXISTS credentials_rotations_by_scanner "
        "ON credentials (scanner_id, issued_at) WHERE previous_credential_id IS NOT NULL"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS credentials_rotations_by_scanner")
