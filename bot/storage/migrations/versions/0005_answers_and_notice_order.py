"""A yes finds the question it answers; an account notice knows its subject and time.

- `outbound_messages` gets an index on (recipient, sent_at): the last message a person was sent.
- `account_notices` gets `subject` (the template or number a notice is about) and `occurred_at`
  (when Meta says it happened), so that an older notice delivered late does not undo a newer one.

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_outbound_messages_recipient_sent_at", "outbound_messages", ["recipient", "sent_at"])
    with op.batch_alter_table("account_notices") as table:
        table.add_column(sa.Column("subject", sa.String(255)))
        table.add_column(sa.Column("occurred_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("account_notices") as table:
        table.drop_column("occurred_at")
        table.drop_column("subject")
    op.drop_index("ix_outbound_messages_recipient_sent_at", table_name="outbound_messages")
