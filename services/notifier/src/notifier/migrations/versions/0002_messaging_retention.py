"""notifier: the messaging tables' retention (an index that makes purging processed events cheap,
autovacuum tuned for the outbox queue).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

"""

from typing import Sequence, Union

from scanner_auth_shared.migrations import executing
from scanner_auth_shared.outbox import MESSAGING_RETENTION_DDL, MESSAGING_RETENTION_UNDO_DDL

revision: str = "0002"
down_revision: Union[str, Sequence[str], None] = "0001"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


upgrade = executing(MESSAGING_RETENTION_DDL)
downgrade = executing(MESSAGING_RETENTION_UNDO_DDL)
