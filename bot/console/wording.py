"""The ledger and the outbox in words staff read: what an event means, how it was collected,
its evidence, and why a message was refused. One place for every such phrase, so that no page
shows a raw code. Nothing here knows Flask."""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from bot.domain.consent import Action, Channel, ConsentEvent, ConsentState, Marketing, Scope, State
from bot.domain.identity import IdentifierKind, kind_of
from bot.domain.policy import Refusal
from bot.domain.staff import STAFF_PREFIX
from bot.storage.outbox import MessageState

STATES = {
    State.NONE: "No consent",
    State.IMPLICIT: "Implicit consent (they wrote to us)",
    State.OPTED_IN: "Opted in",
    State.OPTED_OUT: "Opted out",
}
MARKETING = {Marketing.NONE: "Not allowed (no marketing opt-in)", Marketing.ALLOWED: "Allowed", Marketing.OPTED_OUT: "Opted out"}
IDENTIFIER_KINDS = {IdentifierKind.PHONE: "Phone", IdentifierKind.USER_ID: "BSUID", IdentifierKind.PARENT_USER_ID: "Parent BSUID"}
CHANNELS = {  # where staff say they collected consent (the forms' choices)
    Channel.WEB: "Website", Channel.IVR: "Phone call (IVR)", Channel.PAPER: "Paper form", Channel.SMS: "SMS",
    Channel.EMAIL: "Email", Channel.IN_PERSON: "In person", Channel.API: "Staff (asked us directly)",
}
MESSAGE_STATES = {
    MessageState.QUEUED: "Queued", MessageState.SENT: "Sent", MessageState.DELIVERED: "Delivered", MessageState.READ: "Read",
    MessageState.FAILED: "Failed", MessageState.BLOCKED: "Refused",
}
# Why a message was not sent, as the policy and Meta say it (SPEC §2's reasons).
REFUSALS = {
    Refusal.NO_CONSENT: "They have not given the consent this kind of message needs.",
    Refusal.OPTED_OUT: "They had opted out of all messages.",
    Refusal.MARKETING_OPTED_OUT: "They had opted out of marketing messages.",
    Refusal.WINDOW_CLOSED: "The 24-hour window was closed: outside it only templates may be sent.",
    Refusal.PAUSED: "Its campaign was paused.",
    Refusal.INVALID_RECIPIENT: "The recipient is not a valid phone number or BSUID.",
    Refusal.NEEDS_PHONE_NUMBER: "Meta delivers this kind of message to a phone number only, and none is known.",
    Refusal.TEMPLATE_UNKNOWN: "The template is not in Meta's catalog for this account.",
    Refusal.TEMPLATE_NOT_APPROVED: "The template is not approved by Meta (pending, rejected, paused or disabled).",
}
_WHAT = {
    (Action.OPT_IN, Scope.ALL): "Opted in",
    (Action.OPT_IN, Scope.MARKETING): "Opted in to marketing",
    (Action.OPT_OUT, Scope.ALL): "Opted out of all messages",
    (Action.OPT_OUT, Scope.MARKETING): "Opted out of marketing",
}
_OTHER_ACTIONS = {
    Action.IMPLICIT: "Started a conversation (implicit consent)",
    Action.OPT_OUT_NOTICE_GIVEN: "Was told how to opt out",
    Action.POSSIBLE_OPT_OUT: "Possibly asked to opt out (for staff review)",
    Action.POSSIBLE_OPT_OUT_DISMISSED: "Possible opt-out reviewed: not an opt-out",
    Action.IDENTITY_LINKED: "Identifier linked to this person",
    Action.IDENTITY_RETIRED: "Identifier retired (they moved away from it)",
    Action.PEOPLE_MERGED: "Found to be the same person as another record",
}
_HOW = {
    Channel.WEB: "on the website", Channel.IVR: "on a phone call (IVR)", Channel.PAPER: "on a paper form",
    Channel.SMS: "by SMS", Channel.EMAIL: "by email", Channel.IN_PERSON: "in person", Channel.API: "recorded by staff",
    Channel.WHATSAPP_SESSION: "by writing on WhatsApp",
    Channel.WHATSAPP_PREFERENCES: "in WhatsApp's own settings",
    Channel.WHATSAPP_DELIVERY: "as Meta refused a delivery (they stopped marketing in WhatsApp)",
    Channel.WHATSAPP_IDENTITY: "as Meta showed it",
}
_SAID = {  # channels where the consent text is what the user said or tapped
    Channel.WHATSAPP_KEYWORD: "by replying {said} on WhatsApp",
    Channel.WHATSAPP_BUTTON: "by tapping {said} on WhatsApp",
    Channel.WHATSAPP_ANSWER: "by answering {said} to our opt-in question on WhatsApp",
}
_PATTERN_SIGNS = set("\\()[]|?*+")  # a matched keyword-file sentence is a regular expression, not words
_EVIDENCE_LABELS = {
    "message_id": "WhatsApp message", "keyword": "Keyword", "language": "Language", "reference": "Proof reference",
    "note": "Note", "ip": "IP address", "form": "Form", "reply": "Reply sent", "outbound_message_id": "Message sent",
    "said": "Their words", "reviewed_by": "Reviewed by", "possible_opt_out_event_id": "Possible opt-out reviewed",
    "question_message_id": "Question asked", "answer": "Their answer", "error_code": "Meta error code",
    "confirmed_by": "Confirmed from WhatsApp", "whatsapp_message_id": "WhatsApp message", "code": "Code",
    "consent_text_shown": "Consent text shown", "seen_with": "Seen with", "moved_to": "Moved to", "moved_from": "Moved from",
    "absorbed_person_id": "Record merged in",
}


def event_summary(event: ConsentEvent) -> str:
    """What happened and how, such as "Opted out of marketing — by replying “Stop promotions” on WhatsApp"."""
    what = _WHAT.get((event.action, event.scope)) or _OTHER_ACTIONS[event.action]
    return f"{what} — {event_how(event)}"


def event_how(event: ConsentEvent) -> str:
    """How an event came about: "by replying “STOP” on WhatsApp", "on the website"."""
    said = _SAID.get(event.channel)
    if event.action is Action.OPT_OUT_NOTICE_GIVEN:
        return "in our reply on WhatsApp"
    if said and event.consent_text:
        return said.format(said=f"“{event.consent_text}”")
    return _HOW.get(event.channel, "on WhatsApp")


def shows_consent_text(event: ConsentEvent) -> bool:
    """Whether the page should quote the event's consent text: what the person agreed to (the
    words of a keyword are in the summary already)."""
    return bool(event.consent_text) and event.channel not in _SAID


def evidence_items(evidence: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(label, value) pairs for a definition list; a nested object's value is its own pairs."""
    items: list[tuple[str, Any]] = []
    for key, value in evidence.items():
        if value is None or value == "":
            continue
        label = _EVIDENCE_LABELS.get(key, key.replace("_", " ").capitalize())
        if isinstance(value, Mapping):
            items.append((label, evidence_items(value)))
        elif isinstance(value, list):
            items.append((label, ", ".join(str(part) for part in value)))
        elif key == "keyword" and _PATTERN_SIGNS & set(str(value)):
            items.append((label, "a sentence pattern of the keyword file"))  # the pattern itself tells staff nothing
        else:
            items.append((label, str(value)))
    return items


def actor_name(recorded_by: str) -> str:
    """Who recorded something: a staff member's email, or the part of the bot that did."""
    if recorded_by.startswith(STAFF_PREFIX):
        return recorded_by.removeprefix(STAFF_PREFIX)
    return {"webhook": "the bot (from WhatsApp)", "page": "the hosted page", "sender": "the bot (sending)"}.get(recorded_by, recorded_by)


def refusal(reason: str | None, error_code: int | None = None) -> str:
    """Why a message was refused or failed, in a sentence."""
    try:
        return REFUSALS[Refusal(reason)]
    except ValueError:
        code = f" (error {error_code})" if error_code else ""
        return f"Meta did not deliver it{code}." if reason else "No reason was recorded."


def refused_reply(reason: str | None, state: ConsentState) -> str:
    """Why a reply staff just sent was refused, with the opt-out behind it when that is why:
    Not sent. They had opted out of all messages (by replying “STOP” on WhatsApp, 3 Dec 2026 14:02 UTC)."""
    behind = {Refusal.OPTED_OUT.value: state.consent_event, Refusal.MARKETING_OPTED_OUT.value: state.opt_out_event}.get(reason or "")
    why = refusal(reason)
    if behind is not None:
        why = f"{why.removesuffix('.')} ({event_how(behind)}, {moment(behind.occurred_at)})."
    return f"Not sent. {why}"


def moment(at: datetime | None) -> str:
    """A time as staff read it: 3 Dec 2026 14:02 UTC."""
    return f"{at.day} {at:%b %Y %H:%M} UTC" if at else ""


def time_left(until: datetime, now: datetime) -> str:
    """How long until `until`, in hours and minutes: 3 h 12 min."""
    minutes = max(0, int((until - now) / timedelta(minutes=1)))
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def identifier_kind(identifier: str) -> str:
    return IDENTIFIER_KINDS[kind_of(identifier)]


def state_line(state: ConsentState) -> str:
    return STATES[state.state]


def marketing_line(state: ConsentState) -> str:
    return MARKETING[state.marketing]


def message_state(state: MessageState) -> str:
    return MESSAGE_STATES[state]


def message_content(content: Mapping[str, Any]) -> str:
    """What a message said: a template's name and language, or its text."""
    template = content.get("template")
    if template:
        return f"Template {template['name']} ({template['language']})"
    return str(content.get("text") or "")
