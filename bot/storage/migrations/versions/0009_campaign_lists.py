"""Campaigns keep what their list held besides recipients: blank, invalid and repeated entries,
so that a campaign's counts add up to the entries it was given (`flask campaign status`).

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("campaigns") as table:  # NULL for campaigns started before: not known
        table.add_column(sa.Column("blank", sa.Integer))
        table.add_column(sa.Column("invalid", sa.Integer))
        table.add_column(sa.Column("duplicates", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("campaigns") as table:
        table.drop_column("duplicates")
        table.drop_column("invalid")
        table.drop_column("blank")
