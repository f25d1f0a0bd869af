"""Who may be sent what, right now: SPEC §2's table as one pure function.

Given a user's derived consent state, the kind of message and the time, `decide` answers
allowed (naming the ledger event that allows it) or refused with a machine-readable reason.
It is asked when a message is queued and again just before it is sent.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from bot.domain.consent import ConsentEvent, ConsentState, Marketing, State


class MessageKind(str, enum.Enum):
    FREE_FORM = "free_form"  # business-initiated text in the window (welcome, staff text)
    REPLY = "reply"  # an answer to what the user just asked
    STOP_CONFIRMATION = "stop_confirmation"
    START_CONFIRMATION = "start_confirmation"  # says the user is subscribed (START, "Resume promotions"): not once they have opted out again
    HELP_ANSWER = "help_answer"
    OPT_IN_QUESTION = "opt_in_question"  # the bot's own "Reply YES to get offers" (R8): never to someone who said no
    UTILITY_TEMPLATE = "utility"
    MARKETING_TEMPLATE = "marketing"
    AUTHENTICATION_TEMPLATE = "authentication"


FREE_FORM_KINDS = frozenset({
    MessageKind.FREE_FORM, MessageKind.REPLY, MessageKind.STOP_CONFIRMATION, MessageKind.START_CONFIRMATION, MessageKind.HELP_ANSWER,
    MessageKind.OPT_IN_QUESTION,
})
# What an opted-out user may still get inside the window: they asked for it (R10).
ANSWERS_AFTER_OPT_OUT = frozenset({MessageKind.REPLY, MessageKind.STOP_CONFIRMATION, MessageKind.HELP_ANSWER})


class Refusal(str, enum.Enum):
    NO_CONSENT = "no_consent"
    OPTED_OUT = "opted_out"
    MARKETING_OPTED_OUT = "marketing_opted_out"
    WINDOW_CLOSED = "window_closed"
    PAUSED = "paused"
    INVALID_RECIPIENT = "invalid_recipient"
    NEEDS_PHONE_NUMBER = "needs_phone_number"  # Meta delivers it to a phone only (authentication templates, SPEC §6)
    TEMPLATE_UNKNOWN = "template_unknown"  # not in Meta's template catalog (SPEC §7)
    TEMPLATE_NOT_APPROVED = "template_not_approved"  # in it, but PENDING, REJECTED, PAUSED or DISABLED


@dataclass(frozen=True)
class ImplicitCoverage:
    """Which templates a user-initiated session's implicit consent covers (SPEC: default yes)."""

    utility: bool = True
    authentication: bool = True


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: Refusal | None = None
    consent_event: ConsentEvent | None = None

    @property
    def consent_event_id(self) -> str | None:
        return self.consent_event.event_id if self.consent_event else None


def _allow(event: ConsentEvent | None) -> Decision:
    return Decision(True, consent_event=event)


def _refuse(reason: Refusal) -> Decision:
    return Decision(False, reason=reason)


def decide(
    consent: ConsentState, kind: MessageKind, now: datetime, coverage: ImplicitCoverage = ImplicitCoverage()
) -> Decision:
    """Apply SPEC §2's table. Opt-outs are checked first: they are the reason that matters most."""
    if kind in FREE_FORM_KINDS:
        return _decide_free_form(consent, kind, now)
    if consent.state is State.OPTED_OUT:
        return _refuse(Refusal.OPTED_OUT)
    if consent.state is State.NONE:
        return _refuse(Refusal.NO_CONSENT)
    if kind is MessageKind.MARKETING_TEMPLATE:
        if consent.marketing is Marketing.OPTED_OUT:
            return _refuse(Refusal.MARKETING_OPTED_OUT)
        if consent.state is not State.OPTED_IN:
            return _refuse(Refusal.NO_CONSENT)
        return _allow(consent.consent_event)
    if kind is MessageKind.AUTHENTICATION_TEMPLATE and consent.wa_id is None:
        return _refuse(Refusal.NEEDS_PHONE_NUMBER)
    if consent.state is State.IMPLICIT:
        covered = coverage.utility if kind is MessageKind.UTILITY_TEMPLATE else coverage.authentication
        if not covered:
            return _refuse(Refusal.NO_CONSENT)
    return _allow(consent.consent_event)


def _decide_free_form(consent: ConsentState, kind: MessageKind, now: datetime) -> Decision:
    if consent.state is State.OPTED_OUT and kind not in ANSWERS_AFTER_OPT_OUT:
        return _refuse(Refusal.OPTED_OUT)
    if consent.state is State.NONE:
        return _refuse(Refusal.NO_CONSENT)
    if kind is MessageKind.OPT_IN_QUESTION and consent.marketing is Marketing.OPTED_OUT:
        return _refuse(Refusal.MARKETING_OPTED_OUT)  # they said no to offers: asking again is pressing them
    if consent.window_open_until(now) is None:
        return _refuse(Refusal.WINDOW_CLOSED)
    if consent.state is State.OPTED_OUT:
        # The STOP confirmation rests on the opt-out itself; other answers on the session the user opened.
        if kind is MessageKind.STOP_CONFIRMATION:
            return _allow(consent.opt_out_event)
        return _allow(consent.session_event or consent.opt_out_event)
    return _allow(consent.consent_event)
