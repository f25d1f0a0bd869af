"""Events for the business's own systems (SPEC §9), kept in the database until delivered.

An event is written in the same transaction as what it tells of (the inbound message, the
status, the consent event), so nothing is forwarded that was not recorded and nothing recorded
is lost to a restart or a Redis flush. The workers deliver them (bot.outbound.forwarder): per
person and destination strictly in `seq` order, the oldest pending event first and the next
only once it is done; an event not delivered is tried again with exponential back-off, and kept
as failed once it has waited GIVE_UP_AFTER. Its `id` is the receiver's idempotency key:
delivery is at least once.
"""
from __future__ import annotations

import enum
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from bot.domain.identity import IdentifierKind, kind_of
from bot.storage.db import insert_once, one_statement, reading
from bot.storage.ledger import as_utc, utc_now
from bot.storage.people import identifiers_of
from bot.storage.schema import conversations
from bot.storage.schema import forwarded_events as events

log = logging.getLogger(__name__)

GIVE_UP_AFTER = timedelta(days=3)
LONGEST_WAIT = timedelta(hours=1)  # between two tries of one event
KEEP_DELIVERED = timedelta(days=7)  # delivered events stay this long, for `flask forward status`
CONSENT_CHANGES = ("opt_in", "opt_out")
_EVENT_IDS = uuid.UUID("6f1d7c2e-5b1a-4c8e-9a57-3f2b8d0e4a61")  # the namespace of ids made from what Meta sent  # the ledger actions forwarded as consent changes


class Destination(str, enum.Enum):
    URL = "url"  # FORWARD_URL: every kind of event
    HANDLERS = "handlers"  # BOT_HANDLERS: inbound messages for the business's Python handlers


class EventType(str, enum.Enum):
    MESSAGE = "message"
    STATUS = "status"
    CONSENT = "consent"


class Delivery(str, enum.Enum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class Pending:
    """An event claimed for delivery."""

    seq: int
    id: str
    destination: Destination
    person_id: str
    type: EventType
    body: str
    attempts: int  # counting this one
    created_at: datetime
    handled_by: str | None  # the staff member handling the person's conversation now, if one does

    def delivered_body(self) -> str:
        """The body as delivered: a message event says who handles the conversation now (its
        stored body ends with its last field; the JSON is compact)."""
        if self.type is not EventType.MESSAGE:
            return self.body
        return f'{self.body[:-1]},"conversation":{json.dumps({"handled_by": self.handled_by})}}}'


@dataclass(frozen=True)
class Summary:
    """One destination's delivery, for `flask forward status` and the console."""

    destination: Destination
    pending: int
    failed: int
    delivered: int  # in the last KEEP_DELIVERED
    oldest_pending: datetime | None
    last_error: str | None
    last_error_at: datetime | None


def person_of(identifiers: Iterable[str]) -> dict[str, str | None]:
    """The `person` of an event: the person's phone and BSUID (either may be unknown)."""
    identifiers = list(identifiers)
    phone = next((i for i in identifiers if kind_of(i) is IdentifierKind.PHONE), None)
    user_id = next((i for i in identifiers if kind_of(i) is IdentifierKind.USER_ID), None)
    return {"wa_id": phone, "user_id": user_id}


class Feed:
    """Turns what was recorded into events for the configured destinations, in the caller's
    transaction. Without destinations it writes nothing."""

    def __init__(
        self, destinations: Iterable[Destination], clock: Callable[[], datetime] = utc_now,
        wake: Callable[[], None] = lambda: None,
    ):
        """`wake`: tells the workers, once events were committed, that there is work (they also look every second)."""
        self.destinations = tuple(destinations)
        self.clock = clock
        self._wake = wake

    def wake(self) -> None:
        try:
            self._wake()
        except Exception:  # Redis down: the workers' next look finds the events all the same
            log.warning("could not wake the forwarders; they will find the events within a second")

    def __bool__(self) -> bool:
        return bool(self.destinations)

    @property
    def reaches_url(self) -> bool:
        """Whether FORWARD_URL is set: statuses and consent changes go there only."""
        return Destination.URL in self.destinations

    def event(
        self, type: EventType, person_id: str, person: Mapping[str, str | None], occurred_at: datetime,
        payload: Mapping[str, object], to: Iterable[Destination] | None = None, once_per: str | None = None,
    ) -> list[dict]:
        """The rows of one event, one per destination that takes it (`to`: only these). With
        `once_per` (what Meta sent it for: a message id), its id is made from it, so that the
        same message delivered by Meta again is not an event again."""
        now = self.clock()
        wanted = [d for d in self.destinations if (to is None or d in to) and (d is Destination.URL or type is EventType.MESSAGE)]
        rows = []
        for destination in wanted:
            event_id = str(uuid.uuid5(_EVENT_IDS, f"{destination.value}:{once_per}") if once_per else uuid.uuid4())
            body = {"id": event_id, "type": type.value, "occurred_at": occurred_at.isoformat(), "person": dict(person), **payload}
            rows.append({
                "id": event_id, "destination": destination.value, "person_id": person_id, "type": type.value,
                "body": json.dumps(body, separators=(",", ":")),  # ASCII (escapes): always storable
                "state": Delivery.PENDING.value,
                "attempts": 0, "created_at": now, "next_attempt_at": now,
            })
        return rows

    def consents_in(self, conn: Connection, recorded: Iterable[Mapping]) -> list[dict]:
        """The consent changes among ledger rows just recorded."""
        changes = [row for row in recorded if row["action"] in CONSENT_CHANGES]
        if not self.reaches_url or not changes:
            return []
        known = identifiers_of(conn, {row["person_id"] for row in changes})
        rows = []
        for row in changes:
            consent = {
                "event_id": row["event_id"], "action": row["action"], "scope": row["scope"], "channel": row["channel"],
                "recorded_by": row["recorded_by"], "consent_text": row["consent_text"],
            }
            person = person_of(known.get(row["person_id"]) or [row["identifier"]])
            rows += self.event(EventType.CONSENT, row["person_id"], person, row["occurred_at"], {"consent": consent}, [Destination.URL])
        return rows

    def statuses(self, moved: Iterable[Mapping]) -> list[dict]:
        """Events for outbound messages that moved on (id, recipient, sent_to, person_id, state, ...)."""
        if not self.reaches_url:
            return []
        rows = []
        for message in moved:
            person = person_of(i for i in (message["sent_to"], message["recipient"]) if i)
            status = {
                "id": message["id"], "meta_message_id": message["meta_message_id"], "status": message["state"],
                "reason": message["reason"], "error_code": message["error_code"], "campaign_id": message["campaign_id"],
            }
            person_id = message["person_id"] or str(uuid.uuid5(uuid.NAMESPACE_URL, f"whatsapp:{message['recipient']}"))
            rows += self.event(EventType.STATUS, person_id, person, self.clock(), {"message": status}, [Destination.URL])
        return rows

    @staticmethod
    def write(conn: Connection, rows: list[dict]) -> None:
        """Add the events, but those already there (by id)."""
        if rows:
            conn.execute(insert_once(conn, events, ["id"]), rows)


class ForwardQueue:
    """The delivery side: what the workers claim, and what became of it."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utc_now, first_retry: timedelta = timedelta(seconds=10)):
        self.engine, self.clock, self.first_retry = engine, clock, first_retry
        self._front_short_until: dict[Destination, datetime] = {}  # until then, the front held every pending event

    def claim(self, destination: Destination, limit: int, busy: Iterable[str] = (), lease: timedelta = timedelta(seconds=60)) -> list[Pending]:
        """Lease the oldest pending event of up to `limit` people whose oldest is due and not
        leased (nor, `busy`, in this process's hands)."""
        now = self.clock()
        values = {"for_destination": destination.value, "now": now, "until": now + lease, "limit": limit, "busy": sorted(busy) or [""]}
        with one_statement(self.engine) as conn:
            rows = list(conn.execute(_CLAIM_FROM_FRONT, values).mappings())
            if len(rows) < limit and now >= self._front_short_until.get(destination, now):
                if conn.execute(_FRONT_FULL, values).first() is None:
                    self._front_short_until[destination] = now + FRONT_LOOK_AGAIN  # everything pending was looked at
                else:
                    rows += conn.execute(_CLAIM_FROM_ALL, values | {"limit": limit - len(rows)}).mappings().all()
        return [
            Pending(
                r["seq"], r["id"], destination, r["person_id"], EventType(r["type"]), r["body"], r["attempts"],
                as_utc(r["created_at"]), r["handled_by"],
            )
            for r in sorted(rows, key=lambda r: r["seq"])
        ]

    def delivered(self, delivered: list[Pending]) -> None:
        """These were delivered: one statement for all."""
        with one_statement(self.engine) as conn:
            conn.execute(_DELIVERED, {"seqs": [event.seq for event in delivered], "now": self.clock()})

    def not_delivered(self, event: Pending, error: str) -> bool:
        """Try again later, or keep it as failed once it has waited GIVE_UP_AFTER; whether it will be tried again."""
        now = self.clock()
        if now - event.created_at >= GIVE_UP_AFTER:
            self.failed(event, error)
            return False
        wait = min(self.first_retry * 2 ** min(event.attempts - 1, 30), LONGEST_WAIT)  # the cap before the power overflows
        with one_statement(self.engine) as conn:
            conn.execute(
                events.update().where(events.c.seq == event.seq, events.c.state == Delivery.PENDING.value)
                .values(next_attempt_at=min(now + wait, event.created_at + GIVE_UP_AFTER), lease_until=None, last_error=error[:255])
            )
        return True

    def failed(self, event: Pending, error: str) -> None:
        """Kept as failed now, without more tries (given up on, or a handler that raised)."""
        with one_statement(self.engine) as conn:
            conn.execute(
                events.update().where(events.c.seq == event.seq, events.c.state == Delivery.PENDING.value)
                .values(state=Delivery.FAILED.value, finished_at=self.clock(), lease_until=None, last_error=error[:255])
            )

    def retry_failed(self, destination: Destination | None = None) -> int:
        """Send the failed events again, from now on (`flask forward retry`); how many."""
        now = self.clock()
        where = [events.c.state == Delivery.FAILED.value]
        if destination is not None:
            where.append(events.c.destination == destination.value)
        with one_statement(self.engine) as conn:
            return conn.execute(
                events.update().where(*where).values(
                    state=Delivery.PENDING.value, attempts=0, created_at=now, next_attempt_at=now, finished_at=None,
                )
            ).rowcount

    def forget_delivered(self) -> int:
        """Remove events delivered more than KEEP_DELIVERED ago; how many."""
        with one_statement(self.engine) as conn:
            return conn.execute(
                events.delete().where(events.c.state == Delivery.DELIVERED.value, events.c.finished_at < self.clock() - KEEP_DELIVERED)
            ).rowcount

    def summary(self) -> list[Summary]:
        """Each destination's pending, failed and recently delivered events, and its last error."""
        with reading(self.engine) as conn:
            counts = conn.execute(
                sa.select(events.c.destination, events.c.state, sa.func.count(), sa.func.min(events.c.created_at))
                .group_by(events.c.destination, events.c.state)
            ).all()
            errors = conn.execute(
                sa.select(events.c.destination, events.c.last_error, sa.func.coalesce(events.c.finished_at, events.c.next_attempt_at))
                .where(events.c.last_error.is_not(None))
                .order_by(sa.func.coalesce(events.c.finished_at, events.c.next_attempt_at).desc())
                .limit(50)
            ).all()
        summaries = []
        for destination in Destination:
            mine = {state: (count, oldest and as_utc(oldest)) for d, state, count, oldest in counts if d == destination.value}
            error = next(((text, as_utc(at)) for d, text, at in errors if d == destination.value), (None, None))
            pending = mine.get(Delivery.PENDING.value, (0, None))
            summaries.append(Summary(
                destination, pending[0], mine.get(Delivery.FAILED.value, (0, None))[0],
                mine.get(Delivery.DELIVERED.value, (0, None))[0], pending[1], *error,
            ))
        return summaries

    def failures(self, limit: int = 50) -> list[dict]:
        """The newest failed events: id, destination, type, person_id, created_at, finished_at, attempts, last_error."""
        with reading(self.engine) as conn:
            found = conn.execute(
                sa.select(events.c.id, events.c.destination, events.c.type, events.c.person_id, events.c.created_at,
                          events.c.finished_at, events.c.attempts, events.c.last_error)
                .where(events.c.state == Delivery.FAILED.value).order_by(events.c.seq.desc()).limit(limit)
            ).mappings().all()
        return [{**row, "created_at": as_utc(row["created_at"]), "finished_at": as_utc(row["finished_at"])} for row in found]


# Each person's oldest pending event, when it is due and nobody holds it; leased in one statement.
# Another worker's claim of the same event at the same moment finds it leased and skips it.
# The quick way looks only at the FRONT oldest pending events: the oldest of a person there is
# their oldest of all, as the front holds every pending event before it. Only when the front is
# full and offers too few (people there wait for a retry, and those behind them are due) does a
# claim look at every pending event.
FRONT = 5000
FRONT_LOOK_AGAIN = timedelta(seconds=1)  # after finding fewer pending events than FRONT
_PENDING = (events.c.state == Delivery.PENDING.value, events.c.destination == sa.bindparam("for_destination"))
_DUE = (
    events.c.state == Delivery.PENDING.value,
    events.c.next_attempt_at <= sa.bindparam("now"),
    sa.or_(events.c.lease_until.is_(None), events.c.lease_until < sa.bindparam("now")),
)
_FRONT = sa.select(events.c.seq, events.c.person_id).where(*_PENDING).order_by(events.c.seq).limit(FRONT).subquery("front")
_FRONT_FULL = sa.select(events.c.seq).where(*_PENDING).order_by(events.c.seq).offset(FRONT - 1).limit(1)


_HANDLED_BY = sa.select(conversations.c.handled_by).where(conversations.c.person_id == events.c.person_id).scalar_subquery()


def _claim(heads: sa.Select) -> sa.Update:
    chosen = (
        sa.select(events.c.seq)
        .where(events.c.seq.in_(heads), *_DUE, events.c.person_id.not_in(sa.bindparam("busy", expanding=True)))
        .order_by(events.c.seq)
        .limit(sa.bindparam("limit"))
    )
    return (
        events.update()
        .where(events.c.seq.in_(chosen.scalar_subquery()), *_DUE)
        .values(lease_until=sa.bindparam("until"), attempts=events.c.attempts + 1)
        .returning(
            events.c.seq, events.c.id, events.c.person_id, events.c.type, events.c.body, events.c.attempts, events.c.created_at,
            _HANDLED_BY.label("handled_by"),
        )
    )


_CLAIM_FROM_FRONT = _claim(sa.select(sa.func.min(_FRONT.c.seq)).group_by(_FRONT.c.person_id))
_CLAIM_FROM_ALL = _claim(sa.select(sa.func.min(events.c.seq)).where(*_PENDING).group_by(events.c.person_id))
_DELIVERED = (
    events.update()
    .where(events.c.seq.in_(sa.bindparam("seqs", expanding=True)), events.c.state == Delivery.PENDING.value)
    .values(state=Delivery.DELIVERED.value, finished_at=sa.bindparam("now"), lease_until=None)
)
