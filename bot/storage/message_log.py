"""A person's outbound messages, newest first, for staff to read: what was sent or refused,
the consent event that allowed it or the reason it was not."""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bot.storage.db import reading
from bot.storage.ledger import as_utc
from bot.storage.outbox import MessageState
from bot.storage.schema import merged_people
from bot.storage.schema import outbound_messages as messages

_PERSON: sa.BindParameter[str] = sa.bindparam("person")
_MEMBERS = sa.union_all(  # the person, and everyone they absorbed
    sa.select(_PERSON), sa.select(merged_people.c.absorbed).where(merged_people.c.person_id == _PERSON)
)
# By person (a message to a number they have since left is still theirs), or by one of their
# identifiers (a message submitted before the number named anyone).
_OF_PERSON = (
    sa.select(messages)
    .where(sa.or_(messages.c.person_id.in_(_MEMBERS), messages.c.recipient.in_(sa.bindparam("identifiers", expanding=True))))
    .order_by(messages.c.created_at.desc(), messages.c.id)
    .limit(sa.bindparam("limit"))
)


@dataclass(frozen=True)
class LoggedMessage:
    id: str
    recipient: str
    kind: str
    content: dict[str, Any]
    state: MessageState
    reason: str | None  # why it was blocked or failed
    error_code: int | None
    consent_event_id: str | None  # the ledger event that allowed it
    meta_message_id: str | None  # what the person's reactions and quotes name it by
    campaign_id: str | None
    requested_by: str
    created_at: datetime
    sent_at: datetime | None


def messages_of(engine: Engine, person_id: str, identifiers: Iterable[str], limit: int) -> list[LoggedMessage]:
    """The person's latest `limit` messages, newest first."""
    with reading(engine) as conn:
        rows = conn.execute(_OF_PERSON, {"person": person_id, "identifiers": list(identifiers), "limit": limit}).mappings().all()
    return [
        LoggedMessage(
            id=row["id"], recipient=row["recipient"], kind=row["kind"], content=json.loads(row["content"]),
            state=MessageState(row["state"]), reason=row["reason"], error_code=row["error_code"],
            consent_event_id=row["consent_event_id"], meta_message_id=row["meta_message_id"], campaign_id=row["campaign_id"],
            requested_by=row["requested_by"],
            created_at=as_utc(row["created_at"]), sent_at=as_utc(row["sent_at"]) if row["sent_at"] else None,
        )
        for row in rows
    ]
