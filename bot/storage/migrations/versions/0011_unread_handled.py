"""Who marked an unread webhook item handled in the console, and when (SPEC §8, account health).

Both columns are NULL for an item nobody has looked at yet, as every item kept before this revision.

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("unread_webhooks") as table:
        table.add_column(sa.Column("handled_at", sa.DateTime(timezone=True)))
        table.add_column(sa.Column("handled_by", sa.String(260)))  # staff:EMAIL


def downgrade() -> None:
    with op.batch_alter_table("unread_webhooks") as table:
        table.drop_column("handled_by")
        table.drop_column("handled_at")
