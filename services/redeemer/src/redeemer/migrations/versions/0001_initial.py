"""The redeemer's tables: its token view, its serial-number view, credentials, throttling.

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
    # Its own view of tokens, from TokenIssued / TokenRevoked / TokenExpired. A row created by a
    # TokenRevoked or TokenExpired that overtook its TokenIssued has no digest until then, and
    # keeps its final status when the TokenIssued arrives.
    """
    CREATE TABLE tokens (
        token_id TEXT PRIMARY KEY,
        scanner_id TEXT NOT NULL,
        org_id TEXT NOT NULL,
        code_digest TEXT,
        issued_at TIMESTAMPTZ,
        expires_at TIMESTAMPTZ,
        status TEXT NOT NULL CHECK (status IN ('active', 'redeemed', 'expired', 'revoked')),
        redeemed_at TIMESTAMPTZ,
        ended_at TIMESTAMPTZ,
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    """,
    "CREATE INDEX tokens_code_digest ON tokens (code_digest) WHERE code_digest IS NOT NULL",
    # Its own view of the directory's scanners (serial numbers).
    """
    CREATE TABLE scanners (
        scanner_id TEXT PRIMARY KEY,
        org_id TEXT,
        serial_number TEXT,
        removed BOOLEAN NOT NULL DEFAULT false,
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    """,
    # One row per scanner that has (had) credentials: the row every credential change locks first.
    """
    CREATE TABLE scanner_credential_state (
        scanner_id TEXT PRIMARY KEY,
        deauthorised_at TIMESTAMPTZ,
        updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )
    """,
    """
    CREATE TABLE credentials (
        credential_id TEXT PRIMARY KEY,
        scanner_id TEXT NOT NULL,
        org_id TEXT NOT NULL,
        credential_digest TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL CHECK (status IN ('active', 'rotating', 'replaced', 'revoked')),
        issued_at TIMESTAMPTZ NOT NULL,
        valid_until TIMESTAMPTZ,
        token_id TEXT,
        previous_credential_id TEXT,
        ended_at TIMESTAMPTZ
    )
    """,
    """
    CREATE INDEX credentials_live_by_scanner ON credentials (scanner_id)
    WHERE status IN ('active', 'rotating')
    """,
    # Throttling, shared by every replica.
    """
    CREATE TABLE serial_throttle (
        serial_key TEXT PRIMARY KEY,
        failures INTEGER NOT NULL,
        locked_until TIMESTAMPTZ,
        updated_at TIMESTAMPTZ NOT NULL
    )
    """,
    """
    CREATE TABLE address_throttle (
        address TEXT PRIMARY KEY,
        failures TIMESTAMPTZ[] NOT NULL,
        locked_until TIMESTAMPTZ,
        updated_at TIMESTAMPTZ NOT NULL
    )
    """,
)


def upgrade() -> None:
    for statement in MESSAGING_DDL:
        op.execute(statement)
    for statement in TABLES:
        op.execute(statement)


def downgrade() -> None:
    for table in ("address_throttle", "serial_throttle", "credentials",
                  "scanner_credential_state", "scanners", "tokens"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
