"""Campaigns: one approved template to a list of recipients, with pausing to protect the number (R11).

A campaign's messages go through the outbox like every other message (policy at queue time
and at send time). It keeps what its list held besides recipients (blank, invalid and repeated
entries), so that its counts add up to the entries it was given. A campaign is paused, and its
queued messages wait, when its opt-out rate passes the configured threshold, when Meta flags the
account or the number's quality, or when Meta pauses its template. While the number is flagged,
new campaigns queue nothing (reason `paused`) and paused ones cannot be resumed. Nothing here
knows Flask.
"""
from __future__ import annotations

import enum
import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from bot.domain.consent import Action
from bot.domain.identity import InvalidIdentifier, normalize_identifier
from bot.domain.policy import MessageKind, Refusal, decide
from bot.storage.db import one_statement, reading
from bot.storage.ledger import Ledger, as_utc, utc_now
from bot.storage.outbox import Message, MessageState, Outbox, QueueName, Template
from bot.storage.schema import account_notices, campaigns, consent_events, identities, merged_people
from bot.storage.schema import outbound_messages as messages

log = logging.getLogger(__name__)

CHUNK = 1000  # recipients decided and stored per transaction
EXAMPLES = 5  # skipped entries a result names per reason, for staff to check
REACHED = (MessageState.SENT.value, MessageState.DELIVERED.value, MessageState.READ.value)

# Meta's notices that pause every running campaign, and the quality events that flag or clear the number.
ACCOUNT_ALARMS = {"ACCOUNT_VIOLATION", "ACCOUNT_RESTRICTION", "DISABLED_UPDATE", "ACCOUNT_DELETED"}
QUALITY_FLAGS = {"FLAGGED", "DOWNGRADE"}
QUALITY_CLEARS = {"UNFLAGGED", "UPGRADE"}
TEMPLATE_STOPS = {"PAUSED", "DISABLED", "REJECTED"}


class Status(str, enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"  # nothing left queued


class CampaignRefused(Exception):
    """A staff request on a campaign that cannot be done now; `str()` is the reason."""


class CampaignIdTaken(Exception):
    """The campaign id (an idempotency key) names a campaign with another template or list."""


@dataclass(frozen=True)
class CampaignResult:
    campaign_id: str | None  # None for a dry run, or when nothing could be queued
    queued: int
    skipped: dict[str, int]  # refusal reason -> count
    duplicates: int  # numbers listed more than once, sent once
    blank: int  # entries with no number at all (a CSV file's blank rows)
    examples: dict[str, list[str]] = field(default_factory=dict)  # refusal reason -> the first few entries it skipped

    def as_dict(self) -> dict:
        return {"campaign_id": self.campaign_id, "queued": self.queued, "skipped": self.skipped, "duplicates": self.duplicates, "blank": self.blank}


@dataclass(frozen=True)
class Summary:
    """A campaign and how far its messages got (one row of `flask campaign list`)."""

    id: str
    template: dict
    category: str
    recipients: int  # distinct valid numbers: one message each
    created_at: datetime
    status: Status
    pause_reason: str | None
    states: dict[str, int] = field(default_factory=dict)  # messages per state
    skipped: dict[str, int] = field(default_factory=dict)  # entries not queued at the start, per reason (as CampaignResult)
    blocked_at_send: dict[str, int] = field(default_factory=dict)  # queued, then refused by the policy at send time, per reason
    duplicates: int | None = None  # None, like `blank`, for a campaign started before its list was kept (0009)
    blank: int | None = None

    @property
    def listed(self) -> int | None:
        """How many entries its list had: every recipient, blank, invalid and repeated entry."""
        if self.duplicates is None or self.blank is None:
            return None
        return self.recipients + self.duplicates + self.blank + self.skipped.get(Refusal.INVALID_RECIPIENT.value, 0)


@dataclass(frozen=True)
class Progress(Summary):
    opt_outs: int = 0  # recipients who opted out after the campaign reached them

    @property
    def reached(self) -> int:
        """Recipients its message was sent to."""
        return sum(self.states.get(state, 0) for state in REACHED)

    @property
    def opt_out_rate(self) -> float:
        return self.opt_outs / self.reached if self.reached else 0.0

    def as_dict(self) -> dict:
        return {
            "id": self.id, "template": self.template, "category": self.category, "recipients": self.recipients,
            "created_at": self.created_at.isoformat(), "status": self.status.value, "pause_reason": self.pause_reason,
            **{state.value: self.states.get(state.value, 0) for state in MessageState},
            "listed": self.listed, "skipped": self.skipped, "duplicates": self.duplicates, "blank": self.blank,
            "opt_outs": self.opt_outs, "opt_out_rate": round(self.opt_out_rate, 4),
        }


class Campaigns:
    def __init__(
        self, engine: Engine, ledger: Ledger, outbox: Outbox, max_opt_out_rate: float = 0.02,
        min_reached: int = 50, clock: Callable[[], datetime] = utc_now,
        on_pause: Callable[[list[str]], None] = lambda campaign_ids: None,
        on_resume: Callable[[str], None] = lambda campaign_id: None,
    ):
        """`min_reached`: recipients reached before the opt-out rate means anything (one STOP in
        three is noise). `on_pause` is told of campaigns as they are paused, `on_resume` of one
        before it runs again (bot.outbound.opt_out_marks: the send threads' last look)."""
        self.on_pause, self.on_resume = on_pause, on_resume
        self.engine = engine
        self.ledger = ledger
        self.outbox = outbox
        self.max_opt_out_rate = max_opt_out_rate
        self.min_reached = min_reached
        self.clock = clock

    # -- sending -------------------------------------------------------------------------

    def send(
        self, template: Template, kind: MessageKind, recipients: Iterable[str], requested_by: str,
        dry_run: bool = False, campaign_id: str | None = None, progress: Callable[[int], None] = lambda done: None,
    ) -> CampaignResult:
        """Decide every recipient; unless `dry_run`, store and queue the allowed ones on the bulk queue.

        The same `campaign_id` sent again adds nothing (each recipient's message is keyed on it).
        `progress` is told how many listed numbers were handled after each chunk.
        """
        recipients = list(recipients)
        entries = _sorted_entries(recipients)
        unique = entries.numbers
        skipped: Counter[str] = Counter({Refusal.INVALID_RECIPIENT.value: entries.invalid} if entries.invalid else {})
        examples = {Refusal.INVALID_RECIPIENT.value: entries.invalid_examples} if entries.invalid else {}
        flagged = self.account_flag()
        if flagged:
            skipped[Refusal.PAUSED.value] += len(unique)
            progress(len(recipients))
            return CampaignResult(None, 0, dict(skipped), entries.duplicates, entries.blank)
        true_kind = self.outbox.template_verdict(template) or kind
        if isinstance(true_kind, Refusal):  # Meta's catalog has no such template, or it is not approved
            skipped[true_kind.value] += len(unique)
            progress(len(recipients))
            return CampaignResult(None, 0, dict(skipped), entries.duplicates, entries.blank)
        kind = true_kind  # Meta's category, whatever the caller said (SPEC §7)
        campaign_id = campaign_id or str(uuid.uuid4())
        if not dry_run:
            self._create(campaign_id, template, kind, entries, requested_by)
        queued, done = 0, entries.invalid + entries.duplicates + entries.blank
        for start in range(0, len(unique), CHUNK):
            chunk = unique[start : start + CHUNK]
            outcomes = self._decide(chunk, kind) if dry_run else self._submit(chunk, template, kind, requested_by, campaign_id)
            for recipient, reason in zip(chunk, outcomes):
                if reason is None:
                    queued += 1
                    continue
                skipped[reason.value] += 1
                named = examples.setdefault(reason.value, [])
                if len(named) < EXAMPLES:
                    named.append(recipient)
            done += len(chunk)
            progress(done)
        return CampaignResult(None if dry_run else campaign_id, queued, dict(skipped), entries.duplicates, entries.blank, examples)

    def _decide(self, recipients: list[str], kind: MessageKind) -> list[Refusal | None]:
        states, now = self.ledger.states(recipients), self.clock()
        return [decide(states[recipient], kind, now, self.outbox.coverage).reason for recipient in recipients]

    def _submit(
        self, recipients: list[str], template: Template, kind: MessageKind, requested_by: str, campaign_id: str
    ) -> list[Refusal | None]:
        items = [(Message(recipient, kind, template=template), f"campaign:{campaign_id}:{recipient}") for recipient in recipients]
        submissions = self.outbox.submit_many(items, requested_by, QueueName.BULK, campaign_id)
        return [submission.reason for submission in submissions]

    def _create(self, campaign_id: str, template: Template, kind: MessageKind, entries: Entries, requested_by: str) -> None:
        """Store the campaign, or, when its id is taken, make sure this is the same campaign sent
        again (after a crash part-way, say): its template, category and recipients. The messages
        stored so far must all be to recipients of this list, which has as many."""
        recipients = entries.numbers
        row = {
            "id": campaign_id, "template_name": template.name, "category": kind.value, "recipients": len(recipients),
            "blank": entries.blank, "invalid": entries.invalid, "duplicates": entries.duplicates, "requested_by": requested_by,
            "template": json.dumps({"name": template.name, "language": template.language, "components": template.components}),
            "created_at": self.clock(),
        }
        same = ("template", "category", "recipients")
        with one_statement(self.engine) as conn:
            existing = conn.execute(sa.select(*(campaigns.c[name] for name in same)).where(campaigns.c.id == campaign_id)).first()
            if existing is None:
                conn.execute(campaigns.insert().values(row))
                return
            if tuple(existing) != tuple(row[name] for name in same):
                raise CampaignIdTaken(f"campaign {campaign_id} was started with another template, category or number of recipients")
            reached = conn.execute(sa.select(messages.c.recipient).where(messages.c.campaign_id == campaign_id)).scalars()
            if not set(reached) <= set(recipients):
                raise CampaignIdTaken(f"campaign {campaign_id} was started with other recipients")

    # -- watching ------------------------------------------------------------------------

    def progress(self, campaign_id: str) -> Progress | None:
        with reading(self.engine) as conn:
            found = _summaries(conn, sa.select(campaigns).where(campaigns.c.id == campaign_id))
            if not found:
                return None
            opt_outs = conn.execute(_OPT_OUTS_AFTER_REACHED, {"campaign_id": campaign_id}).scalar_one()
        return Progress(**vars(found[0]), opt_outs=opt_outs)

    def newest(self, limit: int) -> list[Summary]:
        """The `limit` most recently started campaigns, newest first, in two queries whatever the limit."""
        with reading(self.engine) as conn:
            return _summaries(conn, sa.select(campaigns).order_by(campaigns.c.created_at.desc(), campaigns.c.id).limit(limit))

    def enforce_opt_out_limit(self) -> list[str]:
        """Pause running campaigns whose recipients opt out too often (R11). Returns the paused ids."""
        with reading(self.engine) as conn:
            running = conn.execute(_RUNNING).scalars().all()
        paused = []
        for campaign_id in running:
            progress = self.progress(campaign_id)
            assert progress is not None, "campaigns are never deleted"
            if progress.reached >= self.min_reached and progress.opt_out_rate > self.max_opt_out_rate:
                reason = (
                    f"opt-out rate {progress.opt_out_rate:.1%} ({progress.opt_outs} of {progress.reached}) "
                    f"passed CAMPAIGN_MAX_OPT_OUT_RATE {self.max_opt_out_rate:.1%}"
                )
                if self.pause(campaign_id, reason):
                    paused.append(campaign_id)
        return paused

    def on_account_notice(self, field_name: str, event: str, details: dict, conn: Connection | None = None) -> list[str]:
        """Pause what Meta's notice puts at risk: everything for account or quality alarms,
        the template's campaigns when Meta pauses or disables a template.

        `conn`: the webhook's transaction, so that the pause commits with the notice.
        """
        if field_name == "account_update" and event in ACCOUNT_ALARMS:
            return self._pause_where(sa.true(), f"Meta account_update {event}", conn)
        if field_name == "phone_number_quality_update" and event in QUALITY_FLAGS:
            return self._pause_where(sa.true(), f"Meta flagged the phone number's quality ({event})", conn)
        if field_name == "message_template_status_update" and event in TEMPLATE_STOPS:
            name = str(details.get("message_template_name", ""))
            return self._pause_where(campaigns.c.template_name == name, f"Meta set template {name} to {event}", conn)
        return []

    def account_flag(self) -> str | None:
        """Why the number counts as flagged now (its latest quality notice flags it), or None."""
        with reading(self.engine) as conn:
            latest = conn.execute(
                sa.select(account_notices.c.event, account_notices.c.received_at)
                .where(
                    account_notices.c.field == "phone_number_quality_update",
                    account_notices.c.event.in_(QUALITY_FLAGS | QUALITY_CLEARS),
                )
                .order_by(sa.func.coalesce(account_notices.c.occurred_at, account_notices.c.received_at).desc(), account_notices.c.id.desc())
                .limit(1)
            ).first()
        if latest is None or latest.event not in QUALITY_FLAGS:
            return None
        return f"the phone number's quality is {latest.event} since {as_utc(latest.received_at):%Y-%m-%d %H:%M} UTC"

    # -- pausing -------------------------------------------------------------------------

    def pause(self, campaign_id: str, reason: str) -> bool:
        """Pause one campaign; False when it does not exist or is paused already."""
        return bool(self._pause_where(campaigns.c.id == campaign_id, reason))

    def pause_by_staff(self, campaign_id: str, by: str) -> Progress:
        """Pause a campaign at the request of `by` (`staff:EMAIL`), who the pause reason names. A
        finished one (nothing of it left queued) is refused: there is nothing to hold back, and a
        pause would make it look unfinished."""
        self._pause_where(sa.and_(campaigns.c.id == campaign_id, _WAITING), f"paused by {by}"[:255])
        progress = self.progress(campaign_id)
        assert progress is not None, "callers check that the campaign exists; none is ever deleted"
        if progress.status is Status.FINISHED:
            raise CampaignRefused(f"campaign {campaign_id} is finished: none of its messages is left to send, so there is nothing to pause")
        return progress

    def resume(self, campaign_id: str) -> Progress:
        """Resume a paused campaign and queue its waiting messages again; refused while the number is flagged."""
        flagged = self.account_flag()
        if flagged:
            raise CampaignRefused(f"cannot resume while {flagged}")
        self.on_resume(campaign_id)
        with one_statement(self.engine) as conn:
            conn.execute(campaigns.update().where(campaigns.c.id == campaign_id).values(paused_at=None, pause_reason=None))
        with reading(self.engine) as conn:
            waiting = conn.execute(
                sa.select(messages.c.id).where(messages.c.campaign_id == campaign_id, messages.c.state == MessageState.QUEUED.value)
            ).scalars().all()
        if waiting:
            self.outbox.enqueue(QueueName.BULK, list(waiting))
            self.outbox.requeued(list(waiting))
        log.info("campaign %s resumed: %d message(s) queued again", campaign_id, len(waiting))
        progress = self.progress(campaign_id)
        assert progress is not None, "callers check that the campaign exists; none is ever deleted"
        return progress

    def _pause_where(self, condition: sa.ColumnElement[bool], reason: str, conn: Connection | None = None) -> list[str]:
        pause = (
            campaigns.update()
            .where(condition, campaigns.c.paused_at.is_(None))
            .values(paused_at=self.clock(), pause_reason=reason[:255])
            .returning(campaigns.c.id)
        )
        if conn is not None:
            paused = conn.execute(pause).scalars().all()
        else:
            with one_statement(self.engine) as own:
                paused = own.execute(pause).scalars().all()
        self.on_pause(list(paused))  # at once: the messages its workers hold go back, unsent
        for campaign_id in paused:
            log.warning("campaign %s paused: %s", campaign_id, reason)
        return list(paused)


@dataclass(frozen=True)
class Entries:
    """A list of recipients as given, sorted out."""

    numbers: list[str]  # valid phone numbers and BSUIDs, each once, in first-seen order
    blank: int  # entries with nothing in them
    invalid: int
    duplicates: int  # entries naming a number listed before
    invalid_examples: list[str] = field(default_factory=list)  # the first few invalid entries, as listed


def _sorted_entries(listed: list[str]) -> Entries:
    seen: dict[str, None] = {}
    invalid_examples: list[str] = []
    blank = invalid = duplicates = 0
    for raw in listed:
        if not raw.strip():
            blank += 1
            continue
        try:
            identifier = normalize_identifier(raw)
        except InvalidIdentifier:
            invalid += 1
            if len(invalid_examples) < EXAMPLES:
                invalid_examples.append(raw[:64])
            continue
        if identifier in seen:
            duplicates += 1
        seen[identifier] = None
    return Entries(list(seen), blank, invalid, duplicates, invalid_examples)


def _summaries(conn: Connection, chosen: sa.Select) -> list[Summary]:
    """The campaigns `chosen` selects, in its order, with their messages counted (one more query)."""
    rows = conn.execute(chosen).mappings().all()
    counts = conn.execute(_MESSAGE_COUNTS, {"ids": [row["id"] for row in rows]}).all() if rows else []
    states: dict[str, Counter[str]] = {row["id"]: Counter() for row in rows}
    skipped: dict[str, Counter[str]] = {row["id"]: Counter() for row in rows}
    blocked_at_send: dict[str, Counter[str]] = {row["id"]: Counter() for row in rows}
    for campaign_id, state, reason, attempts, count in counts:
        states[campaign_id][state] += count
        if state == MessageState.BLOCKED.value:
            (blocked_at_send if attempts else skipped)[campaign_id][reason] += count
    summaries = []
    for row in rows:
        campaign_id = row["id"]
        waiting = states[campaign_id][MessageState.QUEUED.value] > 0
        invalid = {Refusal.INVALID_RECIPIENT.value: row["invalid"]} if row["invalid"] else {}
        summaries.append(Summary(
            id=campaign_id, template=json.loads(row["template"]), category=row["category"], recipients=row["recipients"],
            created_at=as_utc(row["created_at"]), pause_reason=row["pause_reason"],
            status=Status.PAUSED if row["paused_at"] is not None else Status.RUNNING if waiting else Status.FINISHED,
            states=dict(states[campaign_id]), skipped=invalid | dict(skipped[campaign_id]),
            blocked_at_send=dict(blocked_at_send[campaign_id]), duplicates=row["duplicates"], blank=row["blank"],
        ))
    return summaries


# A campaign's messages still waiting to be sent (or to be released by a resume).
_WAITING = sa.exists().where(messages.c.campaign_id == campaigns.c.id, messages.c.state == MessageState.QUEUED.value)
# Campaigns not paused that still have messages waiting.
_RUNNING = sa.select(campaigns.c.id).where(campaigns.c.paused_at.is_(None), _WAITING)
# Messages per campaign, state, reason and attempts: a blocked message never tried (0 attempts)
# was refused at submission, one a worker claimed was refused at send time.
_MESSAGE_COUNTS = (
    sa.select(messages.c.campaign_id, messages.c.state, messages.c.reason, messages.c.attempts, sa.func.count())
    .where(messages.c.campaign_id.in_(sa.bindparam("ids", expanding=True)))
    .group_by(messages.c.campaign_id, messages.c.state, messages.c.reason, messages.c.attempts)
)


def opted_out_after_sent(*columns: sa.ColumnElement) -> sa.Select:
    """`columns` over the opt-outs (any scope, under any of their people's identifiers) made
    after a message of the campaign (bound as `campaign_id`) was sent to them."""
    return (
        sa.select(*columns)
        .select_from(
            messages.join(identities, identities.c.identifier == messages.c.recipient).join(
                consent_events,
                sa.or_(
                    consent_events.c.person_id == identities.c.person_id,
                    consent_events.c.person_id.in_(sa.select(merged_people.c.absorbed).where(merged_people.c.person_id == identities.c.person_id)),
                ),
            )
        )
        .where(
            messages.c.campaign_id == sa.bindparam("campaign_id"),
            messages.c.sent_at.is_not(None),
            consent_events.c.action == Action.OPT_OUT.value,
            consent_events.c.occurred_at >= messages.c.sent_at,
        )
    )


# People who opted out after a message of the campaign was sent to them.
_OPT_OUTS_AFTER_REACHED = opted_out_after_sent(sa.func.count(sa.distinct(identities.c.person_id)))
