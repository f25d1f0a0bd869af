"""What people write, kept for the console (SPEC §9), and who handles each conversation.

Written inside the webhook's transaction (bot.storage.intake), apart from the consent ledger:
the ledger's evidence never depends on these rows, which the sweeper removes after
MESSAGE_RETENTION_DAYS. An edit changes the stored message's text and a revoke empties it,
when the message they name is kept and is the same person's; otherwise they are kept themselves.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from bot.inbound.events import InboundMessage, MessageType
from bot.storage.db import insert_once, one_statement, reading
from bot.storage.schema import conversations, inbound_messages

HANDLED_BY_STAFF = "handled_by_staff"  # why an automated reply is refused while staff handle the conversation
_CHANGES = (MessageType.EDIT, MessageType.REVOKE)  # messages that change another


def message_row(message: InboundMessage, person_id: str, handled_as: str | None, now: datetime) -> dict:
    """The row that keeps an inbound message (not written yet)."""
    return {
        "id": message.message_id, "person_id": person_id, "sender": message.sender, "type": message.type.value,
        "text": storable(message.text), "content": json.dumps(content_of(message), sort_keys=True),
        "handled_as": handled_as, "sent_at": min(message.timestamp, now), "received_at": now,
        "edited_at": None, "revoked_at": None,
    }


def storable(text: str | None) -> str | None:
    """Text as PostgreSQL can hold it (no NUL): a message that cannot be kept must never stop
    the STOP in it from being recorded, in the same transaction. JSON columns are kept ASCII
    (escapes) for the same reason: a lone surrogate in a location's name stays an escape."""
    return text.replace("\x00", "\ufffd") if text else text


def content_of(message: InboundMessage) -> dict:
    """What a message holds besides its text, leaving out what it does not have."""
    content: dict = {
        "quoted_id": message.quoted_id, "original_id": message.original_id,
        "media": asdict(message.media) if message.media else None,
        "reaction": asdict(message.reaction) if message.reaction else None,
    }
    if message.button_payload is not None or message.button_title is not None:
        content["button"] = {"payload": message.button_payload, "title": message.button_title}
    if message.shared is not None:
        content[message.type.value] = json.loads(message.shared)
    return {key: value for key, value in content.items() if value is not None}


def keep(conn: Connection, kept: list[tuple[dict, InboundMessage]]) -> None:
    """Store new messages (a redelivered one is there already), move their conversations on,
    then apply edits and revokes to the messages they name. An edit or revoke of a message not
    kept is kept itself, so that staff still see it."""
    changes = [(row, message) for row, message in kept if message.type in _CHANGES and message.original_id is not None]
    changing = {row["id"] for row, _ in changes}
    rows = [row for row, _ in kept if row["id"] not in changing]
    if rows:
        conn.execute(insert_once(conn, inbound_messages, ["id"]), rows)
    for row, change in changes:
        values = (
            {"text": storable(change.text), "edited_at": row["sent_at"]} if change.type is MessageType.EDIT
            else {"text": None, "content": "{}", "revoked_at": row["sent_at"]}
        )
        target = (inbound_messages.c.id == change.original_id) & (inbound_messages.c.person_id == row["person_id"])
        if conn.execute(inbound_messages.update().where(target).values(**values)).rowcount == 0:
            conn.execute(insert_once(conn, inbound_messages, ["id"]), [row])
    latest: dict[str, datetime] = {}
    for row, _ in kept:
        latest[row["person_id"]] = max(row["sent_at"], latest.get(row["person_id"], row["sent_at"]))
    if latest:
        _touch(conn, latest)


def _touch(conn: Connection, latest: dict[str, datetime]) -> None:
    """Each person's conversation now ends no earlier than their newest message here."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(conversations)
    later = sa.func.greatest if conn.dialect.name == "postgresql" else sa.func.max
    statement = statement.on_conflict_do_update(
        index_elements=["person_id"],
        set_={"last_inbound_at": later(conversations.c.last_inbound_at, statement.excluded.last_inbound_at)},
    )
    conn.execute(statement, [{"person_id": person, "last_inbound_at": at} for person, at in sorted(latest.items())])


def handler_of(engine: Engine, person_id: str) -> str | None:
    """The staff member handling this person's conversation, if one does."""
    with reading(engine) as conn:
        return conn.execute(sa.select(conversations.c.handled_by).where(conversations.c.person_id == person_id)).scalar()


def forget_before(engine: Engine, cutoff: datetime, batch: int = 5000) -> int:
    """Remove messages received before `cutoff` (MESSAGE_RETENTION_DAYS), a batch per
    statement so that no long lock holds the webhook up; how many went."""
    removed = 0
    while True:
        with one_statement(engine) as conn:
            old = sa.select(inbound_messages.c.id).where(inbound_messages.c.received_at < cutoff).limit(batch)
            count = conn.execute(inbound_messages.delete().where(inbound_messages.c.id.in_(old.scalar_subquery()))).rowcount
        removed += count
        if count < batch:
            return removed
