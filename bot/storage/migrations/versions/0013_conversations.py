"""The business's own conversation (SPEC §9): inbound messages kept for the console, each
person's conversation (read, handled by a person), and the events forwarded to the business's
systems and handlers, whose delivery state lives here so that a restart or a Redis flush loses nothing.

Revision ID: 0013
Revises: 0012
"""
import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

PENDING = sa.text("state = 'pending'")


def upgrade() -> None:
    op.create_table(
        "inbound_messages",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("person_id", sa.String(36), nullable=False),
        sa.Column("sender", sa.String(135), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("text", sa.Text),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("handled_as", sa.String(32)),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("edited_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_inbound_messages_person_id_sent_at", "inbound_messages", ["person_id", "sent_at"])
    op.create_index("ix_inbound_messages_received_at", "inbound_messages", ["received_at"])
    op.create_table(
        "conversations",
        sa.Column("person_id", sa.String(36), primary_key=True),
        sa.Column("last_inbound_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("read_at", sa.DateTime(timezone=True)),
        sa.Column("handled_by", sa.String(260)),
        sa.Column("handled_since", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_conversations_last_inbound_at", "conversations", ["last_inbound_at"])
    op.create_table(
        "forwarded_events",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(36), nullable=False, unique=True),
        sa.Column("destination", sa.String(16), nullable=False),
        sa.Column("person_id", sa.String(36), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True)),
        sa.Column("last_error", sa.String(255)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_index(
        "ix_forwarded_events_pending", "forwarded_events", ["destination", "seq"],
        sqlite_where=PENDING, postgresql_where=PENDING,
    )
    op.create_index("ix_forwarded_events_state_finished_at", "forwarded_events", ["state", "finished_at"])


def downgrade() -> None:
    op.drop_table("forwarded_events")
    op.drop_table("conversations")
    op.drop_table("inbound_messages")
