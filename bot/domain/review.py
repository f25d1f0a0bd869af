"""Staff review of possible opt-outs ("please stop sending me this"): what a decision records.

Both decisions are ledger events, so the review queue is an audit trail in the ledger itself:
hash-chained with everything else, in the person's history and in the audit export, and
nothing outside the ledger can make an item leave the queue unseen. A confirmation is a real
opt-out of everything (the user's words are its consent text, their message and the reviewer
its evidence); a dismissal is a `possible_opt_out_dismissed` event that changes no state.
Both take the source reference `review:<possible opt-out's event id>`, which the ledger keeps
unique: an item is decided once, a repeated click is the same decision, and a second,
different decision is refused as a conflict.
"""
from __future__ import annotations

import enum

from bot.domain.consent import Action, Channel, ConsentEvent, EventDraft, Scope

# Staff record the decision; the words came from WhatsApp, but staff never record a WhatsApp
# channel (R5: WhatsApp-borne events are the bot's own), so it is the staff channel.
REVIEW_CHANNEL = Channel.API


class Decision(str, enum.Enum):
    CONFIRM = "confirm"  # it was an opt-out: record one
    DISMISS = "dismiss"  # it was not: record that staff said so


REVIEW_REF_PREFIX = "review:"


def review_ref(possible_opt_out_id: str) -> str:
    """The source reference every decision about this possible opt-out is recorded under."""
    return f"{REVIEW_REF_PREFIX}{possible_opt_out_id}"


def decision_draft(possible: ConsentEvent, decision: Decision, person_id: str, recorded_by: str) -> EventDraft:
    """The event that records `decision` about `possible` for the person it belongs to now
    (`person_id`: possibly another person than it was recorded for, after a merge)."""
    if possible.action is not Action.POSSIBLE_OPT_OUT:
        raise ValueError("only a possible opt-out is reviewed")
    evidence = {
        "possible_opt_out_event_id": possible.event_id,
        "message_id": possible.evidence.get("message_id"),
        "said": possible.consent_text,
        "reviewed_by": recorded_by,
    }
    confirmed = decision is Decision.CONFIRM
    return EventDraft(
        identifier=possible.identifier, person_id=person_id,
        action=Action.OPT_OUT if confirmed else Action.POSSIBLE_OPT_OUT_DISMISSED, scope=Scope.ALL,
        channel=REVIEW_CHANNEL, consent_text=possible.consent_text if confirmed else None, evidence=evidence,
        source_ref=review_ref(possible.event_id), recorded_by=recorded_by,
    )
