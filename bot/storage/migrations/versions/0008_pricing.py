"""What Meta billed each sent message as: the `pricing` of its status webhooks (SPEC §7).

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbound_messages") as table:
        table.add_column(sa.Column("billed_category", sa.String(32)))
        table.add_column(sa.Column("billed_type", sa.String(32)))
        table.add_column(sa.Column("billable", sa.Boolean))


def downgrade() -> None:
    with op.batch_alter_table("outbound_messages") as table:
        table.drop_column("billable")
        table.drop_column("billed_type")
        table.drop_column("billed_category")
