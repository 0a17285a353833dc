"""The notifier's tables: notifications (the emails to send) and token_states.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from alembic import op

from scanner_auth_shared.outbox import MESSAGING_DDL

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

NOTIFY_CHANNEL = "scanner_auth_notifier"


def upgrade() -> None:
    for statement in MESSAGING_DDL:
        op.execute(statement)
    op.execute(
        """
        CREATE TABLE notifications (
            notification_id TEXT PRIMARY KEY,
            token_id TEXT NOT NULL,
            scanner_id TEXT NOT NULL,
            org_id TEXT NOT NULL,
            recipient_user_id TEXT NOT NULL,
            recipient_email TEXT NOT NULL,
            requested_by TEXT NOT NULL,
            scanner_name TEXT NOT NULL,
            serial_number TEXT NOT NULL,
            sealed_code TEXT,
            expires_at TIMESTAMPTZ NOT NULL,
            status TEXT NOT NULL
                CHECK (status IN ('pending', 'sending', 'sent', 'failed', 'cancelled')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TIMESTAMPTZ NOT NULL,
            claim_id TEXT,
            lease_until TIMESTAMPTZ,
            last_error TEXT,
            smtp_message_id TEXT,
            requested_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            sent_at TIMESTAMPTZ,
            finished_at TIMESTAMPTZ
        )
        """
    )
    op.execute(
        "CREATE INDEX notifications_due ON notifications (next_attempt_at) "
        "WHERE status = 'pending'"
    )
    op.execute(
        "CREATE INDEX notifications_leases ON notifications (lease_until) "
        "WHERE status = 'sending'"
    )
    op.execute("CREATE INDEX notifications_token ON notifications (token_id)")
    op.execute(
        f"""
        CREATE FUNCTION notifier_wake_sender() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{NOTIFY_CHANNEL}', '');
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER notifications_wake_sender AFTER INSERT ON notifications
        FOR EACH STATEMENT EXECUTE FUNCTION notifier_wake_sender()
        """
    )
    op.execute(
        """
        CREATE TABLE token_states (
            token_id TEXT PRIMARY KEY,
            scanner_id TEXT NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('active', 'revoked', 'expired', 'redeemed')),
            updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE token_states")
    op.execute("DROP TRIGGER notifications_wake_sender ON notifications")
    op.execute("DROP FUNCTION notifier_wake_sender()")
    op.execute("DROP TABLE notifications")
