"""Who is who: the people identifiers name, kept in step with the ledger's identity events.

A person has a stable id; the `identities` table says which person each phone or BSUID names
now, and every ledger event carries the id of the person it was recorded for. Identifiers Meta
shows together (a message with its contacts, a status, a preference change, a contact-info
reply) are linked to one person, each link a ledger event with the payload's id as evidence.
Where they turn out to name two people already, the two become one (`merged_people` says
whom each absorbed person id is now), so that neither history is rewritten and the state of
either is the state of both. A person who
moves to a new number or BSUID takes their consent along; the identifiers they left name
nobody (a recycled number must not inherit anyone's consent).

Everything here runs inside the caller's transaction, before the events it drafts are chained.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bot.domain.consent import Action, Channel, EventDraft
from bot.domain.identity import kind_of, new_person_id, phones_first
from bot.storage.db import WriteConflict, insert_once, string_array
from bot.storage.schema import contacts, conversations, forwarded_events, identities, inbound_messages, merged_people

RECORDED_BY = "webhook"


@dataclass(frozen=True)
class Sighting:
    """Identifiers Meta showed together in one payload item (`evidence_id`: the item's id).
    `only_link`: the item needs no person, only the link (a delivery status)."""

    identifiers: tuple[str, ...]
    evidence_id: str
    at: datetime
    only_link: bool = False


class KnownLinks:
    """Identifier groups a process read as one person's (one per database, kept by its Ledger):
    a status showing them together again needs no look-up. Only what was read committed goes in, and a link, once made, stays
    true or harmless (a move retires identifiers, which then name nobody). Bounded: emptied
    when full."""

    LIMIT = 100_000

    def __init__(self) -> None:
        self._groups: set[tuple[str, ...]] = set()

    def __contains__(self, group: tuple[str, ...]) -> bool:
        return group in self._groups

    def add(self, group: tuple[str, ...]) -> None:
        if len(self._groups) >= self.LIMIT:
            self._groups.clear()
        self._groups.add(group)



@dataclass(frozen=True)
class Move:
    """Meta says a person left some identifiers for others (a new number, a new BSUID)."""

    left: tuple[str, ...]
    joined: tuple[str, ...]
    evidence_id: str
    at: datetime


_FIND = sa.select(identities.c.identifier, identities.c.person_id).where(identities.c.identifier.in_(sa.bindparam("ids", expanding=True)))
_FIND_ANY = sa.select(identities.c.identifier, identities.c.person_id).where(identities.c.identifier == sa.any_(string_array("ids")))
_NAMED = identities.alias("named")
# Every identifier of the people some identifiers name (SQLite; PostgreSQL adds the new ones in the same statement).
_PEOPLE_NAMED = sa.select(identities.c.identifier, identities.c.person_id).where(
    identities.c.person_id.in_(sa.select(_NAMED.c.person_id).where(_NAMED.c.identifier.in_(sa.bindparam("ids", expanding=True))))
)
# A group (the identifiers sharing a fresh person id) is added only if none of it names anyone.
_NAMED_OR_ADDED = sa.text("""
WITH wanted AS (
    SELECT * FROM unnest(CAST(:ids AS varchar[]), CAST(:people AS varchar[]), CAST(:kinds AS varchar[])) AS w(identifier, person_id, kind)
),
named AS (
    SELECT identities.identifier, identities.person_id FROM identities
    WHERE identities.person_id IN (SELECT person_id FROM identities WHERE identifier = ANY(CAST(:ids AS varchar[])))
),
added AS (
    INSERT INTO identities (identifier, person_id, kind, linked_at)
    SELECT w.identifier, w.person_id, w.kind, :now FROM wanted w
    WHERE NOT EXISTS (
        SELECT 1 FROM wanted other JOIN identities ON identities.identifier = other.identifier WHERE other.person_id = w.person_id
    )
    ORDER BY w.identifier
    ON CONFLICT DO NOTHING
    RETURNING identifier, person_id
)
SELECT identifier, person_id, false AS added FROM named UNION ALL SELECT identifier, person_id, true FROM added
""")
_IDENTIFIERS_OF = sa.select(identities.c.identifier, identities.c.person_id).where(
    identities.c.person_id.in_(sa.bindparam("people", expanding=True))
)


def find(conn: Connection, ids: Iterable[str]) -> dict[str, str]:
    """The person each of these identifiers names now (those naming nobody are left out)."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    query = _FIND_ANY if conn.dialect.name == "postgresql" else _FIND
    return dict(conn.execute(query, {"ids": wanted}).all())


def identifiers_of(conn: Connection, people: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Every identifier of these people, phones first."""
    found: dict[str, list[str]] = {person: [] for person in people}
    if found:
        for identifier, person in conn.execute(_IDENTIFIERS_OF, {"people": list(found)}):
            found[person].append(identifier)
    return {person: tuple(sorted(ids, key=phones_first)) for person, ids in found.items()}


class Settled(NamedTuple):
    people: dict[str, str]  # the person of each identifier seen, and of their people's other identifiers
    events: list[EventDraft]  # the identity events to record
    new_people: set[str]  # people made here: no events, no contact yet


def settle(
    conn: Connection, sightings: Sequence[Sighting], now: datetime, known_links: KnownLinks | None = None
) -> Settled:
    """Give every identifier seen a person: the one it names, or a new one; link those seen
    together, merging people where they turn out to be one. New identifiers are written in one
    statement, in identifier order (two transactions adding the same ones cannot deadlock)."""
    links = known_links if known_links is not None else KnownLinks()
    sightings = [s for s in sightings if not (s.only_link and s.identifiers in links)]
    ids = sorted({i for s in sightings for i in s.identifiers})
    fresh = _fresh_people(sightings)
    written: set[str] = set()
    if conn.dialect.name == "postgresql" and ids:
        known, written = _named_or_added(conn, ids, fresh, now)
    else:
        known = dict(conn.execute(_PEOPLE_NAMED, {"ids": ids}).all()) if ids else {}
    for sighting in sightings:
        named = {known.get(i) for i in sighting.identifiers}
        if len(named) == 1 and None not in named:
            links.add(sighting.identifiers)
    new: dict[str, Sighting] = {}
    linked: list[str] = []  # new identifiers that join a person named otherwise: each link is an event
    drafts: list[EventDraft] = []
    for sighting in sightings:
        seen = sighting.identifiers
        people = list(dict.fromkeys(known[i] for i in seen if i in known))
        person = people[0] if people else fresh[seen[0]]
        for other in people[1:]:
            drafts.append(_merge(conn, person, other, _tie(seen, known, other), sighting))
            known = {i: (person if p == other else p) for i, p in known.items()}
        for identifier in seen:
            if identifier not in known:
                known[identifier], new[identifier] = person, sighting
                if people or identifier != seen[0]:  # a new person is named by the first; the others are linked to it
                    linked.append(identifier)
    if written - set(new) or any(known[i] != fresh[i] for i in written):
        raise WriteConflict("another delivery added some of these identifiers meanwhile")
    unwritten = sorted(set(new) - written)
    if unwritten:
        conn.execute(identities.insert(), [_identity(i, known[i], now) for i in unwritten])
    drafts.extend(
        _event(Action.IDENTITY_LINKED, i, known[i], new[i].evidence_id, new[i].at, seen_with=_others(new[i].identifiers, i))
        for i in linked
    )
    return Settled(known, drafts, {known[i] for i in new} - {known[i] for i in known if i not in new})


def _fresh_people(sightings: Sequence[Sighting]) -> dict[str, str]:
    """A new person id for each group of identifiers seen together (directly or through a
    shared one): the person they are if none of them names anyone yet."""
    group: dict[str, str] = {}
    for sighting in sightings:
        joined = {group[i] for i in sighting.identifiers if i in group}
        person = min(joined) if joined else new_person_id()
        for identifier, other in list(group.items()):
            if other in joined:
                group[identifier] = person
        group.update(dict.fromkeys(sighting.identifiers, person))
    return group


def _named_or_added(conn: Connection, ids: list[str], fresh: dict[str, str], now: datetime) -> tuple[dict[str, str], set[str]]:
    """PostgreSQL, in one statement: every identifier of the people these name, and the groups
    of which none names anyone yet, added as their new people. Returns (the person of each
    identifier that named someone before, the identifiers added)."""
    rows = conn.execute(
        _NAMED_OR_ADDED,
        {"ids": ids, "people": [fresh[i] for i in ids], "kinds": [kind_of(i).value for i in ids], "now": now},
    ).all()
    return {identifier: person for identifier, person, added in rows if not added}, {identifier for identifier, _, added in rows if added}


def move(conn: Connection, change: Move, now: datetime) -> tuple[str, list[EventDraft]]:
    """Move a person to new identifiers: the ones they left name nobody from now on. Returns
    the person and the identity events to record."""
    known = find(conn, change.left + change.joined)
    sighting = Sighting(change.joined, change.evidence_id, change.at)
    person = next((known[i] for i in change.left if i in known), None)
    if person is None:  # moved from identifiers we never saw: nothing to carry over
        settled = settle(conn, [sighting], now)
        return settled.people[change.joined[0]], settled.events
    drafts = [
        _merge(conn, person, other, _tie(change.joined, known, other), sighting)
        for other in dict.fromkeys(known[i] for i in change.joined if known.get(i, person) != person)
    ]
    new = [i for i in change.joined if i not in known]
    if new:
        conn.execute(identities.insert(), [_identity(i, person, now) for i in new])
        drafts.extend(_event(Action.IDENTITY_LINKED, i, person, change.evidence_id, change.at, moved_from=list(change.left)) for i in new)
    leaving = [i for i in change.left if known.get(i) == person and i not in change.joined]
    if leaving:
        conn.execute(identities.delete().where(identities.c.identifier.in_(leaving)))
        drafts.extend(_event(Action.IDENTITY_RETIRED, i, person, change.evidence_id, change.at, moved_to=list(change.joined)) for i in leaving)
    return person, drafts


def _merge(conn: Connection, person: str, other: str, tie: str, sighting: Sighting) -> EventDraft:
    """`other` turns out to be `person`: its identifiers, history and window become theirs."""
    conn.execute(identities.update().where(identities.c.person_id == other).values(person_id=person))
    conn.execute(merged_people.update().where(merged_people.c.person_id == other).values(person_id=person))
    conn.execute(merged_people.insert().values(absorbed=other, person_id=person))
    last = conn.execute(
        sa.select(sa.func.max(contacts.c.last_inbound_at)).where(contacts.c.person_id.in_([person, other]))
    ).scalar()
    conn.execute(contacts.delete().where(contacts.c.person_id == other))
    if last is not None:
        conn.execute(insert_once(conn, contacts, ["person_id"]).values(person_id=person, last_inbound_at=last))
        conn.execute(contacts.update().where(contacts.c.person_id == person).values(last_inbound_at=last))
    _merge_conversations(conn, person, other)
    return _event(Action.PEOPLE_MERGED, tie, person, sighting.evidence_id, sighting.at, absorbed_person_id=other)


def _merge_conversations(conn: Connection, person: str, other: str) -> None:
    """What `other` wrote and what staff knew of their conversation become `person`'s: their
    messages, events still to forward (in their order), and one conversation that is unread
    where either was and handled by whoever handled either."""
    conn.execute(inbound_messages.update().where(inbound_messages.c.person_id == other).values(person_id=person))
    conn.execute(forwarded_events.update().where(forwarded_events.c.person_id == other).values(person_id=person))
    both = conversations.c.person_id.in_([person, other])
    merged = conn.execute(
        sa.select(
            sa.func.max(conversations.c.last_inbound_at).label("last_inbound_at"),
            sa.case((sa.func.count(conversations.c.read_at) < sa.func.count(), sa.null()), else_=sa.func.min(conversations.c.read_at)).label("read_at"),
        ).where(both)
    ).one()
    if merged.last_inbound_at is None:
        return
    handling = conn.execute(
        sa.select(conversations.c.handled_by, conversations.c.handled_since)
        .where(both, conversations.c.handled_by.is_not(None)).order_by(conversations.c.person_id != person).limit(1)
    ).first()
    conn.execute(conversations.delete().where(both))
    conn.execute(conversations.insert().values(
        person_id=person, last_inbound_at=merged.last_inbound_at, read_at=merged.read_at,
        handled_by=handling.handled_by if handling else None, handled_since=handling.handled_since if handling else None,
    ))


def _event(action: Action, identifier: str, person: str, evidence_id: str, at: datetime, **evidence: Any) -> EventDraft:
    digest = hashlib.sha256(f"{identifier}\n{person}\n{evidence_id}".encode()).hexdigest()[:40]
    return EventDraft(
        identifier=identifier, person_id=person, action=action, channel=Channel.WHATSAPP_IDENTITY,
        source_ref=f"{action.value}:{digest}", recorded_by=RECORDED_BY,
        evidence={"payload_id": evidence_id, **evidence}, occurred_at=at,
    )


def _identity(identifier: str, person: str, now: datetime) -> dict:
    return {"identifier": identifier, "person_id": person, "kind": kind_of(identifier).value, "linked_at": now}


def _tie(ids: Sequence[str], known: dict[str, str], other: str) -> str:
    return next(i for i in ids if known.get(i) == other)


def _others(ids: Sequence[str], identifier: str) -> list[str]:
    return [i for i in ids if i != identifier]


