"""The consent vocabulary and the pure fold from ledger events to a user's current state.

Nothing here touches a database or Flask: the ledger stores events, this module says
what they mean.
"""
from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from bot.domain.identity import IdentifierKind, kind_of
from bot.domain.staff import MAX_ACTOR

SERVICE_WINDOW = timedelta(hours=24)


class Action(str, enum.Enum):
    OPT_IN = "opt_in"
    OPT_OUT = "opt_out"
    IMPLICIT = "implicit"
    OPT_OUT_NOTICE_GIVEN = "opt_out_notice_given"
    POSSIBLE_OPT_OUT = "possible_opt_out"
    POSSIBLE_OPT_OUT_DISMISSED = "possible_opt_out_dismissed"  # staff reviewed one and found no opt-out in it (bot.domain.review)
    # Who is who (SPEC §6): evidence of consent too, as they are why a STOP under one identifier stops the others.
    IDENTITY_LINKED = "identity_linked"  # Meta showed this identifier with the person's others
    IDENTITY_RETIRED = "identity_retired"  # the person moved away from it (a new number): it names nobody now
    PEOPLE_MERGED = "people_merged"  # two people turned out to be one (evidence: the one absorbed)


IDENTITY_ACTIONS = frozenset({Action.IDENTITY_LINKED, Action.IDENTITY_RETIRED, Action.PEOPLE_MERGED})


class Scope(str, enum.Enum):
    ALL = "all"
    MARKETING = "marketing"


class Basis(str, enum.Enum):
    EXPLICIT = "explicit"
    IMPLICIT = "implicit"


class Channel(str, enum.Enum):
    """How an event was collected: off WhatsApp by staff (R1), or from the user on WhatsApp.

    There is deliberately no channel for a business-initiated WhatsApp message: explicit
    opt-in cannot be collected that way (R5).
    """

    WEB = "web"
    IVR = "ivr"
    PAPER = "paper"
    SMS = "sms"
    EMAIL = "email"
    IN_PERSON = "in_person"
    API = "api"
    # Recorded by the bot itself from user-initiated WhatsApp traffic, never by staff (R5).
    WHATSAPP_KEYWORD = "whatsapp_keyword"
    WHATSAPP_SESSION = "whatsapp_session"
    WHATSAPP_BUTTON = "whatsapp_button"
    WHATSAPP_ANSWER = "whatsapp_answer"  # a yes to the bot's own opt-in question, whose text is the consent text
    WHATSAPP_PREFERENCES = "whatsapp_preferences"
    WHATSAPP_DELIVERY = "whatsapp_delivery"
    WHATSAPP_IDENTITY = "whatsapp_identity"  # identifiers Meta showed together, or a move Meta announced


class State(str, enum.Enum):
    NONE = "none"
    IMPLICIT = "implicit"
    OPTED_IN = "opted_in"
    OPTED_OUT = "opted_out"


class Marketing(str, enum.Enum):
    """Marketing consent, tracked apart from the overall state (Meta's marketing opt-out)."""

    NONE = "none"
    ALLOWED = "allowed"
    OPTED_OUT = "opted_out"


@dataclass(frozen=True)
class EventDraft:
    """An event as a caller asks for it to be recorded; the ledger adds ids, times and hashes.

    `source_ref` makes recording idempotent: the same inbound message id or API request id
    recorded twice yields one event. `identifier` is the phone or BSUID the event came under;
    the ledger finds (or makes) its person unless `person_id` says it.
    """

    identifier: str
    action: Action
    channel: Channel
    source_ref: str
    recorded_by: str
    scope: Scope = Scope.ALL
    consent_text: str | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    occurred_at: datetime | None = None
    person_id: str | None = None


@dataclass(frozen=True)
class ConsentEvent:
    """One stored, hash-chained ledger event."""

    seq: int
    event_id: str
    identifier: str
    person_id: str
    action: Action
    scope: Scope
    basis: Basis | None
    channel: Channel
    consent_text: str | None
    evidence: dict[str, Any]
    source_ref: str
    occurred_at: datetime
    recorded_at: datetime
    recorded_by: str
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form, used by the API, the CLI and the audit export."""
        return {
            "seq": self.seq,
            "event_id": self.event_id,
            "person_id": self.person_id,
            "wa_id": self.identifier if kind_of(self.identifier) is IdentifierKind.PHONE else None,
            "user_id": self.identifier if kind_of(self.identifier) is not IdentifierKind.PHONE else None,
            "action": self.action.value,
            "scope": self.scope.value,
            "basis": self.basis.value if self.basis else None,
            "channel": self.channel.value,
            "consent_text": self.consent_text,
            "evidence": self.evidence,
            "source_ref": self.source_ref,
            "occurred_at": self.occurred_at.isoformat(),
            "recorded_at": self.recorded_at.isoformat(),
            "recorded_by": self.recorded_by,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class ConsentState:
    """What a person's events add up to, with the events that justify it.

    `identifier` is the one it was asked for; `identifiers`, every one the person has now
    (none for an identifier that names nobody yet)."""

    identifier: str
    state: State = State.NONE
    marketing: Marketing = Marketing.NONE
    last_inbound_at: datetime | None = None
    consent_event: ConsentEvent | None = None  # the event behind the current state
    session_event: ConsentEvent | None = None  # latest implicit consent (user-initiated session)
    opt_out_event: ConsentEvent | None = None  # latest opt-out of any scope
    notice_event: ConsentEvent | None = None  # when the user was told how to stop (R9)
    person_id: str | None = None
    identifiers: tuple[str, ...] = ()

    @property
    def wa_id(self) -> str | None:
        """The person's phone number, when known."""
        return self._first(IdentifierKind.PHONE)

    @property
    def user_id(self) -> str | None:
        """The person's BSUID, when known."""
        return self._first(IdentifierKind.USER_ID)

    def _first(self, kind: IdentifierKind) -> str | None:
        return next((i for i in self.identifiers or (self.identifier,) if kind_of(i) is kind), None)

    @property
    def address(self) -> str:
        """Where a message to the person goes: their phone when known (Meta prefers it), else their BSUID."""
        return self.wa_id or self.user_id or self.identifier

    def window_open_until(self, now: datetime) -> datetime | None:
        """End of the 24-hour customer service window, or None when it is closed."""
        if self.last_inbound_at is None:
            return None
        closes = self.last_inbound_at + SERVICE_WINDOW
        return closes if closes > now else None


@dataclass(frozen=True)
class Fold:
    """What a user's events add up to, with the positions of the events that justify it."""

    state: State = State.NONE
    marketing: Marketing = Marketing.NONE
    consent: int | None = None
    session: int | None = None
    opt_out: int | None = None
    notice: int | None = None


def occurrence_order(times: Sequence[tuple[datetime, datetime]]) -> list[int]:
    """Positions of a user's events, given in chain (recording) order as (occurred_at,
    recorded_at) pairs, in the order they happened. State follows what the user did when: a
    paper opt-in from last year imported today does not undo last week's STOP, and a STOP Meta
    redelivers days late does not undo the START the user sent after it. No event counts as
    happening after the moment it was recorded (R7): an opt-in that claims a later time cannot
    outrank an opt-out recorded after it (the ledger refuses such claims now; rows written
    before may hold them). Meta's timestamps are whole seconds, so events are compared to the
    second, and those of the same second keep their chain order."""
    return sorted(range(len(times)), key=lambda position: (min(times[position]).replace(microsecond=0), position))


# What the user sends on WhatsApp: a keyword or button opt-in lifts their own opt-out, nothing more.
USER_CHANNELS = frozenset({Channel.WHATSAPP_KEYWORD.value, Channel.WHATSAPP_BUTTON.value})  # values: rows hold plain strings


@dataclass(frozen=True)
class _Held:
    """What a user had: restored when a keyword lifts the opt-out that stopped it."""

    state: State
    consent: int | None
    marketing_out: bool


def fold(events: Sequence[tuple[str, str, str]]) -> Fold:
    """Fold (action, scope, channel) triples, in the order they happened, into a state.

    The latest event that speaks about a scope wins: an opt-out of all also stops marketing, an
    explicit opt-in of all (collected with consent text and evidence) allows it again, a
    marketing-scope event touches marketing only. A keyword opt-in (START, a button) only lifts
    the user's own opt-out of all: it restores what they had before it, an explicit opt-in with
    its evidence or implicit consent, and a marketing opt-out they had made (only a marketing
    resume lifts that); it never creates consent they had not given (R8). A user-initiated
    session gives implicit consent unless a stronger state already holds: it never undoes an
    opt-out (R10) or downgrades an explicit opt-in. Works on plain strings so that the ledger
    can fold database rows without building an object per event.
    """
    state, marketing_out = State.NONE, False
    consent = session = opt_out = notice = None
    held: _Held | None = None  # while opted out of all: what the opt-out stopped
    for position, (action, scope, channel) in enumerate(events):
        if action == Action.OPT_IN and scope == Scope.MARKETING:
            marketing_out = False
            if held is not None:
                held = _Held(held.state, held.consent, marketing_out=False)
        elif action == Action.OPT_IN and channel in USER_CHANNELS:
            if held is not None:
                state, consent, marketing_out, held = held.state, held.consent, held.marketing_out, None
        elif action == Action.OPT_IN:
            state, consent, marketing_out, held = State.OPTED_IN, position, False, None
        elif action == Action.OPT_OUT:
            opt_out = position
            if scope == Scope.ALL and held is None:
                held = _Held(state, consent, marketing_out)
            elif scope == Scope.MARKETING and held is not None:
                held = _Held(held.state, held.consent, marketing_out=True)
            marketing_out = True
            if scope == Scope.ALL:
                state, consent = State.OPTED_OUT, position
        elif action == Action.IMPLICIT:
            session = position
            if state in (State.NONE, State.IMPLICIT):
                state, consent = State.IMPLICIT, position
            elif held is not None and held.state is State.NONE:
                held = _Held(State.IMPLICIT, position, held.marketing_out)
        elif action == Action.OPT_OUT_NOTICE_GIVEN and notice is None:
            notice = position
    if marketing_out:
        marketing = Marketing.OPTED_OUT
    elif state is State.OPTED_IN:
        marketing = Marketing.ALLOWED
    else:
        marketing = Marketing.NONE
    return Fold(state, marketing, consent, session, opt_out, notice)


def derive_state(
    identifier: str, events: Sequence[ConsentEvent], last_inbound_at: datetime | None = None
) -> ConsentState:
    """A person's current state from their events, in chain order."""
    order = occurrence_order([(event.occurred_at, event.recorded_at) for event in events])
    folded = fold([(events[at].action, events[at].scope, events[at].channel) for at in order])
    return state_from_fold(identifier, folded, lambda position: events[order[position]], last_inbound_at)


def state_from_fold(
    identifier: str, folded: Fold, event_at: Callable[[int], ConsentEvent], last_inbound_at: datetime | None,
    person_id: str | None = None, identifiers: tuple[str, ...] = (),
) -> ConsentState:
    """Build the state, turning only the few positions the fold kept into events, each once
    (the session that gave implicit consent is often the event behind the state too)."""
    events: dict[int, ConsentEvent] = {}

    def pick(position: int | None) -> ConsentEvent | None:
        if position is None:
            return None
        if position not in events:
            events[position] = event_at(position)
        return events[position]

    return ConsentState(
        identifier, folded.state, folded.marketing, last_inbound_at,
        pick(folded.consent), pick(folded.session), pick(folded.opt_out), pick(folded.notice), person_id, identifiers,
    )


def delivery_marketing_opt_out(
    identifier: str, source_ref: str, recorded_by: str, evidence: dict[str, Any], occurred_at: datetime | None = None
) -> EventDraft:
    """Meta refused a delivery with 131050 (the user stopped marketing messages in WhatsApp):
    the ledger must say so too, whether the send call or a status reported it."""
    return EventDraft(
        identifier=identifier, action=Action.OPT_OUT, scope=Scope.MARKETING, channel=Channel.WHATSAPP_DELIVERY,
        source_ref=source_ref, recorded_by=recorded_by, evidence=evidence, occurred_at=occurred_at,
    )


def session_opened(identifier: str, message_id: str, at: datetime, previous: datetime | None, recorded_by: str) -> EventDraft | None:
    """The implicit consent an inbound message gives when it opens a session (R6), else None.

    A session starts with the user's first message ever (`previous` is None), or the first
    one after the 24-hour window since their previous message closed. A redelivery, however
    late, is never after the message it repeats, so it opens nothing.
    """
    if previous is not None and at - previous < SERVICE_WINDOW:
        return None
    return EventDraft(
        identifier=identifier, action=Action.IMPLICIT, channel=Channel.WHATSAPP_SESSION, source_ref=f"implicit:{message_id}",
        recorded_by=recorded_by, evidence={"message_id": message_id}, occurred_at=at,
    )


class InvalidEvent(ValueError):
    """An event the ledger refuses to record; the message is the one-line reason."""


MAX_CONSENT_TEXT = 10_000
# A caller's clock may run this far ahead of ours: such a time is recorded as the moment of
# recording; anything later is refused (R7: no event outranks a later opt-out by its claim).
CLOCK_SKEW = timedelta(minutes=1)
MAX_EVIDENCE_BYTES = 64 * 1024


def basis_of(action: Action) -> Basis | None:
    """Opt-ins are explicit consent, sessions implicit; other events grant nothing."""
    return {Action.OPT_IN: Basis.EXPLICIT, Action.IMPLICIT: Basis.IMPLICIT}.get(action)


def check_draft(draft: EventDraft, now: datetime) -> None:
    """Enforce what every recorded event must carry, whoever records it (R4, R5)."""
    if not draft.source_ref or len(draft.source_ref) > 255:
        raise InvalidEvent("source_ref must be 1 to 255 characters")
    if not draft.source_ref.isprintable():
        raise InvalidEvent("source_ref must not hold control characters")
    if not draft.recorded_by or len(draft.recorded_by) > MAX_ACTOR:
        raise InvalidEvent(f"recorded_by must be 1 to {MAX_ACTOR} characters")
    if not isinstance(draft.evidence, dict):
        raise InvalidEvent("evidence must be a JSON object")
    if draft.consent_text is not None and len(draft.consent_text) > MAX_CONSENT_TEXT:
        raise InvalidEvent(f"consent_text is longer than {MAX_CONSENT_TEXT} characters")
    if draft.occurred_at is not None:
        if draft.occurred_at.tzinfo is None:
            raise InvalidEvent("occurred_at must carry a time zone")
        if draft.occurred_at > now + CLOCK_SKEW:
            raise InvalidEvent("occurred_at is in the future: an event is recorded when it has happened")
    if draft.action is Action.OPT_IN:
        if not (draft.consent_text or "").strip():
            raise InvalidEvent("an opt-in needs the consent_text the person agreed to")
        if not draft.evidence:
            raise InvalidEvent("an opt-in needs evidence of how it was collected")
        if draft.channel is Channel.WHATSAPP_SESSION:
            raise InvalidEvent("a WhatsApp session is implicit consent, not an opt-in")
        if draft.channel is Channel.WHATSAPP_ANSWER and "question_message_id" not in draft.evidence:
            raise InvalidEvent("a yes is an opt-in only as the answer to the bot's own question, which the evidence names")
    if draft.action is Action.IMPLICIT and draft.channel is not Channel.WHATSAPP_SESSION:
        raise InvalidEvent("implicit consent comes only from a user-initiated WhatsApp session")
    if (draft.action in IDENTITY_ACTIONS) != (draft.channel is Channel.WHATSAPP_IDENTITY):
        raise InvalidEvent("who is who is recorded only from what Meta shows, never by hand")
