"""People with identifiers: a user may be known by a phone, a BSUID, a parent BSUID, or several.

Every wa_id known before becomes a person (with an id derived from it, so that verify can check
the person of each event recorded before) and that person's phone identifier. consent_events'
`wa_id` becomes `identifier` (wide enough for a BSUID) with the event's `person_id`; contacts are
kept per person; outbound messages keep their `recipient` and its person. No event's hashed
content changes: every old event still verifies.

Revision ID: 0004
Revises: 0003
"""
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

IDENTIFIER = sa.String(135)
PERSON = sa.String(36)
LEGACY_PEOPLE = uuid.UUID("0f6a8f0e-5d1c-4f6b-9a54-2b1f1c0d7e31")  # as bot.domain.identity has it

DROP_APPEND_ONLY = {
    "sqlite": ["DROP TRIGGER IF EXISTS consent_events_no_update", "DROP TRIGGER IF EXISTS consent_events_no_delete"],
    "postgresql": ["DROP TRIGGER IF EXISTS consent_events_append_only ON consent_events"],
}
APPEND_ONLY = {
    "sqlite": [
        f"CREATE TRIGGER IF NOT EXISTS consent_events_no_{op} BEFORE {op.upper()} ON consent_events "
        "BEGIN SELECT RAISE(ABORT, 'consent_events is append-only'); END"
        for op in ("update", "delete")
    ],
    "postgresql": [
        "CREATE TRIGGER consent_events_append_only BEFORE UPDATE OR DELETE ON consent_events "
        "FOR EACH ROW EXECUTE FUNCTION consent_events_append_only()",
    ],
}


def legacy_person_id(wa_id: str) -> str:
    return str(uuid.uuid5(LEGACY_PEOPLE, wa_id))


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    for statement in DROP_APPEND_ONLY.get(dialect, []):
        op.execute(statement)

    with op.batch_alter_table("consent_events") as batch:
        batch.drop_index("ix_consent_events_wa_id_seq")
        batch.alter_column("wa_id", new_column_name="identifier", type_=IDENTIFIER, existing_nullable=False)
        batch.add_column(sa.Column("person_id", PERSON))
    with op.batch_alter_table("contacts") as batch:
        batch.alter_column("wa_id", new_column_name="person_id", type_=PERSON, existing_nullable=False)
    with op.batch_alter_table("outbound_messages") as batch:
        batch.alter_column("wa_id", new_column_name="recipient", type_=IDENTIFIER, existing_nullable=False)
        batch.add_column(sa.Column("person_id", PERSON))
        batch.add_column(sa.Column("sent_to", IDENTIFIER))

    identities = op.create_table(
        "identities",
        sa.Column("identifier", IDENTIFIER, primary_key=True),
        sa.Column("person_id", PERSON, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("linked_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_identities_person_id", "identities", ["person_id"])
    op.create_table(
        "merged_people",
        sa.Column("absorbed", PERSON, primary_key=True),
        sa.Column("person_id", PERSON, nullable=False),
    )
    op.create_index("ix_merged_people_person_id", "merged_people", ["person_id"])

    events = sa.table("consent_events", sa.column("identifier"), sa.column("person_id"))
    contacts = sa.table("contacts", sa.column("person_id"))
    outbound = sa.table("outbound_messages", sa.column("recipient"), sa.column("person_id"))
    known = sorted(
        set(bind.execute(sa.select(events.c.identifier).distinct()).scalars())
        | set(bind.execute(sa.select(contacts.c.person_id)).scalars())
    )
    now = datetime.now(UTC)
    people = [{"wa_id": wa_id, "person": legacy_person_id(wa_id)} for wa_id in known]
    if people:
        op.bulk_insert(identities, [{"identifier": p["wa_id"], "person_id": p["person"], "kind": "phone", "linked_at": now} for p in people])
        bind.execute(
            events.update().where(events.c.identifier == sa.bindparam("wa_id")).values(person_id=sa.bindparam("person")), people
        )
        bind.execute(
            contacts.update().where(contacts.c.person_id == sa.bindparam("wa_id")).values(person_id=sa.bindparam("person")), people
        )
        bind.execute(
            outbound.update().where(outbound.c.recipient == sa.bindparam("wa_id")).values(person_id=sa.bindparam("person")), people
        )

    with op.batch_alter_table("consent_events") as batch:
        batch.alter_column("person_id", existing_type=PERSON, nullable=False)
        batch.create_index("ix_consent_events_person_id_seq", ["person_id", "seq"])
    for statement in APPEND_ONLY.get(dialect, []):
        op.execute(statement)


def downgrade() -> None:
    raise CommandError("the consent ledger's columns are never dropped by a migration; restore a backup instead")
