"""The console's inbox (SPEC §9): each person's conversation, the newest first, what they wrote
and what was sent to them in one thread, and what staff change: how far they have read it, and
whether one of them handles it (no plug-in answers it meanwhile, and what is forwarded to the
business's system says who does).

A conversation is a person's. The row of a person absorbed by a merge (bot.storage.people) is
listed as the person they are now, unless that person has a row of their own, which then stands
for both; reading, taking over and releasing change the rows of both. Unread is what the person
sent, edited or deleted after the time staff have read up to: the newest message a page showed
them, not the moment they opened it, so a message that arrives as the page is drawn stays unread.
Nothing here knows Flask.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from bot.storage.db import insert_once, one_statement, reading, writer
from bot.storage.ledger import as_utc
from bot.storage.message_log import LoggedMessage, messages_of
from bot.storage.people import identifiers_of
from bot.storage.schema import conversations, inbound_messages, merged_people

PAGE = 50  # conversations a page
THREAD = 200  # the latest messages of a conversation, both sides together

_OWN = conversations.alias("own")
_OWNER = sa.func.coalesce(merged_people.c.person_id, conversations.c.person_id)
_LISTED = (
    sa.select(_OWNER.label("owner"), conversations)
    .select_from(conversations.outerjoin(merged_people, merged_people.c.absorbed == conversations.c.person_id))
    .where(sa.or_(merged_people.c.person_id.is_(None), ~sa.exists().where(_OWN.c.person_id == merged_people.c.person_id)))
)
_UNREAD = sa.or_(conversations.c.read_at.is_(None), conversations.c.read_at < conversations.c.last_inbound_at)
_READ_AT = conversations.c.read_at
_UNREAD_MESSAGES = (  # per person id: messages sent, edited or deleted after their conversation was read up to
    sa.select(inbound_messages.c.person_id, sa.func.count())
    .join(conversations, conversations.c.person_id == inbound_messages.c.person_id)
    .where(
        inbound_messages.c.person_id.in_(sa.bindparam("people", expanding=True)),
        sa.or_(
            _READ_AT.is_(None), inbound_messages.c.sent_at > _READ_AT,
            inbound_messages.c.edited_at > _READ_AT, inbound_messages.c.revoked_at > _READ_AT,
        ),
    )
    .group_by(inbound_messages.c.person_id)
)
# Meta's times are to the second: of messages sent in one second, the one received last is the newest.
_NEWEST_FIRST = (inbound_messages.c.sent_at.desc(), inbound_messages.c.received_at.desc(), inbound_messages.c.id)
_RANKED = sa.select(
    inbound_messages, sa.func.row_number().over(partition_by=inbound_messages.c.person_id, order_by=_NEWEST_FIRST).label("rank"),
).where(inbound_messages.c.person_id.in_(sa.bindparam("people", expanding=True))).subquery()
_LATEST = sa.select(_RANKED).where(_RANKED.c.rank == 1)  # each person id's newest message


@dataclass(frozen=True)
class Inbound:
    """A message the person sent, as kept: an edit has changed its text, a revoke emptied it."""

    id: str  # Meta's message id
    sender: str
    type: str  # bot.inbound.events.MessageType
    text: str | None
    content: dict[str, Any]  # media, location, contacts, reaction, button, quoted_id, original_id
    handled_as: str | None  # the consent keyword it was, or None for conversation
    sent_at: datetime
    edited_at: datetime | None
    revoked_at: datetime | None

    @property
    def changed_at(self) -> datetime:
        """When the person last did something to it: sent, edited or deleted it."""
        return max(at for at in (self.sent_at, self.edited_at, self.revoked_at) if at is not None)


@dataclass(frozen=True)
class Handling:
    """Who handles a conversation: a staff member (`staff:EMAIL`) since when, or nobody."""

    by: str | None = None
    since: datetime | None = None


@dataclass(frozen=True)
class Conversation:
    """One line of the inbox."""

    person_id: str
    identifiers: tuple[str, ...]  # phone first; the first is where replies go
    last_inbound_at: datetime
    unread: int
    handling: Handling
    last: Inbound | None  # what they wrote last, while it is kept


class Cursor(NamedTuple):
    """Where a page of older conversations starts: after this one."""

    last_inbound_at: datetime
    person_id: str

    def token(self) -> str:
        return f"{self.last_inbound_at.isoformat()}~{self.person_id}"

    @classmethod
    def parse(cls, token: str) -> Cursor | None:
        """The cursor a `token()` wrote; None for anything else."""
        at, _, person = token.partition("~")
        try:
            moment = datetime.fromisoformat(at)
        except ValueError:
            return None
        return cls(as_utc(moment), person) if person and len(person) <= 36 else None


@dataclass(frozen=True)
class Page:
    conversations: list[Conversation]
    older: Cursor | None  # the next page's start, when there are older conversations


@dataclass(frozen=True)
class Entry:
    """One message of a thread: the person's, or one sent (or refused) to them."""

    at: datetime
    inbound: Inbound | None = None
    outbound: LoggedMessage | None = None


class Inbox:
    def __init__(self, engine: Engine):
        self.engine = engine

    def page(self, older: Cursor | None = None, unread_only: bool = False, handled_by: str | None = None, size: int = PAGE) -> Page:
        """Conversations, the one written to last first: those older than `older`, only the
        unread ones, only those `handled_by` a staff member, as asked."""
        query = self._listing(unread_only, handled_by).order_by(conversations.c.last_inbound_at.desc(), conversations.c.person_id)
        if older is not None:
            query = query.where(sa.or_(
                conversations.c.last_inbound_at < older.last_inbound_at,
                sa.and_(conversations.c.last_inbound_at == older.last_inbound_at, conversations.c.person_id > older.person_id),
            ))
        with reading(self.engine) as conn:
            rows = conn.execute(query.limit(size + 1)).mappings().all()
            listed = _summaries(conn, rows[:size])
        last = rows[size - 1] if len(rows) > size else None  # the last shown, when more follow
        return Page(listed, Cursor(as_utc(last["last_inbound_at"]), last["person_id"]) if last else None)

    def unread_conversations(self, since: datetime, cap: int) -> int:
        """How many conversations written to since `since` have something unread, counted up to `cap`."""
        query = self._listing(unread_only=True).where(conversations.c.last_inbound_at >= since).limit(cap)
        with reading(self.engine) as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()

    def thread(self, person_id: str, identifiers: Sequence[str], limit: int = THREAD) -> list[Entry]:
        """The latest `limit` messages of both sides, oldest first (a reply after the message it answers)."""
        query = sa.select(inbound_messages).where(inbound_messages.c.person_id.in_(_members(person_id))).order_by(*_NEWEST_FIRST)
        with reading(self.engine) as conn:
            inbound = [_inbound(row) for row in conn.execute(query.limit(limit)).mappings()]
        outbound = messages_of(self.engine, person_id, identifiers, limit)
        entries = [Entry(message.sent_at, inbound=message) for message in reversed(inbound)]
        entries += [Entry(message.created_at, outbound=message) for message in reversed(outbound)]
        entries.sort(key=lambda entry: (entry.at, entry.inbound is None))  # stable: messages of one second stay in order
        return entries[-limit:]

    def handling(self, person_id: str) -> Handling | None:
        """Who handles the person's conversation; None when they never wrote (there is none)."""
        with reading(self.engine) as conn:
            rows = conn.execute(
                sa.select(conversations.c.person_id, conversations.c.handled_by, conversations.c.handled_since)
                .where(conversations.c.person_id.in_(_members(person_id)))
            ).all()
        if not rows:
            return None
        own = next((row for row in rows if row.person_id == person_id), rows[0])
        return Handling(own.handled_by, _utc(own.handled_since))

    def mark_read(self, person_id: str, up_to: datetime | None) -> None:
        """Staff have read the conversation up to `up_to` (the newest message they were shown;
        None: all of it). Never moves back."""
        read = up_to if up_to is not None else conversations.c.last_inbound_at
        with one_statement(self.engine) as conn:
            conn.execute(
                conversations.update()
                .where(conversations.c.person_id.in_(_members(person_id)), sa.or_(_READ_AT.is_(None), _READ_AT < read))
                .values(read_at=read)
            )

    def take_over(self, person_id: str, by: str, now: datetime) -> bool:
        """`by` handles the conversation from `now`: no plug-in answers it until it is released.
        False when the person never wrote (there is nothing to hold)."""
        members = conversations.c.person_id.in_(_members(person_id))
        with writer(self.engine).begin() as conn:
            last = conn.execute(sa.select(sa.func.max(conversations.c.last_inbound_at)).where(members)).scalar()
            if last is None:
                return False
            # The person's own row is what the forwarder asks about their next messages.
            conn.execute(insert_once(conn, conversations, ["person_id"]).values(person_id=person_id, last_inbound_at=last))
            conn.execute(conversations.update().where(members).values(handled_by=by, handled_since=now))
        return True

    def release(self, person_id: str) -> None:
        """Nobody handles the conversation any more: automated replies answer it again."""
        with one_statement(self.engine) as conn:
            conn.execute(conversations.update().where(conversations.c.person_id.in_(_members(person_id))).values(handled_by=None, handled_since=None))

    @staticmethod
    def _listing(unread_only: bool = False, handled_by: str | None = None) -> sa.Select:
        query = _LISTED
        if unread_only:
            query = query.where(_UNREAD)
        if handled_by is not None:
            query = query.where(conversations.c.handled_by == handled_by)
        return query


def _members(person_id: str) -> sa.CompoundSelect:
    """The person, and everyone they absorbed."""
    return sa.union_all(
        sa.select(sa.literal(person_id, sa.String)), sa.select(merged_people.c.absorbed).where(merged_people.c.person_id == person_id),
    )


def _summaries(conn: Connection, rows: Sequence[sa.RowMapping]) -> list[Conversation]:
    """The inbox lines of these rows, in four queries however many."""
    owners = [row["owner"] for row in rows]
    owner_of = {owner: owner for owner in owners}
    if owners:
        absorbed = sa.select(merged_people.c.absorbed, merged_people.c.person_id).where(merged_people.c.person_id.in_(owners))
        owner_of.update(conn.execute(absorbed).all())
    unread: dict[str, int] = dict.fromkeys(owners, 0)
    latest: dict[str, Inbound] = {}
    received: dict[str, datetime] = {}
    if owner_of:
        for person, count in conn.execute(_UNREAD_MESSAGES, {"people": list(owner_of)}):
            unread[owner_of[person]] += count
        for row in conn.execute(_LATEST, {"people": list(owner_of)}).mappings():
            message, owner = _inbound(row), owner_of[row["person_id"]]
            if owner not in latest or (message.sent_at, row["received_at"]) > (latest[owner].sent_at, received[owner]):
                latest[owner], received[owner] = message, row["received_at"]
    identifiers = identifiers_of(conn, owners)
    first: dict[str, sa.RowMapping] = {}  # two absorbed rows of a person without a row of their own: one line
    for row in rows:
        first.setdefault(row["owner"], row)
    return [
        Conversation(
            owner, identifiers[owner], as_utc(row["last_inbound_at"]), unread[owner],
            Handling(row["handled_by"], _utc(row["handled_since"])), latest.get(owner),
        )
        for owner, row in first.items()
    ]


def _inbound(row: sa.RowMapping) -> Inbound:
    return Inbound(
        id=row["id"], sender=row["sender"], type=row["type"], text=row["text"], content=json.loads(row["content"]),
        handled_as=row["handled_as"], sent_at=as_utc(row["sent_at"]), edited_at=_utc(row["edited_at"]), revoked_at=_utc(row["revoked_at"]),
    )


def _utc(moment: datetime | None) -> datetime | None:
    return as_utc(moment) if moment is not None else None
