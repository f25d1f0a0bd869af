"""The outbox: every message the business sends is asked of the policy, stored, then queued.

`Outbox.submit` is the one entry point for handlers, the staff API and campaigns. A refusal is
stored with its reason (state `blocked`) and returned; an allowed message is stored with the
consent event that allowed it and handed to the queue. The same idempotency key submitted
twice is one message. The send-side methods (claim, mark_*) are used by the send job.
"""
from __future__ import annotations

import enum
import functools
import itertools
import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from bot.domain.consent import SERVICE_WINDOW, ConsentState
from bot.domain.identity import InvalidIdentifier, normalize_identifier
from bot.domain.policy import Decision, ImplicitCoverage, MessageKind, Refusal, decide
from bot.storage.db import as_json_rows, json_records, json_rows, one_statement, reading, string_array, writer
from bot.storage.forwarding import Feed
from bot.storage.ledger import Ledger, as_utc, utc_now
from bot.storage.schema import campaigns, early_statuses
from bot.storage.schema import outbound_messages as messages
from bot.storage.templates import TemplateCatalog, verdict

Verdict = MessageKind | Refusal  # what Meta's catalog makes of a template: the kind to decide on, or why not at all


def template_key(content: dict[str, Any]) -> tuple[str, str] | None:
    """A stored message's template as the catalog keys it: (name, language); None for a text."""
    template = content.get("template")
    return (template["name"], template["language"]) if template else None


class QueueName(str, enum.Enum):
    REPLIES = "replies"  # answers to users: small, latency matters
    BULK = "bulk"  # campaigns and staff sends


class MessageState(str, enum.Enum):
    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    BLOCKED = "blocked"


@dataclass(frozen=True)
class Template:
    name: str
    language: str
    components: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Message:
    """What to send to whom (a phone or a BSUID): a text or a template, and its kind for the policy."""

    to: str
    kind: MessageKind
    text: str | None = None
    template: Template | None = None
    language: str | None = None  # of a text the bot wrote (its opt-in question): the answer is confirmed in it

    def content(self) -> dict[str, Any]:
        if self.template is not None:
            t = self.template
            return {"template": {"name": t.name, "language": t.language, "components": t.components}}
        return {"text": self.text} if self.language is None else {"text": self.text, "language": self.language}


@dataclass(frozen=True)
class Submission:
    message_id: str | None
    queued: bool
    reason: Refusal | None = None


@dataclass(frozen=True)
class StoredMessage:
    id: str
    recipient: str  # the phone or BSUID it was addressed to
    person_id: str | None
    sent_to: str | None  # who Meta's answer said it went to
    kind: MessageKind
    content: dict[str, Any]
    queue: QueueName
    state: MessageState
    attempts: int
    campaign_id: str | None
    reason: str | None
    error_code: int | None
    consent_event_id: str | None
    meta_message_id: str | None

    @classmethod
    def from_row(cls, row: sa.RowMapping) -> StoredMessage:
        return cls(
            id=row["id"], recipient=row["recipient"], person_id=row["person_id"], sent_to=row["sent_to"], kind=MessageKind(row["kind"]), content=json.loads(row["content"]),
            queue=QueueName(row["queue"]), state=MessageState(row["state"]), attempts=row["attempts"], campaign_id=row["campaign_id"],
            reason=row["reason"], error_code=row["error_code"], consent_event_id=row["consent_event_id"],
            meta_message_id=row["meta_message_id"],
        )


CLOCK_SKEW = timedelta(minutes=1)  # Meta's clock, which stamps the answer, against ours, which stamped the send


Billing = tuple[str, str | None, bool | None]  # a status's pricing: (category, type, billable)


@dataclass(frozen=True)
class Billed:
    """A message whose billing was just noted, with what the policy decided it as."""

    id: str
    meta_message_id: str
    kind: str
    content: str
    campaign_id: str | None
    category: str  # what Meta bills it as

    @property
    def marketing_decided_otherwise(self) -> bool:
        """Billed as marketing though not decided on marketing consent: for staff to look at."""
        return self.category.startswith("marketing") and self.kind != MessageKind.MARKETING_TEMPLATE.value


@dataclass(frozen=True)
class Question:
    """The bot's opt-in question as it was sent: a yes to it is consent to its text."""

    message_id: str
    meta_message_id: str
    text: str
    language: str
    sent_at: datetime


def asked_opt_in(conn: sa.Connection, identifiers: tuple[str, ...], quoted_id: str | None, answered_at: datetime) -> Question | None:
    """The opt-in question a yes from these identifiers, at `answered_at`, answers: the message the
    user quoted, or else the last one they were sent, when it is that question and was sent in
    the 24 hours before. A yes to any other message ("Is your order ready?") answers that one."""
    sent = sa.select(messages).where(messages.c.sent_at.is_not(None), messages.c.state != MessageState.FAILED.value)
    if quoted_id is not None:
        sent = sent.where(messages.c.meta_message_id == quoted_id)
    else:
        sent = sent.where(messages.c.recipient.in_(identifiers)).order_by(messages.c.sent_at.desc()).limit(1)
    row = conn.execute(sent).mappings().first()
    if row is None or row["kind"] != MessageKind.OPT_IN_QUESTION.value or row["recipient"] not in identifiers:
        return None
    sent_at = as_utc(row["sent_at"])
    if not answered_at - SERVICE_WINDOW <= sent_at <= answered_at + CLOCK_SKEW:
        return None
    content = json.loads(row["content"])
    return Question(row["id"], row["meta_message_id"], content["text"], content["language"], sent_at)


Enqueue = Callable[[QueueName, list[str]], None]


class Outbox:
    def __init__(
        self,
        engine: Engine,
        ledger: Ledger,
        enqueue: Enqueue,
        coverage: ImplicitCoverage = ImplicitCoverage(),
        lease: timedelta = timedelta(seconds=60),
        clock: Callable[[], datetime] = utc_now,
        catalog: TemplateCatalog | None = None,
        feed: Feed | None = None,
    ):
        """`lease`: how long a claimed message is a worker's; longer than pacing plus one HTTP timeout.
        `catalog`: Meta's template catalog, which decides template sends when given (SPEC §7);
        without it a template is decided on the category its sender gave. `feed`: where the
        statuses that move messages on are forwarded (SPEC §9)."""
        self.catalog = catalog
        self.feed = feed or Feed(())
        self.engine = engine
        self.lease = lease
        self._writer = writer(engine)
        self.ledger = ledger
        self.enqueue = enqueue
        self.coverage = coverage
        self.clock = clock

    # -- submitting ----------------------------------------------------------------------

    def submit(
        self, message: Message, idempotency_key: str, requested_by: str,
        queue: QueueName = QueueName.REPLIES, campaign_id: str | None = None,
    ) -> Submission:
        """Ask the policy, store the outcome, queue what is allowed. Safe to repeat."""
        return self.submit_many([(message, idempotency_key)], requested_by, queue, campaign_id)[0]

    def submit_many(
        self, items: Iterable[tuple[Message, str]], requested_by: str,
        queue: QueueName = QueueName.BULK, campaign_id: str | None = None,
    ) -> list[Submission]:
        """Submit several messages in one transaction; queue the allowed ones after it commits.

        A key already submitted answers what was stored then and queues nothing again (if its
        first queuing failed, the sweeper queues it). Two processes submitting the same key at
        once collide on its unique index; the loser's second pass reads the winner's answer.
        """
        items = list(items)
        try:
            return self._submit(items, requested_by, queue, campaign_id)
        except sa.exc.IntegrityError:
            return self._submit(items, requested_by, queue, campaign_id)

    def _submit(
        self, items: list[tuple[Message, str]], requested_by: str, queue: QueueName, campaign_id: str | None
    ) -> list[Submission]:
        now = self.clock()
        recipients: dict[str, str | None] = {}
        for message, _ in items:
            try:
                recipients[message.to] = normalize_identifier(message.to)
            except InvalidIdentifier:
                recipients[message.to] = None
        consents = self.ledger.states(identifier for identifier in recipients.values() if identifier)
        verdicts = self.template_verdicts((m.template.name, m.template.language) for m, _ in items if m.template)
        rows: list[dict] = []
        submissions: list[Submission] = []
        to_queue: list[str] = []
        with self._writer.begin() as conn:
            known = submitted(conn, [key for _, key in items])
            for message, key in items:
                if key in known:
                    submissions.append(known[key])
                    continue
                recipient = recipients[message.to]
                if recipient is None:
                    submissions.append(Submission(None, False, Refusal.INVALID_RECIPIENT))
                    continue
                true_kind = verdicts.get((message.template.name, message.template.language)) if message.template else None
                submission, row = self.draft(message, key, consents[recipient], requested_by, queue, now, campaign_id, true_kind)
                rows.append(row)
                submissions.append(known.setdefault(key, submission))
                if submission.queued:
                    to_queue.append(row["id"])
            if rows:
                conn.execute(messages.insert(), rows)
        if to_queue:
            self.enqueue(queue, to_queue)  # a failure here leaves rows queued: the sweeper re-queues them
        return submissions

    def draft(
        self, message: Message, key: str, consent: ConsentState, requested_by: str, queue: QueueName,
        now: datetime, campaign_id: str | None = None, true_kind: Verdict | None = None,
    ) -> tuple[Submission, dict]:
        """The policy's answer for a message to a valid recipient, and the row that stores it (not written yet).
        `true_kind`: the catalog's verdict on its template, which overrides the kind its sender gave."""
        kind = message.kind if true_kind is None or isinstance(true_kind, Refusal) else true_kind
        decision = Decision(False, true_kind) if isinstance(true_kind, Refusal) else decide(consent, kind, now, self.coverage)
        row = {
            "id": str(uuid.uuid4()), "idempotency_key": key, "recipient": consent.identifier, "person_id": consent.person_id,
            "kind": kind.value,
            "content": json.dumps(message.content(), ensure_ascii=False), "queue": queue.value,
            "campaign_id": campaign_id,
            "state": (MessageState.QUEUED if decision.allowed else MessageState.BLOCKED).value,
            "reason": decision.reason.value if decision.reason else None,
            "consent_event_id": decision.consent_event_id, "attempts": 0, "requested_by": requested_by,
            "created_at": now, "updated_at": now,
        }
        return Submission(row["id"], decision.allowed, decision.reason), row

    @staticmethod
    def store_new(conn: sa.Connection, rows: list[dict]) -> set[str]:
        """Insert drafted rows in one statement, skipping keys already stored; the keys inserted."""
        if conn.dialect.name == "postgresql":
            return set(conn.execute(_STORE_NEW, {"rows": as_json_rows(rows)}).scalars())
        return set(conn.execute(_STORE_NEW_SQLITE, rows).scalars())

    # -- reading -------------------------------------------------------------------------

    def get(self, message_id: str) -> StoredMessage | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(messages).where(messages.c.id == message_id)).mappings().first()
        return StoredMessage.from_row(row) if row else None

    # -- the send job's side -------------------------------------------------------------

    def template_verdicts(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Verdict]:
        """What Meta's catalog makes of these templates, by (name, language), now; empty without a catalog."""
        if self.catalog is None:
            return {}
        keys = set(keys)
        found = self.catalog.lookup(keys)
        return {key: verdict(found.get(key)) for key in keys}

    def template_verdict(self, template: Template) -> Verdict | None:
        """What Meta's catalog makes of one template now; None without a catalog."""
        key = (template.name, template.language)
        return self.template_verdicts([key]).get(key)

    def kinds_now(self, stored: Iterable[StoredMessage]) -> list[Verdict]:
        """The kind each stored message is decided on now: a template's from the catalog as it is
        at this moment (its category may have changed since it was queued), else its stored kind."""
        keys = [(m, template_key(m.content)) for m in stored]
        verdicts = self.template_verdicts(key for _, key in keys if key)
        return [verdicts.get(key, m.kind) if key else m.kind for m, key in keys]

    def decide_many(self, asks: list[tuple[str, Verdict]]) -> list[tuple[Decision, ConsentState]]:
        """The policy's answers for several (recipient, kind) right now, from one read of their
        states, each with the state it rests on (which says where the message goes). A refusal
        given for the kind (the catalog's) is the answer."""
        states = self.ledger.states(recipient for recipient, _ in asks)
        now = self.clock()
        return [
            (Decision(False, kind) if isinstance(kind, Refusal) else decide(states[recipient], kind, now, self.coverage), states[recipient])
            for recipient, kind in asks
        ]

    def paused_campaigns(self, campaign_ids: set[str]) -> set[str]:
        """Which of these campaigns are paused now."""
        if not campaign_ids:
            return set()
        with reading(self.engine) as conn:
            query = sa.select(campaigns.c.id).where(campaigns.c.id.in_(campaign_ids), campaigns.c.paused_at.is_not(None))
            return set(conn.execute(query).scalars())

    def claim(self, message_id: str) -> StoredMessage | None:
        """Lease a due, queued message to this worker; None when another has it or it is done."""
        claimed = self.claim_many([message_id])
        return claimed[0] if claimed else None

    def claim_many(self, message_ids: list[str]) -> list[StoredMessage]:
        """Lease those of these messages that are due and queued, in one statement; the others
        are another worker's or done."""
        now = self.clock()
        with one_statement(self.engine) as conn:
            claimed = conn.execute(_CLAIM, {"message_ids": message_ids, "now": now, "until": now + self.lease})
            rows = claimed.mappings().all()
        return [StoredMessage.from_row(row) for row in rows]

    def mark_sent(self, message_id: str, meta_message_id: str, consent_event_id: str | None, sent_to: str | None = None) -> None:
        self.mark_sent_many([(message_id, meta_message_id, consent_event_id, sent_to)])

    def mark_sent_many(self, sends: list[tuple[str, str, str | None, str | None]]) -> None:
        """Record several sends: (message id, Meta's message id, consent event id, who Meta's
        answer says it went to). In one transaction; when the database refuses it (Meta gave a
        message id another message has), one by one, so that one odd answer does not leave the
        others unrecorded, to be sent again."""
        try:
            self._mark_sent(sends)
        except sa.exc.IntegrityError:
            if len(sends) > 1:
                for send in sends:
                    self.mark_sent_many([send])
                return
            [(message_id, meta_id, consent_event_id, sent_to)] = sends
            self._update(
                message_id, state=MessageState.SENT.value, consent_event_id=consent_event_id, sent_to=sent_to,
                sent_at=self.clock(), lease_until=None, error_code=None,
                error_detail=f"Meta answered with message id {meta_id[:200]}, which another message has: its statuses cannot be told apart",
            )

    def _mark_sent(self, sends: list[tuple[str, str, str | None, str | None]]) -> None:
        now = self.clock()
        with self._writer.begin() as conn:
            if conn.dialect.name == "postgresql":  # one statement, however many sends
                rows = [
                    {"id": message_id, "meta_id": meta_id, "consent_event_id": event_id, "sent_to": sent_to}
                    for message_id, meta_id, event_id, sent_to in sends
                ]
                conn.execute(_MARK_ALL_SENT, {"rows": as_json_rows(rows), "ids": [row["id"] for row in rows], "now": now})
            else:
                conn.execute(_MARK_SENT, [
                    {"message_id": message_id, "meta_id": meta_id, "consent_event_id": consent_event_id, "sent_to": sent_to, "now": now}
                    for message_id, meta_id, consent_event_id, sent_to in sends
                ])
            self._forward_states(conn, [message_id for message_id, *_ in sends])

    def _forward_states(self, conn: sa.Connection, message_ids: list[str]) -> None:
        """Forward the states these messages were just moved to (sent, failed, blocked at send time)."""
        if self.feed.reaches_url:
            moved = conn.execute(sa.select(*_MOVED_COLUMNS).where(messages.c.id.in_(message_ids))).mappings().all()
            self.feed.write(conn, self.feed.statuses(moved))

    def decided_as(self, message_id: str, kind: MessageKind) -> None:
        """Note the kind a message was allowed as at send time, when Meta's catalog moved its
        template to another category since it was queued: what it is billed as is compared with this."""
        self._update(message_id, kind=kind.value)

    def mark_blocked(self, message_id: str, reason: Refusal) -> None:
        self._end(message_id, state=MessageState.BLOCKED.value, reason=reason.value, lease_until=None)

    def mark_failed(self, message_id: str, reason: str, code: int | None, detail: str | None) -> None:
        self._end(message_id, state=MessageState.FAILED.value, reason=reason, error_code=code, error_detail=detail, lease_until=None)

    def _end(self, message_id: str, **values: Any) -> None:
        """A final state reached at send time, forwarded with it."""
        if not self.feed.reaches_url:
            return self._update(message_id, **values)
        values["updated_at"] = self.clock()
        with self._writer.begin() as conn:
            conn.execute(_update_by_id(frozenset(values)), {"message_id": message_id, **{f"new_{k}": v for k, v in values.items()}})
            self._forward_states(conn, [message_id])

    def release(self, message_id: str, retry_at: datetime, code: int | None = None, detail: str | None = None) -> None:
        """Give a claimed message back to the queue, due again at `retry_at`."""
        self._update(message_id, not_before=retry_at, lease_until=None, error_code=code, error_detail=detail)

    def apply_status(self, meta_message_id: str, status: str, error_code: int | None = None) -> bool:
        """A delivery status from Meta. States only move forward (late or repeated statuses change
        nothing); failed is final. A status for a send not yet recorded is kept for later.
        Returns whether a message changed."""
        with one_statement(self.engine) as conn:
            return self.apply_statuses_in(conn, [(meta_message_id, status, error_code)]) == 1

    def apply_statuses_in(self, conn: sa.Connection, statuses: Iterable[tuple[str, str, int | None]]) -> int:
        """`apply_status` for (Meta id, status, error code) triples inside the caller's transaction;
        returns how many changed a message. Messages are locked in Meta id order, so two
        transactions with statuses of the same messages cannot deadlock. A message's statuses
        are applied in their order of progress (sent, delivered, read, failed)."""
        ordered = sorted(statuses, key=lambda triple: (triple[0], _RANK[triple[1]]))
        now = self.clock()
        if conn.dialect.name == "postgresql":  # one statement per status of a message, mostly just one
            by_message = [list(group) for _, group in itertools.groupby(ordered, key=lambda triple: triple[0])]
            moved: list[sa.RowMapping] = []
            for depth in range(max(map(len, by_message), default=0)):
                rows = [
                    {"meta_id": meta_id, "status": status, "code": code, "allowed": ",".join(_EARLIER[status])}
                    for meta_id, status, code in (statuses[depth] for statuses in by_message if len(statuses) > depth)
                ]
                values = {"rows": as_json_rows(rows), "meta_ids": [row["meta_id"] for row in rows], "now": now}
                moved += conn.execute(_APPLY_STATUSES, values).mappings().all()
        else:
            moved = []
            for meta_id, status, code in ordered:
                values = {"meta_id": meta_id, "status": status, "earlier": list(_EARLIER[status]), "code": code, "now": now}
                row = conn.execute(_APPLY_STATUS, values).mappings().first()
                if row is not None:
                    moved.append(row)
                else:
                    conn.execute(_KEEP_EARLY_STATUS, values)
        self.feed.write(conn, self.feed.statuses(moved))
        return len(moved)

    def note_billing_in(self, conn: sa.Connection, billing: Mapping[str, Billing]) -> list[Billed]:
        """Note what Meta bills messages as (by Meta message id: a status's `pricing`), from the
        first status that says, in the caller's transaction; the messages this noted, with what
        they were decided as."""
        by_pricing: dict[Billing, list[str]] = {}
        for meta_id, pricing in billing.items():
            by_pricing.setdefault(pricing, []).append(meta_id)
        noted = []
        for (category, kind, billable), meta_ids in by_pricing.items():
            values = {"meta_ids": meta_ids, "new_category": category, "new_type": kind, "new_billable": billable}
            noted += [
                Billed(row.id, row.meta_message_id, row.kind, row.content, row.campaign_id, category)
                for row in conn.execute(_NOTE_BILLING, values)
            ]
        return noted

    def apply_early_statuses(self, forget_after: timedelta = timedelta(days=7)) -> int:
        """Apply kept statuses whose message now has its Meta id; forget those never matched."""
        with reading(self.engine) as conn:
            matched = conn.execute(
                sa.select(early_statuses)
                .join(messages, messages.c.meta_message_id == early_statuses.c.meta_message_id)
            ).all()
        for row in sorted(matched, key=lambda r: _RANK[r.status]):
            self.apply_status(row.meta_message_id, row.status, row.error_code)
        with one_statement(self.engine) as conn:
            if matched:
                ids = list({row.meta_message_id for row in matched})
                conn.execute(early_statuses.delete().where(early_statuses.c.meta_message_id.in_(ids)))
            conn.execute(early_statuses.delete().where(early_statuses.c.received_at < self.clock() - forget_after))
        return len(matched)

    def due_for_recovery(self, stale_after: timedelta, limit: int = 5000) -> list[tuple[str, QueueName, bool]]:
        """Queued, due messages that may have no job: (id, queue, was it claimed?).

        A claimed one's worker died mid-send (its lease ran out). An unclaimed one is a retry
        that came due, or one whose job was lost or is still waiting in a long queue, which the
        caller tells apart.
        """
        now = self.clock()
        query = (
            sa.select(messages.c.id, messages.c.queue, messages.c.lease_until)
            .where(
                messages.c.state == MessageState.QUEUED.value,
                sa.or_(messages.c.not_before.is_(None), messages.c.not_before <= now),
                sa.or_(messages.c.lease_until.is_(None), messages.c.lease_until < now),
                sa.or_(messages.c.not_before.is_not(None), messages.c.updated_at < now - stale_after),
                _NOT_PAUSED,
            )
            .order_by(messages.c.created_at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [(row.id, QueueName(row.queue), row.lease_until is not None) for row in conn.execute(query)]

    def requeued(self, message_ids: list[str]) -> None:
        """Note that these messages got a new job, so the sweeper leaves them alone for a while."""
        now = self.clock()
        with one_statement(self.engine) as conn:
            conn.execute(
                messages.update()
                .where(messages.c.id.in_(message_ids), messages.c.state == MessageState.QUEUED.value)
                .where(sa.or_(messages.c.lease_until.is_(None), messages.c.lease_until < now))
                .values(not_before=None, lease_until=None, updated_at=now)
            )

    def _update(self, message_id: str, **values: Any) -> None:
        values["updated_at"] = self.clock()
        with one_statement(self.engine) as conn:
            conn.execute(_update_by_id(frozenset(values)), {"message_id": message_id, **{f"new_{k}": v for k, v in values.items()}})


# Statements are built once: building them per call costs more than running them.
# A message of a paused campaign waits (R11): it is neither claimed nor recovered until resumed.
_NOT_PAUSED = ~sa.exists().where(campaigns.c.id == messages.c.campaign_id, campaigns.c.paused_at.is_not(None))
_CLAIM = (
    messages.update()
    .where(
        messages.c.id.in_(sa.bindparam("message_ids", expanding=True)),
        messages.c.state == MessageState.QUEUED.value,
        sa.or_(messages.c.not_before.is_(None), messages.c.not_before <= sa.bindparam("now")),
        sa.or_(messages.c.lease_until.is_(None), messages.c.lease_until < sa.bindparam("now")),
        _NOT_PAUSED,
    )
    .values(lease_until=sa.bindparam("until"), attempts=messages.c.attempts + 1, updated_at=sa.bindparam("now"))
    .returning(*messages.c)
)


_MARK_SENT = (
    messages.update()
    .where(messages.c.id == sa.bindparam("message_id"))
    .values(
        state=MessageState.SENT.value, meta_message_id=sa.bindparam("meta_id"), consent_event_id=sa.bindparam("consent_event_id"),
        sent_to=sa.bindparam("sent_to"), sent_at=sa.bindparam("now"), updated_at=sa.bindparam("now"), lease_until=None, error_code=None, error_detail=None,
    )
)

_SENDS = json_records(
    "sends", sa.column("id", sa.String), sa.column("meta_id", sa.String), sa.column("consent_event_id", sa.String), sa.column("sent_to", sa.String)
)
_MARK_ALL_SENT = (
    messages.update()
    .where(
        messages.c.id == _SENDS.c.id,
        messages.c.id == sa.any_(string_array("ids")),  # the index, not a scan
    )
    .values(
        state=MessageState.SENT.value, meta_message_id=_SENDS.c.meta_id, consent_event_id=_SENDS.c.consent_event_id, sent_to=_SENDS.c.sent_to,
        sent_at=sa.bindparam("now"), updated_at=sa.bindparam("now"), lease_until=None, error_code=None, error_detail=None,
    )
)

_BY_KEY = sa.select(messages.c.idempotency_key, messages.c.id, messages.c.state, messages.c.reason).where(
    messages.c.idempotency_key == sa.bindparam("key")
)
_NEW_MESSAGES = json_rows(messages)
_STORE_NEW = (
    postgresql.insert(messages)
    .from_select([column.name for column in messages.c], sa.select(*_NEW_MESSAGES.c))
    .on_conflict_do_nothing(index_elements=["idempotency_key"])
    .returning(messages.c.idempotency_key)
)
_STORE_NEW_SQLITE = sqlite.insert(messages).on_conflict_do_nothing(index_elements=["idempotency_key"]).returning(messages.c.idempotency_key)
_RANK = {"sent": 1, "delivered": 2, "read": 3, "failed": 4}
# A status for no message we know of (yet): kept, once, for the sweeper to apply later.
_KEEP_EARLY_STATUS = (
    sqlite.insert(early_statuses)
    .from_select(
        ["meta_message_id", "status", "error_code", "received_at"],
        sa.select(
            sa.bindparam("meta_id", type_=sa.String), sa.bindparam("status", type_=sa.String),
            sa.bindparam("code", type_=sa.Integer), sa.bindparam("now", type_=sa.DateTime(timezone=True)),
        ).where(~sa.exists().where(messages.c.meta_message_id == sa.bindparam("meta_id"))),
    )
    .on_conflict_do_nothing()
)
# The states a message may be in for a status to move it on.
_EARLIER = {
    "sent": ("queued",),
    "delivered": ("queued", "sent"),
    "read": ("queued", "sent", "delivered"),
    "failed": ("queued", "sent", "delivered"),
}
# What a forwarded status tells of the message it moved on (bot.storage.forwarding.Feed.statuses).
_MOVED_COLUMNS = (
    messages.c.id, messages.c.meta_message_id, messages.c.recipient, messages.c.sent_to, messages.c.person_id,
    messages.c.state, messages.c.reason, messages.c.error_code, messages.c.campaign_id,
)
_APPLY_STATUS = (
    messages.update()
    .where(messages.c.meta_message_id == sa.bindparam("meta_id"), messages.c.state.in_(sa.bindparam("earlier", expanding=True)))
    .values(
        state=sa.bindparam("status"), updated_at=sa.bindparam("now"),
        error_code=sa.func.coalesce(sa.bindparam("code", type_=sa.Integer), messages.c.error_code),
    )
    .returning(*_MOVED_COLUMNS)
)


_NOTE_BILLING = (
    messages.update()
    .where(messages.c.meta_message_id.in_(sa.bindparam("meta_ids", expanding=True)), messages.c.billed_category.is_(None))
    .values(billed_category=sa.bindparam("new_category"), billed_type=sa.bindparam("new_type"), billable=sa.bindparam("new_billable"))
    .returning(messages.c.id, messages.c.meta_message_id, messages.c.kind, messages.c.content, messages.c.campaign_id)
)


# PostgreSQL applies a group of statuses (one per message) in one statement: the messages they
# move on are locked in Meta id order and updated; statuses of messages not known yet are kept.
_META_IDS = sa.any_(string_array("meta_ids"))  # lets the plan use the index, not a scan
_INCOMING = json_records(
    "incoming", sa.column("meta_id", sa.String), sa.column("status", sa.String), sa.column("code", sa.Integer), sa.column("allowed", sa.String)
)
_LOCKED = (
    sa.select(messages.c.id, _INCOMING.c.status, _INCOMING.c.code)
    .join_from(messages, _INCOMING, messages.c.meta_message_id == _INCOMING.c.meta_id)
    .where(
        messages.c.meta_message_id == _META_IDS,
        messages.c.state == sa.any_(sa.func.string_to_array(_INCOMING.c.allowed, ",")),
    )
    .order_by(messages.c.meta_message_id)
    .with_for_update(of=messages)
    .cte("locked")
)
_MOVED = (
    messages.update()
    .where(messages.c.id == _LOCKED.c.id)
    .values(state=_LOCKED.c.status, updated_at=sa.bindparam("now"), error_code=sa.func.coalesce(_LOCKED.c.code, messages.c.error_code))
    .returning(*_MOVED_COLUMNS)
    .cte("moved")
)
_KEPT = (
    postgresql.insert(early_statuses)
    .from_select(
        ["meta_message_id", "status", "error_code", "received_at"],
        sa.select(_INCOMING.c.meta_id, _INCOMING.c.status, _INCOMING.c.code, sa.bindparam("now", type_=sa.DateTime(timezone=True)))
        .where(_INCOMING.c.meta_id.not_in(sa.select(messages.c.meta_message_id).where(messages.c.meta_message_id == _META_IDS))),
    )
    .on_conflict_do_nothing()
    .returning(early_statuses.c.meta_message_id)
    .cte("kept")
)
_APPLY_STATUSES = sa.select(_MOVED).add_cte(_KEPT)  # the messages moved on; statuses of unknown ones are kept


@functools.cache
def _update_by_id(columns: frozenset[str]) -> sa.Update:
    """UPDATE of these columns of one message, one cached statement per set of columns."""
    return (
        messages.update()
        .where(messages.c.id == sa.bindparam("message_id"))
        .values({column: sa.bindparam(f"new_{column}") for column in columns})
    )


def submitted(conn: sa.Connection, keys: list[str]) -> dict[str, Submission]:
    """What was already submitted under these idempotency keys."""
    if len(keys) == 1:  # a single reply: the cached equality query is cheaper than IN (...)
        row = conn.execute(_BY_KEY, {"key": keys[0]}).first()
        return {keys[0]: _submission(row)} if row else {}
    found: dict[str, Submission] = {}
    for start in range(0, len(keys), 1000):
        query = sa.select(*_BY_KEY.selected_columns).where(messages.c.idempotency_key.in_(keys[start : start + 1000]))
        found.update((row.idempotency_key, _submission(row)) for row in conn.execute(query))
    return found


def _submission(row: sa.Row) -> Submission:
    blocked = row.state == MessageState.BLOCKED.value
    return Submission(row.id, not blocked, Refusal(row.reason) if blocked else None)
