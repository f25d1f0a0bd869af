"""One webhook POST's effects, gathered while its events are handled and written in one transaction.

A POST may only be acknowledged once its consent events are durable, and Meta expects the
answer fast. Recording each effect in its own transaction cost a new user's hello five
transactions and two turns on the ledger head; here the handlers ask and record through an
`Intake`, which reads each sender's contact and events once (their rows locked, so a duplicate
delivery in another process waits, then sees everything this one did), keeps their state
current in memory as events are added, and at the end writes the outbox rows, then the ledger
events under one short hold of the head, and commits. Replies are queued after the commit,
one RQ call per queue.

Optimistic about idempotency keys: a key stored by an earlier delivery shows up as a
conflict (WriteConflict) when the rows are written, and the whole POST is done again, looking keys up first.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from bot.domain.consent import Action, ConsentState, EventDraft, session_opened
from bot.domain.identity import phones_first
from bot.inbound.events import InboundMessage, MessageType
from bot.storage.conversations import content_of, keep, message_row
from bot.storage.db import WriteConflict, insert_once, writer
from bot.storage.forwarding import Destination, EventType, person_of
from bot.storage.ledger import Ledger, as_utc, state_of
from bot.storage.outbox import Billed, Billing, Message, Outbox, Question, QueueName, Submission, asked_opt_in, submitted, template_key
from bot.storage.people import Move, Sighting, move, settle
from bot.storage.schema import account_notices, unread_webhooks

log = logging.getLogger(__name__)

FORWARDED = (None, "possible_opt_out")  # what messages meant that are forwarded: conversation, and words for staff to review
BILLING_DISCREPANCY = "billing_discrepancy"  # the account notice's field: billed as marketing, decided otherwise


class Intake:
    """What one POST records. Every identifier it records, answers or reads the state of must
    first be named in `settle` (the contacts of the people who wrote stay locked until the commit)."""

    def __init__(self, conn: Connection, ledger: Ledger, outbox: Outbox, careful: bool = False):
        """`careful`: look idempotency keys up before deciding (after a `WriteConflict`)."""
        self.conn, self.ledger, self.outbox, self.careful = conn, ledger, outbox, careful
        self.now = ledger.clock()
        self._people: dict[str, str] = {}  # identifier -> person, for every identifier settled
        self._identifiers: dict[str, tuple[str, ...]] = {}  # person -> every identifier they have, phone first
        self._last_inbound: dict[str, datetime | None] = {}  # per person who wrote
        self._events: dict[str, list] = {}  # per person who wrote: stored rows, then the rows this POST adds
        self._states: dict[str, ConsentState] = {}  # per person who wrote, until their events or last inbound time change
        self._drafts: list[dict] = []
        self._messages: list[dict] = []
        self._submitted: dict[str, Submission] = {}
        self._to_queue: dict[QueueName, list[str]] = {}
        self._statuses: list[tuple[str, str, int | None]] = []
        self._billing: dict[str, Billing] = {}  # Meta message id -> what Meta bills it as
        self._opted_out: set[str] = set()  # people with an opt-out in this POST, new or recorded before
        self.opted_out: set[str] = set()  # their identifiers, once the POST is written
        self._kept: list[tuple[dict, InboundMessage, str | None, dict | None]] = []  # row, message, meaning, consent
        self.forwarded = False  # whether the POST wrote events for the business's systems

    def settle(self, sightings: Iterable[Sighting], moves: Iterable[Move], inbound: Iterable[tuple[str, datetime]]) -> None:
        """Give each identifier seen its person (linking those seen together), move the people
        Meta says moved, then lock (or create) the contacts of the (sender, sent at) pairs, note
        their latest inbound times, and read their events."""
        settled = settle(self.conn, list(sightings), self.now, self.ledger.known_links)
        self._people.update(settled.people)
        drafts = settled.events
        left: set[str] = set()  # identifiers people moved away from: they name nobody now
        for change in moves:
            person, moved = move(self.conn, change, self.now)
            self._people.update(dict.fromkeys(change.joined, person))
            left.update(i for i in change.left if i not in change.joined)
            drafts.extend(moved)
        shown: dict[str, list[str]] = {}
        for identifier, person in self._people.items():
            if identifier not in left:
                shown.setdefault(person, []).append(identifier)
        self._identifiers = {person: tuple(sorted(ids, key=phones_first)) for person, ids in shown.items()}
        latest: dict[str, datetime] = {}
        for identifier, at in inbound:
            person, at = self._people[identifier], self._clamp(at)
            latest[person] = max(at, latest.get(person, at))
        if latest:
            self._last_inbound.update(self.ledger.note_inbound(self.conn, latest))
            self._events.update(self.ledger.rows_of(self.conn, set(latest) - settled.new_people))
            self._events.update((person, []) for person in set(latest) & settled.new_people)  # made just now: nothing to read
        for draft in drafts:
            self.record(draft)

    def inbound(self, identifier: str, message_id: str, sent_at: datetime, recorded_by: str) -> None:
        """A message from a settled sender; when it opens a session, record implicit consent (R6)."""
        person = self._people[identifier]
        at, previous = self._clamp(sent_at), self._last_inbound[person]
        if previous is None or at > previous:
            self._last_inbound[person] = at
            self._states.pop(person, None)
        draft = session_opened(identifier, message_id, at, previous, recorded_by)
        if draft is not None:
            self.record(draft)

    def state(self, identifier: str) -> ConsentState:
        """The state of a settled sender's person, counting what this POST recorded so far."""
        person = self._people[identifier]
        if person not in self._states:
            self._states[person] = state_of(identifier, self._events[person], self._last_inbound[person], person, self._identifiers[person])
        return replace(self._states[person], identifier=identifier)

    def asked_opt_in(self, identifier: str, quoted_id: str | None, answered_at: datetime) -> Question | None:
        """The bot's opt-in question that a yes from a settled sender answers, if any."""
        return asked_opt_in(self.conn, self._identifiers[self._people[identifier]], quoted_id, self._clamp(answered_at))

    def record(self, draft: EventDraft) -> None:
        """Add a ledger event (written at the end); an event already stored under its source_ref is not added again."""
        if draft.person_id is None:
            draft = replace(draft, person_id=self._people[draft.identifier])
        row = self.ledger.prepare(draft)
        if draft.action is Action.OPT_OUT:
            self._opted_out.add(row["person_id"])
        events = self._events.get(row["person_id"])
        if events is not None:
            if any(stored["source_ref"] == row["source_ref"] for stored in events):
                return
            events.append({**row, "seq": 0, "prev_hash": "", "hash": ""})  # its place in the chain comes at the end
            self._states.pop(row["person_id"], None)
        self._drafts.append(row)

    def submit(self, message: Message, key: str, requested_by: str, queue: QueueName) -> Submission:
        """`Outbox.submit` for a locked user, deciding on the state this POST has built."""
        if key in self._submitted:
            return self._submitted[key]
        if self.careful and (known := submitted(self.conn, [key])):
            return self._submitted.setdefault(key, known[key])
        submission, row = self.outbox.draft(message, key, self.state(message.to), requested_by, queue, self.now)
        self._messages.append(row)
        if submission.queued:
            self._to_queue.setdefault(queue, []).append(row["id"])
        return self._submitted.setdefault(key, submission)

    def keep_message(self, message: InboundMessage, meaning: str | None) -> None:
        """Keep a settled sender's message for the console (written at the end) and, where it is
        forwarded, the person's consent state now, to go with it."""
        consent = None
        if self.outbox.feed and meaning in FORWARDED and message.type is not MessageType.REVOKE:  # a revoke's sender's state was not read
            state = self.state(message.sender)
            until = state.window_open_until(self.now)
            consent = {
                "state": state.state.value, "marketing": state.marketing.value,
                "window_open_until": until.isoformat() if until else None,
            }
        self._kept.append((message_row(message, self._people[message.sender], meaning, self.now), message, meaning, consent))

    def apply_status(self, meta_message_id: str, status: str, error_code: int | None, billing: Billing | None = None) -> None:
        """A delivery status, applied at the end with the others, with what Meta bills the message as."""
        self._statuses.append((meta_message_id, status, error_code))
        if billing is not None:
            self._billing.setdefault(meta_message_id, billing)

    def keep_once(self, table: sa.Table, **values: object) -> bool:
        """A row kept for staff or inspection (an account notice, an unread item), once: where a
        row with the same `digest` is there already (a redelivery), nothing. Whether it was added."""
        added = self.conn.execute(insert_once(self.conn, table, ["digest"]).values(**values).returning(table.c.digest))
        return added.first() is not None

    def keep_unread(self, reason: str, raw: str) -> None:
        """A webhook item nobody could read, kept for inspection."""
        reason = reason[:255]
        self.keep_once(unread_webhooks, received_at=self.now, reason=reason, raw=raw, digest=digest_of(reason, raw))

    def finish(self) -> dict[QueueName, list[str]]:
        """Write what was gathered; return the message ids to queue once the transaction commits."""
        if self._kept:
            keep(self.conn, [(row, message) for row, message, _, _ in self._kept])
            self._forward_messages()
        if self._statuses:
            self.outbox.apply_statuses_in(self.conn, self._statuses)
        if self._billing:
            self._keep_billing_discrepancies(self.outbox.note_billing_in(self.conn, self._billing))
        if self._messages and len(self.outbox.store_new(self.conn, self._messages)) < len(self._messages):
            raise WriteConflict("an idempotency key was stored by another delivery")
        if self._drafts:
            stored = self.ledger.extend_chain(self.conn, self._drafts)
            for event, row in zip(stored, self._drafts):
                if event["event_id"] != row["event_id"] and row["person_id"] in self._events:
                    raise WriteConflict(f"{row['source_ref']} was recorded by another delivery")
        self.opted_out = {i for person in self._opted_out for i in self._identifiers.get(person, ())}
        return self._to_queue

    def _forward_messages(self) -> None:
        """Messages that were no consent keyword go to the business's systems; a possible
        opt-out only to FORWARD_URL (staff review it; no handler answers it)."""
        feed = self.outbox.feed
        forwarded = [kept for kept in self._kept if kept[2] in FORWARDED]
        if not feed or not forwarded:
            return
        rows = []
        for row, message, meaning, consent in forwarded:
            person = row["person_id"]
            payload: dict[str, object] = {
                "message": {"id": message.message_id, "type": message.type.value, "text": message.text, **content_of(message)},
                "consent": consent,  # and `conversation`, as it is when delivered (bot.outbound.forwarder)
            }
            if meaning is not None:
                payload["review"] = meaning
            to = None if meaning is None else [Destination.URL]
            rows += feed.event(
                EventType.MESSAGE, person, person_of(self._identifiers[person]), row["sent_at"], payload, to, f"message:{message.message_id}",
            )
        feed.write(self.conn, rows)
        self.forwarded = True

    def _keep_billing_discrepancies(self, billed: list[Billed]) -> None:
        """A message Meta bills as marketing that was not decided on marketing consent is kept
        for staff as an account notice (once) and logged: either the catalog was wrong when it
        was sent, or Meta filed it differently."""
        for message in billed:
            if not message.marketing_decided_otherwise:
                continue
            template = template_key(json.loads(message.content))
            log.warning("message %s billed by Meta as %s, decided as %s", message.id, message.category, message.kind)
            details = {
                "message_id": message.id, "meta_message_id": message.meta_message_id, "decided_as": message.kind,
                "billed_as": message.category, "template": list(template) if template else None, "campaign_id": message.campaign_id,
            }
            self.keep_once(
                account_notices, received_at=self.now, field=BILLING_DISCREPANCY, event="BILLED_AS_MARKETING",
                details=json.dumps(details, sort_keys=True), subject=message.id, occurred_at=self.now,
                digest=digest_of(BILLING_DISCREPANCY, message.id),
            )

    def _clamp(self, at: datetime) -> datetime:
        """Meta's clock may run a little ahead of ours; the ledger refuses events from the future."""
        return min(as_utc(at), self.now)


def digest_of(*parts: str) -> str:
    """What tells one kept row from another (a lone surrogate in a part hashes too)."""
    return hashlib.sha256("\n".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


def record(ledger: Ledger, outbox: Outbox, handle: Callable[[Intake], None]) -> None:
    """Run `handle` on an Intake in one transaction, tell the ledger's listener who opted out,
    then queue the replies it allowed.

    After a `WriteConflict` (or a unique key another process took first) it runs once more, looking
    keys up first. A queuing failure after the commit loses nothing: the rows stay queued and
    the sweeper queues them again.
    """
    for careful in (False, True):
        try:
            with writer(ledger.engine).begin() as conn:
                intake = Intake(conn, ledger, outbox, careful)
                handle(intake)
                to_queue = intake.finish()
            break
        except (WriteConflict, sa.exc.IntegrityError):
            if careful:
                raise
    ledger.opted_out(intake.opted_out)  # before the replies and the 200: send threads look there last
    for queue, message_ids in to_queue.items():
        outbox.enqueue(queue, message_ids)
    if intake.forwarded:
        outbox.feed.wake()
