"""token-issuer: the email requests of the last hour, counted against the email quotas
(EMAIL_LIMIT_PER_CODE_PER_HOUR, EMAIL_LIMIT_PER_RECIPIENT_PER_HOUR).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03

"""

from typing import Sequence, Union

from alembic import op

revision: str = "0003"
down_revision: Union[str, Sequence[str], None] = "0002"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

STATEMENTS = (
    """
    CREATE TABLE email_requests (
        notification_id TEXT PRIMARY KEY,
        token_id TEXT NOT NULL,
        recipient TEXT NOT NULL,
        requested_at TIMESTAMPTZ NOT NULL
    )
    """,
    "CREATE INDEX email_requests_token ON email_requests (token_id, requested_at)",
    "CREATE INDEX email_requests_recipient ON email_requests (recipient, requested_at)",
    "CREATE INDEX email_requests_age ON email_requests (requested_at)",
)


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS email_requests")
