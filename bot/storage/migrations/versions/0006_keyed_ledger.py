"""The ledger against someone who can write to the database: keyed events only, and no TRUNCATE.

- `consent_events` takes new events of hash version 3 (keyed with LEDGER_SIGNING_KEY) only. A
  process of the code before it, still running during a deploy, cannot chain an unkeyed event
  after keyed ones (which `flask consent verify` would name as forged): its write fails, and
  the webhook's retry reaches a process of this code. Stored events keep their versions.
- PostgreSQL refuses `TRUNCATE consent_events`, which row triggers do not see. (SQLite has no
  TRUNCATE: its `DELETE` without `WHERE` runs the row triggers.)

Someone who can drop triggers gets past both; the key and the signed checkpoints are what
detect that (bot.storage.integrity). A later revision that rebuilds consent_events on SQLite
(batch_alter_table) must create the SQLite trigger again, as 0004 does the append-only ones.

Revision ID: 0006
Revises: 0005
"""
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

GUARDS = {
    "sqlite": [
        "CREATE TRIGGER consent_events_keyed_only BEFORE INSERT ON consent_events WHEN NEW.hash_version < 3 "
        "BEGIN SELECT RAISE(ABORT, 'consent_events takes keyed (version 3) events only'); END",
    ],
    "postgresql": [
        "CREATE FUNCTION consent_events_keyed_only() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'consent_events takes keyed (version 3) events only'; END $$",
        "CREATE TRIGGER consent_events_keyed_only BEFORE INSERT ON consent_events FOR EACH ROW "
        "WHEN (NEW.hash_version < 3) EXECUTE FUNCTION consent_events_keyed_only()",
        # consent_events_append_only() (revision 0001) raises 'consent_events is append-only'.
        "CREATE TRIGGER consent_events_no_truncate BEFORE TRUNCATE ON consent_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION consent_events_append_only()",
    ],
}
DROP_GUARDS = {
    "sqlite": ["DROP TRIGGER consent_events_keyed_only"],
    "postgresql": [
        "DROP TRIGGER consent_events_no_truncate ON consent_events",
        "DROP TRIGGER consent_events_keyed_only ON consent_events",
        "DROP FUNCTION consent_events_keyed_only()",
    ],
}


def upgrade() -> None:
    for statement in GUARDS.get(op.get_bind().dialect.name, []):
        op.execute(statement)


def downgrade() -> None:
    for statement in DROP_GUARDS.get(op.get_bind().dialect.name, []):
        op.execute(statement)
