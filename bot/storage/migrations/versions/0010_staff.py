"""Staff accounts and API tokens (SPEC §8), and room to name a staff member in what they caused.

`recorded_by` and `requested_by` were 64 characters; a staff member is recorded as
`staff:EMAIL`, and an email address may have 254 (RFC 5321), so they widen to 260 rather than
refusing staff with long addresses. Widening changes no stored value, so every event still
verifies. PostgreSQL widens a varchar in place. SQLite can only rebuild the table
(batch_alter_table), which drops its triggers: those on consent_events (append-only, keyed
events only) are read before and made again after, in the same transaction.

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

EMAIL = sa.String(254)
ACTOR = sa.String(260)  # "staff:" and an email address
WIDENED = {"consent_events": "recorded_by", "outbound_messages": "requested_by", "campaigns": "requested_by"}


def upgrade() -> None:
    op.create_table(
        "staff_accounts",
        sa.Column("email", EMAIL, primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("must_change_password", sa.Boolean, nullable=False),
        sa.Column("session_generation", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", ACTOR, nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "staff_tokens",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("email", EMAIL, sa.ForeignKey("staff_accounts.email"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", ACTOR, nullable=False),
    )
    op.create_index("ix_staff_tokens_email", "staff_tokens", ["email"])
    for table, column in WIDENED.items():
        triggers = _sqlite_triggers(table)
        with op.batch_alter_table(table) as batch:
            batch.alter_column(column, existing_type=sa.String(64), type_=ACTOR, existing_nullable=False)
        for statement in triggers:
            op.execute(statement)


def _sqlite_triggers(table: str) -> list[str]:
    """The statements that made the table's triggers, on SQLite (where a rebuild drops them)."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return []
    query = sa.text("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :table ORDER BY name")
    return list(bind.execute(query, {"table": table}).scalars())


def downgrade() -> None:
    raise CommandError("the consent ledger's columns are never narrowed by a migration (staff names may not fit); restore a backup instead")
