"""The append-only, hash-chained consent ledger.

One global chain: every event stores the hash of the event before it and a gapless sequence
number, and a one-row head keeps the newest seq and hash. Editing, deleting, reordering or
truncating stored events therefore breaks the chain somewhere `verify` looks. A global chain
(rather than one per user) also detects the removal of a user's whole history and gives an
auditor one order for all records; the price is that writers take turns on the head row,
which costs one short lock per transaction (see bench/ledger.py for the rate it allows).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from bot.domain.consent import (
    MAX_EVIDENCE_BYTES,
    Action,
    Basis,
    Channel,
    ConsentEvent,
    ConsentState,
    EventDraft,
    InvalidEvent,
    Scope,
    basis_of,
    check_draft,
    fold,
    occurrence_order,
    session_opened,
    state_from_fold,
)
from bot.domain.identity import InvalidIdentifier, legacy_person_id, normalize_identifier, phones_first
from bot.storage.db import WriteConflict, as_json_rows, json_rows, reading, string_array, writer
from bot.storage.integrity import Checkpoint, LedgerKey
from bot.storage.people import KnownLinks, Sighting, find, identifiers_of, settle
from bot.storage.schema import GENESIS_HASH, consent_events, contacts, identities, ledger_head, merged_people

if TYPE_CHECKING:
    from bot.storage.forwarding import Feed

_OTHER = identities.alias("other")  # the person's identifiers, beside the one asked about


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """Databases hand back naive (SQLite) or zoned (PostgreSQL) times; the ledger speaks UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _hash_v1(row: Mapping, _key: bytes) -> str:
    """Events recorded before people had identifiers: the identifier was always a wa_id, and
    the person is the one derived from it (checked by `verify`, not hashed). Plain SHA-256, no key."""
    fields = [
        row["seq"], row["event_id"], row["identifier"], row["action"], row["scope"], row["basis"],
        row["channel"], row["consent_text"], row["evidence"], row["source_ref"],
        as_utc(row["occurred_at"]).isoformat(timespec="microseconds"),
        as_utc(row["recorded_at"]).isoformat(timespec="microseconds"),
        row["recorded_by"], row["prev_hash"],
    ]
    return hashlib.sha256(canonical_json(fields).encode()).hexdigest()


def _fields_v2(row: Mapping) -> bytes:
    """Version 1's fields and the person the event was recorded for."""
    fields = [
        row["seq"], row["event_id"], row["identifier"], row["person_id"], row["action"], row["scope"], row["basis"],
        row["channel"], row["consent_text"], row["evidence"], row["source_ref"],
        as_utc(row["occurred_at"]).isoformat(timespec="microseconds"),
        as_utc(row["recorded_at"]).isoformat(timespec="microseconds"),
        row["recorded_by"], row["prev_hash"],
    ]
    return canonical_json(fields).encode()


def _hash_v2(row: Mapping, _key: bytes) -> str:
    """Plain SHA-256 of version 2's fields: anyone who can write the database can recompute it."""
    return hashlib.sha256(_fields_v2(row)).hexdigest()


def _hash_v3(row: Mapping, key: bytes) -> str:
    """Version 2's fields under HMAC-SHA256 with a key the database does not hold (LedgerKey.chain)."""
    return hmac.digest(key, _fields_v2(row), "sha256").hex()


# What each hash version covers. A change to what the hash covers is a new version (and the
# new events' `hash_version`); stored events keep theirs and verify as they were written.
_HASHES: dict[int, Callable[[Mapping, bytes], str]] = {1: _hash_v1, 2: _hash_v2, 3: _hash_v3}
HASH_VERSION = 3  # the version new events are written with: keyed, so the database alone cannot forge one
_KEYED = {3}  # versions whose hash takes the key


def event_hash(row: Mapping, key: bytes) -> str | None:
    """Hash of an event's recorded fields and its predecessor's hash, as its hash version
    defines it (`key`: LedgerKey.chain, for keyed versions); None for a version this code does not know."""
    hasher = _HASHES.get(row["hash_version"])
    return hasher(row, key) if hasher else None


def to_event(row: Mapping) -> ConsentEvent:
    return ConsentEvent(
        seq=row["seq"],
        event_id=row["event_id"],
        identifier=row["identifier"],
        person_id=row["person_id"],
        action=Action(row["action"]),
        scope=Scope(row["scope"]),
        basis=Basis(row["basis"]) if row["basis"] else None,
        channel=Channel(row["channel"]),
        consent_text=row["consent_text"],
        evidence=json.loads(row["evidence"]),
        source_ref=row["source_ref"],
        occurred_at=as_utc(row["occurred_at"]),
        recorded_at=as_utc(row["recorded_at"]),
        recorded_by=row["recorded_by"],
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


# Statements are built once: building SQLAlchemy statements per call costs more than running them.
_HEAD_FOR_UPDATE = sa.select(ledger_head.c.seq, ledger_head.c.hash).where(ledger_head.c.id == 1).with_for_update()
_MOVE_HEAD = (
    ledger_head.update().where(ledger_head.c.id == 1).values(seq=sa.bindparam("new_seq"), hash=sa.bindparam("new_hash"))
)
# SQLite: idempotency without a look-up first: the unique source_ref turns a repeat into "no row".
_INSERT_IF_NEW = sqlite.insert(consent_events).on_conflict_do_nothing(index_elements=["source_ref"]).returning(consent_events.c.seq)
_BY_SOURCE_REF = sa.select(consent_events).where(consent_events.c.source_ref == sa.bindparam("ref"))
_BY_SOURCE_REFS = sa.select(consent_events).where(consent_events.c.source_ref.in_(sa.bindparam("refs", expanding=True)))
# PostgreSQL extends the chain in two round trips whatever the number of events: the head,
# locked, with which of the new source_refs are taken already; then one statement that adds
# the events (as JSON, so the statement never changes and stays prepared) and moves the
# head, but only if every one of them was added. A source_ref committed by another transaction
# while this one waited for the head can escape the first look: then nothing moves (WriteConflict).
_ANY_REF = sa.any_(string_array("refs"))
_HEAD_AND_TAKEN = (
    sa.select(
        ledger_head.c.seq, ledger_head.c.hash,
        sa.func.array(sa.select(consent_events.c.source_ref).where(consent_events.c.source_ref == _ANY_REF).scalar_subquery()),
    )
    .where(ledger_head.c.id == 1)
    .with_for_update(of=ledger_head)
)
_COLUMNS = [column.name for column in consent_events.c]
_NEW_ROWS = json_rows(consent_events)
_ADDED = (
    postgresql.insert(consent_events)
    .from_select(_COLUMNS, sa.select(*_NEW_ROWS.c))
    .on_conflict_do_nothing(index_elements=["source_ref"])
    .returning(consent_events.c.seq)
    .cte("added")
)
_ADD_AND_MOVE_HEAD = (
    ledger_head.update()
    .where(ledger_head.c.id == 1, sa.select(sa.func.count()).select_from(_ADDED).scalar_subquery() == sa.bindparam("count"))
    .values(seq=sa.bindparam("new_seq"), hash=sa.bindparam("new_hash"))
    .returning(ledger_head.c.seq)
)
# The person an identifier names, and every person id their events were recorded under.
_PERSON = sa.select(identities.c.person_id).where(identities.c.identifier == sa.bindparam("identifier")).scalar_subquery()
_MEMBERS = sa.union_all(  # the person, and everyone they absorbed
    sa.select(_PERSON), sa.select(merged_people.c.absorbed).where(merged_people.c.person_id == _PERSON)
)
_PERSON_FACTS = (  # (person, last inbound time, identifiers), or no row for an identifier that names nobody
    sa.select(
        identities.c.person_id,
        sa.select(contacts.c.last_inbound_at).where(contacts.c.person_id == identities.c.person_id).scalar_subquery().label("last_inbound_at"),
        sa.select(sa.func.aggregate_strings(_OTHER.c.identifier, " "))
        .where(_OTHER.c.person_id == identities.c.person_id)
        .scalar_subquery()
        .label("identifiers"),
    )
    .where(identities.c.identifier == sa.bindparam("identifier"))
    .subquery("person")
)
# One indexed read for a person's state: their events, each row with the person's facts
# (a person without events yet gives one row of facts and NULL events). Written as IN: SQLite
# plans a join of the person's ids and consent_events inside the outer join as a scan of them all.
_STATE = (
    sa.select(*consent_events.c, _PERSON_FACTS.c.person_id.label("person"), _PERSON_FACTS.c.last_inbound_at, _PERSON_FACTS.c.identifiers)
    .select_from(_PERSON_FACTS.outerjoin(consent_events, consent_events.c.person_id.in_(_MEMBERS)))
    .order_by(consent_events.c.seq)
)
_HISTORY = sa.select(consent_events).where(consent_events.c.person_id.in_(_MEMBERS)).order_by(consent_events.c.seq)
# The events of several people (by the person they are now), in chain order: those recorded
# for them, and those recorded for the people they absorbed.
_PEOPLE: sa.BindParameter[list[str]] = sa.bindparam("people", expanding=True)
_EVENTS_OF_PEOPLE = sa.union_all(
    sa.select(consent_events, consent_events.c.person_id.label("person")).where(consent_events.c.person_id.in_(_PEOPLE)),
    sa.select(consent_events, merged_people.c.person_id.label("person"))
    .join_from(merged_people, consent_events, consent_events.c.person_id == merged_people.c.absorbed)
    .where(merged_people.c.person_id.in_(_PEOPLE)),
).order_by(sa.literal_column("seq"))
_IDENTIFIERS_OF_PEOPLE = sa.select(identities.c.identifier).where(identities.c.person_id.in_(sa.bindparam("people", expanding=True)))
_LAST_INBOUND = sa.select(contacts.c.last_inbound_at).where(contacts.c.person_id == sa.bindparam("person"))
_LAST_INBOUND_OF = sa.select(contacts.c.person_id, contacts.c.last_inbound_at).where(
    contacts.c.person_id.in_(sa.bindparam("people", expanding=True))
)
_CREATE_CONTACT = (  # SQLite, one at a time
    sqlite.insert(contacts)
    .values(person_id=sa.bindparam("person"), last_inbound_at=sa.bindparam("at"))
    .on_conflict_do_nothing(index_elements=["person_id"])
    .returning(contacts.c.person_id)
)
_LOCK_CONTACT = _LAST_INBOUND.with_for_update()
_MOVE_LAST_INBOUND = (
    contacts.update().where(contacts.c.person_id == sa.bindparam("contact")).values(last_inbound_at=sa.bindparam("at"))
)
# PostgreSQL notes any number of people's inbound messages in two statements: the missing
# contacts are inserted (in person order; a row another transaction is inserting is waited
# for), then the others are locked, also in person order, and moved on, their previous times returned.
_NEW_CONTACTS = (
    sa.func.unnest(string_array("people"), sa.cast(sa.bindparam("ats"), postgresql.ARRAY(contacts.c.last_inbound_at.type)))
    .table_valued("person_id", "at")
    .render_derived(name="new_contacts")
)
_CREATE_CONTACTS = (
    postgresql.insert(contacts)
    .from_select(["person_id", "last_inbound_at"], sa.select(_NEW_CONTACTS.c.person_id, _NEW_CONTACTS.c.at).order_by(_NEW_CONTACTS.c.person_id))
    .on_conflict_do_nothing(index_elements=["person_id"])
    .returning(contacts.c.person_id)
)
_LOCKED = (
    sa.select(contacts.c.person_id, contacts.c.last_inbound_at.label("previous"), _NEW_CONTACTS.c.at)
    .join_from(contacts, _NEW_CONTACTS, contacts.c.person_id == _NEW_CONTACTS.c.person_id)
    .order_by(contacts.c.person_id)
    .with_for_update(of=contacts)
    .subquery("locked")
)
_LOCK_AND_MOVE_CONTACTS = (
    contacts.update()
    .where(contacts.c.person_id == _LOCKED.c.person_id)
    .values(last_inbound_at=sa.func.greatest(contacts.c.last_inbound_at, _LOCKED.c.at))
    .returning(contacts.c.person_id, _LOCKED.c.previous)
)


class SourceRefConflict(InvalidEvent):
    """The same source reference was already used for a different event."""


@dataclass(frozen=True)
class Verification:
    ok: bool
    checked: int
    problem: str | None = None
    bad_seq: int | None = None
    checkpoints: int = 0  # signed checkpoints the ledger was held against
    newest: Checkpoint | None = None


class Ledger:
    """Records consent events and answers what they add up to. Knows nothing of Flask."""

    def __init__(
        self, engine: Engine, *, key: LedgerKey, clock: Callable[[], datetime] = utc_now,
        opted_out: Callable[[Iterable[str]], None] = lambda wa_ids: None,
    ):
        """`key` hashes new events and verifies keyed ones (bot.storage.integrity). `opted_out` is
        told, once a transaction has committed, who opted out in it (any scope, newly or already
        recorded), before anyone is told so (bot.outbound.opt_out_marks)."""
        self.engine = engine
        self.key = key
        self._writer = writer(engine)
        self.clock = clock
        self.opted_out = opted_out
        self.known_links = KnownLinks()
        self.feed: Feed | None = None  # where consent changes are forwarded (SPEC §9), in the recording transaction

    # -- writing -------------------------------------------------------------------------

    def append(self, draft: EventDraft) -> ConsentEvent:
        """Record one event, or return the one already recorded under its source_ref."""
        return self.append_many([draft])[0]

    def append_many(self, drafts: Iterable[EventDraft]) -> list[ConsentEvent]:
        """Record several events in one durable transaction: all of them or none. An identifier
        that names nobody yet becomes a new person."""
        now, drafts = self.clock(), list(drafts)
        for attempt in (1, 2):
            try:
                with self._writer.begin() as conn:
                    people = settle(conn, [Sighting((d.identifier,), d.source_ref, now) for d in drafts if d.person_id is None], now).people
                    rows = [self._prepare(d if d.person_id else replace(d, person_id=people[d.identifier]), now) for d in drafts]
                    stored = self.extend_chain(conn, rows)
                    opted_out = self._identifiers_of(conn, {row["person_id"] for row in stored if row["action"] == Action.OPT_OUT})
                break
            except (WriteConflict, sa.exc.IntegrityError):  # another writer's events or people are committed now: the second look sees them
                if attempt == 2:
                    raise
        self.opted_out(opted_out)
        return [to_event(row) for row in stored]

    def record_inbound(self, identifier: str, message_id: str, at: datetime) -> ConsentEvent | None:
        """Note an inbound message; when it opens a new session, log implicit consent (R6).

        Returns the implicit-consent event, or None when the message belongs to a session
        already open (including a redelivery of the same message).
        """
        identifier = _valid_identifier(identifier)
        at = as_utc(at)
        with self._writer.begin() as conn:
            person = settle(conn, [Sighting((identifier,), message_id, at)], self.clock()).people[identifier]
            previous = self.note_inbound(conn, {person: at})[person]
            draft = session_opened(identifier, message_id, at, previous, "webhook")
            return to_event(self.extend_chain(conn, [self.prepare(replace(draft, person_id=person))])[0]) if draft else None

    def _identifiers_of(self, conn: Connection, people: Iterable[str]) -> set[str]:
        """Every identifier these people have now, for the opt-out marks."""
        wanted = list(set(people))
        return set(conn.execute(_IDENTIFIERS_OF_PEOPLE, {"people": wanted}).scalars()) if wanted else set()

    # -- the parts of a write, for a caller's own transaction ------------------------------

    def note_inbound(self, conn: Connection, latest: dict[str, datetime]) -> dict[str, datetime | None]:
        """Lock (or create) these people's contact rows until the transaction ends and move their
        last-inbound times on to `latest` where it is later; return each one's previous time
        (None for a contact created here).

        Rows are taken in person order, so two transactions locking overlapping people cannot
        deadlock; holding them serialises everything done for one person.
        """
        if conn.dialect.name == "postgresql":
            people = sorted(latest)
            created = conn.execute(_CREATE_CONTACTS, {"people": people, "ats": [as_utc(latest[p]) for p in people]}).scalars().all()
            previous: dict[str, datetime | None] = dict.fromkeys(created)
            others = [person for person in people if person not in previous]
            if others:
                moved = conn.execute(_LOCK_AND_MOVE_CONTACTS, {"people": others, "ats": [as_utc(latest[p]) for p in others]})
                previous.update((person, as_utc(at)) for person, at in moved)
            return previous
        previous = {}
        for person in sorted(latest):
            at = as_utc(latest[person])
            if conn.execute(_CREATE_CONTACT, {"person": person, "at": at}).first() is not None:
                previous[person] = None
                continue
            previous[person] = last = as_utc(conn.execute(_LOCK_CONTACT, {"person": person}).scalar_one())
            if at > last:
                conn.execute(_MOVE_LAST_INBOUND, {"contact": person, "at": at})
        return previous

    def rows_of(self, conn: Connection, people: Iterable[str]) -> dict[str, list[sa.RowMapping]]:
        """These people's stored events, in chain order (as `state_of` takes them), in one query."""
        found: dict[str, list[sa.RowMapping]] = {person: [] for person in people}
        if found:
            for row in conn.execute(_EVENTS_OF_PEOPLE, {"people": list(found)}).mappings():
                found[row["person"]].append(row)
        return found

    def prepare(self, draft: EventDraft) -> dict:
        """Check a draft and give it its id and times: a row for `extend_chain`, which adds its place in the chain."""
        return self._prepare(draft, self.clock())

    def extend_chain(self, conn: Connection, rows: list[dict]) -> list[Mapping]:
        """Append prepared rows after the head, which stays locked until the transaction ends;
        return the stored rows, one per given row (`to_event` makes events of them). The feed
        gets the consent changes among those added.

        A row whose source_ref is recorded already is not added: the stored one stands in for it.
        """
        stored = self._extend_chain(conn, rows)
        if self.feed:
            added = [event for event, row in zip(stored, rows) if event["event_id"] == row["event_id"]]
            self.feed.write(conn, self.feed.consents_in(conn, added))
        return stored

    def _extend_chain(self, conn: Connection, rows: list[dict]) -> list[Mapping]:
        if conn.dialect.name != "postgresql":
            return self._extend_row_by_row(conn, rows)
        refs = [row["source_ref"] for row in rows]
        seq, prev_hash, taken = conn.execute(_HEAD_AND_TAKEN, {"refs": refs}).one()
        stored: dict[str, Mapping] = {}
        if taken:
            stored.update((row["source_ref"], row) for row in conn.execute(_BY_SOURCE_REFS, {"refs": taken}).mappings())
        added: list[dict] = []
        for row in rows:
            if row["source_ref"] in stored:
                _check_same_event(stored[row["source_ref"]], row)
                continue
            row = {**row, "seq": seq + 1, "prev_hash": prev_hash}
            row["hash"] = event_hash(row, self.key.chain)
            seq, prev_hash = row["seq"], row["hash"]
            stored[row["source_ref"]] = row
            added.append(row)
        if added:
            values = {"rows": as_json_rows(added), "count": len(added), "new_seq": seq, "new_hash": prev_hash}
            moved = conn.execute(_ADD_AND_MOVE_HEAD, values)
            if moved.first() is None:
                raise WriteConflict("a source_ref was recorded by another transaction meanwhile")
        return [stored[ref] for ref in refs]

    def _extend_row_by_row(self, conn: Connection, rows: list[dict]) -> list[Mapping]:
        """SQLite: writers hold the database's write lock throughout, so no other can interleave."""
        head = conn.execute(_HEAD_FOR_UPDATE).one()
        seq, prev_hash = head.seq, head.hash
        stored: list[Mapping] = []
        for row in rows:
            row = {**row, "seq": seq + 1, "prev_hash": prev_hash}
            row["hash"] = event_hash(row, self.key.chain)
            if conn.execute(_INSERT_IF_NEW, row).first() is None:  # this source_ref is recorded already
                existing = conn.execute(_BY_SOURCE_REF, {"ref": row["source_ref"]}).mappings().one()
                _check_same_event(existing, row)
                stored.append(existing)
                continue
            seq, prev_hash = row["seq"], row["hash"]
            stored.append(row)
        if seq != head.seq:
            conn.execute(_MOVE_HEAD, {"new_seq": seq, "new_hash": prev_hash})
        return stored

    def _prepare(self, draft: EventDraft, now: datetime) -> dict:
        check_draft(draft, now)
        assert draft.person_id is not None, "the caller settles whose event it is"
        try:
            evidence = canonical_json(draft.evidence)
        except (TypeError, ValueError):
            raise InvalidEvent("evidence must be plain JSON (objects, lists, strings, finite numbers)") from None
        if len(evidence.encode()) > MAX_EVIDENCE_BYTES:
            raise InvalidEvent(f"evidence is larger than {MAX_EVIDENCE_BYTES // 1024} KiB")
        return {
            "event_id": str(uuid.uuid4()),
            "identifier": _valid_identifier(draft.identifier),
            "person_id": draft.person_id,
            "action": draft.action.value,
            "scope": draft.scope.value,
            "basis": basis.value if (basis := basis_of(draft.action)) else None,
            "channel": draft.channel.value,
            # PostgreSQL text cannot hold NUL: both backends store U+FFFD instead, so a user's
            # STOP with a stray NUL is recorded rather than refused forever.
            "consent_text": draft.consent_text.replace("\x00", "\ufffd") if draft.consent_text else draft.consent_text,
            "evidence": evidence,
            "source_ref": draft.source_ref,
            "occurred_at": min(as_utc(draft.occurred_at or now), now),  # never after it was recorded (R7)
            "recorded_at": now,
            "recorded_by": draft.recorded_by,
            "hash_version": HASH_VERSION,
        }

    # -- reading -------------------------------------------------------------------------

    def history(self, identifier: str) -> list[ConsentEvent]:
        """The events of the person an identifier names, oldest first: in the order they
        happened, as their state is folded. Under every identifier the person has had."""
        with reading(self.engine) as conn:
            events = [to_event(row) for row in conn.execute(_HISTORY, {"identifier": _valid_identifier(identifier)}).mappings()]
        return [events[at] for at in occurrence_order([(event.occurred_at, event.recorded_at) for event in events])]

    def recorded_refs(self, source_refs: Iterable[str]) -> set[str]:
        """Which of these source references the ledger holds already."""
        refs = list(set(source_refs))
        found: set[str] = set()
        with reading(self.engine) as conn:
            for start in range(0, len(refs), 1000):
                query = sa.select(consent_events.c.source_ref).where(consent_events.c.source_ref.in_(refs[start : start + 1000]))
                found.update(conn.execute(query).scalars())
        return found

    def event(self, event_id: str) -> ConsentEvent | None:
        """One event by its id: the consent behind an outbound message."""
        with reading(self.engine) as conn:
            row = conn.execute(sa.select(consent_events).where(consent_events.c.event_id == event_id)).mappings().first()
        return to_event(row) if row else None

    def state(self, identifier: str) -> ConsentState:
        """What the events of the person an identifier names add up to now, with the 24-hour window.

        Asked before every send, so it is lean: one indexed query, and only the few events the
        state rests on become objects.
        """
        identifier = _valid_identifier(identifier)
        with reading(self.engine) as conn:
            rows = conn.execute(_STATE, {"identifier": identifier}).mappings().all()
        return _state_from_rows(identifier, rows)

    def states(self, identifiers: Iterable[str]) -> dict[str, ConsentState]:
        """Several identifiers' states, in two queries however many: for deciding a whole
        campaign, or a wave of sends, at once."""
        wanted = sorted({_valid_identifier(i) for i in identifiers})
        if len(wanted) == 1:  # the common case of a reply: the cached single-person query is cheaper
            return {wanted[0]: self.state(wanted[0])}
        people: dict[str, str] = {}
        with reading(self.engine) as conn:
            for start in range(0, len(wanted), 1000):
                people.update(find(conn, wanted[start : start + 1000]))
            persons = sorted(set(people.values()))
            rows_by_person: dict[str, list[sa.RowMapping]] = {}
            facts: dict[str, tuple[datetime | None, tuple[str, ...]]] = {}
            for start in range(0, len(persons), 1000):
                chunk = persons[start : start + 1000]
                rows_by_person.update(self.rows_of(conn, chunk))
                last_inbound = dict(conn.execute(_LAST_INBOUND_OF, {"people": chunk}).all())
                for person, ids in identifiers_of(conn, chunk).items():
                    facts[person] = (last_inbound.get(person), ids)
        states = {}
        for identifier in wanted:
            found = people.get(identifier)
            if found is None:
                states[identifier] = ConsentState(identifier)
                continue
            last, ids = facts[found]
            states[identifier] = state_of(identifier, rows_by_person[found], as_utc(last) if last else None, found, ids)
        return states

    def events(
        self, since: datetime | None = None, until: datetime | None = None, identifier: str | None = None
    ) -> Iterator[ConsentEvent]:
        """Stream events in chain order without loading the ledger into memory."""
        query = sa.select(consent_events).order_by(consent_events.c.seq)
        if since is not None:
            query = query.where(consent_events.c.occurred_at >= as_utc(since))
        if until is not None:
            query = query.where(consent_events.c.occurred_at < as_utc(until))
        params = {}
        if identifier is not None:  # the person's events, under every identifier they have had
            query = query.where(consent_events.c.person_id.in_(_MEMBERS))
            params["identifier"] = _valid_identifier(identifier)
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=1000).execute(query, params)
            for row in result.mappings():
                yield to_event(row)

    def head(self) -> tuple[int, str]:
        """The newest event's seq and hash as the head row records them: what a checkpoint signs."""
        with reading(self.engine) as conn:
            seq, head_hash = conn.execute(sa.select(ledger_head.c.seq, ledger_head.c.hash)).one()
        return seq, head_hash

    def verify(self, checkpoints: Sequence[Checkpoint] = ()) -> Verification:
        """Walk the whole chain (keyed events with the key) and hold it against signed checkpoints
        (their signatures checked already: `integrity.load_checkpoints`); name the first sign of tampering."""
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")  # head and events from one snapshot
            head = conn.execute(sa.select(ledger_head.c.seq, ledger_head.c.hash)).one()
            walk = _Walk(self.key.chain, checkpoints, conn.execute(sa.select(sa.func.max(consent_events.c.seq))).scalar() or 0)
            query = sa.select(consent_events).order_by(consent_events.c.seq)
            for row in conn.execution_options(stream_results=True, yield_per=1000).execute(query).mappings():
                if (found := walk.step(row)) is not None:
                    return _broken(walk.checked, *found)
        if (found := walk.finish()) is not None:
            return _broken(walk.checked, *found)
        checked, newest = walk.checked, walk.newest
        if checked == 0:
            count, source = (newest.seq, f"the signed checkpoint of {_moment(newest)}") if newest and newest.seq >= head.seq else (head.seq, "the ledger head")
            if count:
                return _broken(0, 1, f"the ledger is empty but {source} records {count} event(s): the table was truncated")
        if newest and checked < newest.seq:
            return _broken(
                checked, checked + 1,
                f"the ledger ends at seq {checked} but the signed checkpoint of {_moment(newest)} records {newest.seq} event(s): "
                "events were cut from the end",
            )
        if checked < head.seq or (checked == head.seq and walk.prev_hash != head.hash):
            return _broken(
                checked, checked + 1,
                f"the ledger head records {head.seq} events but only {checked} chain up to it: events were removed from the end",
            )
        if checked > head.seq:
            return _broken(
                checked, head.seq + 1,
                f"events after seq {head.seq} are not covered by the ledger head: they were added outside the application",
            )
        return Verification(ok=True, checked=checked, checkpoints=len(checkpoints), newest=newest)


def state_of(
    identifier: str, rows: Sequence[Mapping], last_inbound_at: datetime | None,
    person_id: str | None = None, identifiers: tuple[str, ...] = (),
) -> ConsentState:
    """A person's state from their event rows in chain order (stored rows, then prepared ones
    not written yet), folded in the order they happened: only the few rows the state rests on become events."""
    order = occurrence_order([(as_utc(row["occurred_at"]), as_utc(row["recorded_at"])) for row in rows])
    folded = fold([(rows[at]["action"], rows[at]["scope"], rows[at]["channel"]) for at in order])
    return state_from_fold(
        identifier, folded, lambda position: to_event(rows[order[position]]), last_inbound_at, person_id, identifiers
    )


def _state_from_rows(identifier: str, rows: Sequence[sa.RowMapping]) -> ConsentState:
    """The state from `_STATE`'s rows: none for an identifier naming nobody; one row of NULL
    events for a person without events."""
    if not rows:
        return ConsentState(identifier)
    facts = rows[0]
    events = rows if facts["seq"] is not None else []
    last = as_utc(facts["last_inbound_at"]) if facts["last_inbound_at"] else None
    return state_of(identifier, events, last, facts["person"], tuple(sorted(facts["identifiers"].split(" "), key=phones_first)))


def _broken(checked: int, seq: int, problem: str) -> Verification:
    return Verification(ok=False, checked=checked, problem=problem, bad_seq=seq)


def _moment(checkpoint: Checkpoint) -> str:
    return checkpoint.at.isoformat(timespec="seconds")


class _Walk:
    """`Ledger.verify`'s pass over the chain in seq order: what the next event must match, and
    the signed checkpoints it must agree with. `step` and `finish` give (seq, problem) or None."""

    def __init__(self, key: bytes, checkpoints: Sequence[Checkpoint], last_seq: int):
        self.key, self.last_seq = key, last_seq
        self.expected, self.prev_hash, self.checked = 1, GENESIS_HASH, 0
        self.signed: dict[int, list[Checkpoint]] = {}
        for checkpoint in checkpoints:
            self.signed.setdefault(checkpoint.seq, []).append(checkpoint)
        self.newest = max(checkpoints, key=lambda checkpoint: (checkpoint.seq, checkpoint.at), default=None)
        # Only code with the key writes after a keyed event or a checkpoint, and it writes keyed
        # events (the database refuses others since revision 0006): an unkeyed one there is forged.
        self.keyed_from = min(self.signed) + 1 if self.signed else None
        self.suspect: Mapping | None = None  # a keyed event whose hash does not match: edited, or forged?

    def step(self, row: Mapping) -> tuple[int, str] | None:
        seq, version, what = row["seq"], row["hash_version"], f"event seq {row['seq']} ({row['event_id']})"
        if self.suspect is not None:  # a good keyed event right after it vouches for its stored hash
            suspect = self.suspect
            vouched = (
                seq == suspect["seq"] + 1 and version in _KEYED and row["prev_hash"] == suspect["hash"]
                and event_hash(row, self.key) == row["hash"]
            )
            return suspect["seq"], self._altered(suspect) if vouched else self._unvouched(suspect)
        if seq != self.expected:
            return self.expected, f"event seq {self.expected} is missing (next found: seq {seq}): events were deleted"
        if row["prev_hash"] != self.prev_hash:
            return seq, f"{what} does not follow seq {seq - 1}: an event was removed, inserted or reordered"
        if version not in _HASHES:
            return seq, f"{what} has hash version {version}, which this code does not know"
        if event_hash(row, self.key) != row["hash"]:
            if version not in _KEYED or any(c.head_hash == row["hash"] for c in self.signed.get(seq, ())):
                return seq, self._altered(row)
            self.suspect = row  # the next event tells which
            return None
        if version in _KEYED:
            self.keyed_from = min(self.keyed_from or seq, seq)
        elif self.keyed_from is not None and seq >= self.keyed_from:
            return seq, self._unvouched(row)
        if version == 1 and row["person_id"] != legacy_person_id(row["identifier"]):
            return seq, f"{what} was moved to another person"
        for checkpoint in self.signed.get(seq, ()):
            if checkpoint.head_hash != row["hash"]:
                return seq, (
                    f"{what} is not the event the signed checkpoint of {_moment(checkpoint)} recorded: "
                    "the chain up to it was rewritten (re-chained)"
                )
        self.expected, self.prev_hash, self.checked = seq + 1, row["hash"], self.checked + 1
        return None

    def finish(self) -> tuple[int, str] | None:
        """A suspect event last in the chain: nothing keyed vouches for it."""
        return (self.suspect["seq"], self._unvouched(self.suspect)) if self.suspect is not None else None

    @staticmethod
    def _altered(row: Mapping) -> str:
        keyed = " keyed" if row["hash_version"] in _KEYED else ""
        return f"event seq {row['seq']} ({row['event_id']}) was altered: its content does not match its{keyed} hash"

    def _unvouched(self, row: Mapping) -> str:
        """An event without a hash only the key gives: forged, or, where a signed checkpoint had
        seen the chain past it, the start of a chain hashed again (after a deletion when shorter now)."""
        what, newest = f"event seq {row['seq']} ({row['event_id']})", self.newest
        if newest is not None and newest.seq >= row["seq"]:
            after = " after a deletion" if self.last_seq < newest.seq else ""
            return (
                f"{what} and the events after it were re-chained{after}: hashed again without the signing key, "
                f"where the signed checkpoint of {_moment(newest)} covers seq {newest.seq}"
            )
        if row["hash_version"] in _KEYED:
            return f"{what} was forged without the signing key: its hash is not the keyed hash of its content"
        return f"{what} was forged without the signing key: an unkeyed (version {row['hash_version']}) event after keyed ones or a signed checkpoint"


def _valid_identifier(identifier: str) -> str:
    try:
        normalized = normalize_identifier(identifier)
    except InvalidIdentifier as error:
        raise InvalidEvent(str(error)) from None
    if normalized != identifier:
        raise InvalidEvent("wa_id must be digits only (country code first, no + or spaces)")
    return identifier


def _check_same_event(existing: Mapping, row: dict) -> None:
    if (existing["identifier"], existing["action"], existing["scope"]) != (row["identifier"], row["action"], row["scope"]):
        raise SourceRefConflict(f"source_ref {row['source_ref']!r} was already used for a different event")
