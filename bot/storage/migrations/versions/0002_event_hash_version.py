"""Each consent event records which definition of its hash it carries (`hash_version`).

A later revision that changes what an event's hash covers adds a version; the events stored
before it keep version 1 and still verify. Adding the column rewrites no event.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("consent_events", sa.Column("hash_version", sa.SmallInteger, nullable=False, server_default="1"))


def downgrade() -> None:
    raise CommandError("the consent ledger's columns are never dropped by a migration; restore a backup instead")
