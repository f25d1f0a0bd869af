"""Indexes for the staff console's reads: the possible opt-outs waiting for review (a partial
index, small since such events are rare, so the queue never scans the ledger), and a person's
outbound messages by person (a message to a number the person has since left is still theirs).

Revision ID: 0012
Revises: 0011
"""
import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

POSSIBLE_OPT_OUTS = sa.text("action = 'possible_opt_out'")


def upgrade() -> None:
    op.create_index(
        "ix_consent_events_possible_opt_outs", "consent_events", ["occurred_at"],
        sqlite_where=POSSIBLE_OPT_OUTS, postgresql_where=POSSIBLE_OPT_OUTS,
    )
    op.create_index("ix_outbound_messages_person_id_created_at", "outbound_messages", ["person_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_outbound_messages_person_id_created_at", "outbound_messages")
    op.drop_index("ix_consent_events_possible_opt_outs", "consent_events")
