"""token-issuer: messaging tables, directory view, tokens, authorisation view, audit.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00

"""
from typing import Sequence, Union

from alembic import op

from scanner_auth_shared.outbox import MESSAGING_DDL

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

TABLES = (
    # The directory's scanners plus our authorisation view of each. A row may exist before its
    # ScannerRegistered (created by ScannerAuthorised): only registered, not removed rows are
    # visible. Handlers lock a scanner's row (FOR UPDATE) before writing events for it.
    """
    CREATE TABLE scanners (
        scanner_id TEXT PRIMARY KEY,
        org_id TEXT,
        serial_number TEXT,
        name TEXT NOT NULL DEFAULT '',
        model TEXT NOT NULL DEFAULT '',
        registered BOOLEAN NOT NULL DEFAULT false,
        removed_at TIMESTAMPTZ,
        authorised BOOLEAN NOT NULL DEFAULT false,
        authorised_at TIMESTAMPTZ,
        credential_id TEXT,
        authorised_serial_number TEXT,
        deauthorised_at TIMESTAMPTZ,
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX scanners_org ON scanners (org_id) WHERE registered AND removed_at IS NULL",
    """
    CREATE TABLE users (
        user_id TEXT PRIMARY KEY,
        org_id TEXT NOT NULL,
        email TEXT NOT NULL,
        display_name TEXT NOT NULL DEFAULT '',
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    """,
    # No foreign keys: a grant may arrive before its scanner or its user.
    """
    CREATE TABLE access_grants (
        scanner_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        granted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        PRIMARY KEY (scanner_id, user_id)
    )
    """,
    "CREATE INDEX access_grants_user ON access_grants (user_id)",
    """
    CREATE TABLE principals_seen (
        user_id TEXT PRIMARY KEY,
        org_id TEXT NOT NULL,
        roles TEXT[] NOT NULL DEFAULT '{}',
        email TEXT,
        last_seen_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX principals_seen_org ON principals_seen (org_id)",
    # The code only encrypted (AES-256-GCM, bound to the token id) and as an HMAC digest; the
    # ciphertext is erased when the token stops being active.
    """
    CREATE TABLE tokens (
        token_id TEXT PRIMARY KEY,
        seq BIGSERIAL NOT NULL UNIQUE,
        scanner_id TEXT NOT NULL,
        org_id TEXT NOT NULL,
        code_ciphertext BYTEA,
        code_digest TEXT NOT NULL,
        status TEXT NOT NULL
            CHECK (status IN ('active', 'redeemed', 'expired', 'revoked')),
        issued_at TIMESTAMPTZ NOT NULL,
        issued_by TEXT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL,
        redeemed_at TIMESTAMPTZ,
        revoked_at TIMESTAMPTZ,
        revoked_by TEXT,
        revoke_reason TEXT,
        expired_at TIMESTAMPTZ,
        CHECK (status <> 'active' OR code_ciphertext IS NOT NULL)
    )
    """,
    # At most one active token per scanner: guaranteed by the database.
    "CREATE UNIQUE INDEX tokens_one_active ON tokens (scanner_id) WHERE status = 'active'",
    "CREATE INDEX tokens_due ON tokens (expires_at) WHERE status = 'active'",
    "CREATE INDEX tokens_latest ON tokens (scanner_id, seq DESC)",
    """
    CREATE TABLE audit_log (
        id BIGSERIAL PRIMARY KEY,
        at TIMESTAMPTZ NOT NULL DEFAULT now(),
        actor_user_id TEXT NOT NULL,
        actor_org_id TEXT,
        action TEXT NOT NULL
            CHECK (action IN ('generated', 'viewed_code', 'emailed', 'revoked', 'deauthorised')),
        scanner_id TEXT NOT NULL,
        token_id TEXT,
        recipient_user_id TEXT,
        notification_id TEXT
    )
    """,
    "CREATE INDEX audit_log_scanner ON audit_log (scanner_id, at)",
)


def upgrade() -> None:
    """Upgrade schema."""
    for statement in MESSAGING_DDL:
        op.execute(statement)
    for statement in TABLES:
        op.execute(statement)


def downgrade() -> None:
    """Downgrade schema."""
    for table in ("audit_log", "tokens", "principals_seen", "access_grants", "users", "scanners"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
