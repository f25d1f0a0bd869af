"""What staff ask for, read from untrusted input (API bodies, CSV rows) into domain objects.

Every rule about a field lives here once, so the staff API, the CSV import and the hosted
pages refuse the same things with the same one-line reasons. Nothing here knows Flask.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from bot.domain.consent import Action, Channel, EventDraft, Scope
from bot.domain.identity import InvalidIdentifier, normalize_identifier
from bot.domain.policy import MessageKind
from bot.domain.replies import Replies, Reply
from bot.storage.outbox import Message, Template
from bot.storage.templates import TemplateCatalog

# Where staff may say a consent event was collected (R1). WhatsApp is not among them (R5).
STAFF_CHANNELS = (Channel.WEB, Channel.IVR, Channel.PAPER, Channel.SMS, Channel.EMAIL, Channel.IN_PERSON, Channel.API)
TEMPLATE_KINDS = {
    "marketing": MessageKind.MARKETING_TEMPLATE,
    "utility": MessageKind.UTILITY_TEMPLATE,
    "authentication": MessageKind.AUTHENTICATION_TEMPLATE,
}
MAX_TEXT = 4096  # Meta's limit for a text message body
YEARS = range(1900, 10_000)  # when a recorded time may fall, in UTC
_TEMPLATE_NAME = re.compile(r"[a-z0-9_]{1,512}")
_LANGUAGE = re.compile(r"[a-z]{2,3}(_[A-Z]{2,4})?")
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")  # JSON's "\ud800" escape decodes to one; UTF-8 cannot hold it


class InvalidField(ValueError):
    """A field staff sent that cannot be used; `str()` is the one-line reason."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _only(body: object, allowed: set[str], required: set[str], what: str) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidField(what, "must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidField(unknown[0], f"unknown field (allowed: {', '.join(sorted(allowed))})")
    missing = sorted(required - set(body))
    if missing:
        raise InvalidField(missing[0], "is required")
    return body


def _text(body: Mapping[str, Any], field: str, limit: int, required: bool = False) -> str | None:
    value = body.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidField(field, "must be a non-empty string")
    if len(value) > limit:
        raise InvalidField(field, f"must be at most {limit} characters")
    return unicode_field(value, field)


def unicode_field(value: object, field: str) -> Any:
    """`value` if every string in it (object keys too, at any depth) is valid Unicode: a lone
    surrogate cannot be stored, hashed or sent, and would otherwise fail deep in the ledger."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str) and _LONE_SURROGATE.search(item):
            raise InvalidField(field, "must be valid Unicode text (it holds a lone UTF-16 surrogate)")
        if isinstance(item, Mapping):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return value


def _choice(body: Mapping[str, Any], field: str, choices: tuple[str, ...], default: str | None = None) -> str:
    value = body.get(field, default)
    if value not in choices:
        raise InvalidField(field, f"must be one of {', '.join(choices)}")
    return value


def identifier_field(value: object, field: str = "wa_id") -> str:
    """Who a request names: a phone number or a BSUID (SPEC §6), wherever a wa_id is taken."""
    try:
        return normalize_identifier(value)
    except InvalidIdentifier as error:
        raise InvalidField(field, str(error)) from None


def timestamp_field(value: object, field: str, naive_is_utc: bool = False) -> datetime:
    """An ISO 8601 time with its zone (a time without one is ambiguous evidence), in UTC.

    `naive_is_utc` reads a time without a zone as UTC, for filters staff type by hand.
    """
    if not isinstance(value, str):
        raise InvalidField(field, "must be an ISO 8601 date-time string")
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidField(field, f"{value[:40]!r} is not an ISO 8601 date-time") from None
    if moment.tzinfo is None and naive_is_utc:
        moment = moment.replace(tzinfo=UTC)
    if moment.tzinfo is None:
        raise InvalidField(field, "must carry a time zone, for example 2026-11-24T12:00:00Z")
    return _in_utc_range(moment, field)


def _in_utc_range(moment: datetime, field: str) -> datetime:
    """The time in UTC, refused outside YEARS: the ledger stores UTC, and a year 1 time would
    not even read back on a PostgreSQL session west of Greenwich (there is no year 0)."""
    out_of_range = InvalidField(field, f"must fall in the years {YEARS.start} to {YEARS.stop - 1} (UTC)")
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:  # before year 1 or after 9999 once in UTC
        raise out_of_range from None
    if utc.year not in YEARS:
        raise out_of_range
    return utc


# Why staff may not name WhatsApp as the channel: what users do there, the webhook records.
WHATSAPP_REFUSALS = {
    Action.OPT_IN: "staff cannot record consent collected through WhatsApp: an explicit opt-in cannot come "
    "from a business-initiated message (R5); users opt in themselves by writing START",
    Action.OPT_OUT: "staff cannot record an opt-out through WhatsApp: WhatsApp opt-outs come from the user's own "
    "messages (STOP, the opt-out buttons), which the bot records itself; record one the user asked staff for "
    "under another channel, such as api",
}


def staff_channel(value: object, action: Action) -> Channel:
    """Where staff collected an opt-in or opt-out; WhatsApp is refused with the reason for that action."""
    if isinstance(value, str) and value.startswith("whatsapp"):
        raise InvalidField("channel", WHATSAPP_REFUSALS[action])
    names = tuple(channel.value for channel in STAFF_CHANNELS)
    if value not in names:
        raise InvalidField("channel", f"must be one of {', '.join(names)}")
    return Channel(value)


CONSENT_FIELDS = {"wa_id", "action", "channel", "scope", "consent_text", "evidence", "occurred_at"}


def consent_draft(body: object, source_ref: str, recorded_by: str) -> EventDraft:
    """An opt-in or opt-out staff recorded off WhatsApp (R1, R4, R5). The ledger checks the rest."""
    body = _only(body, CONSENT_FIELDS, {"wa_id", "action", "channel"}, "body")
    action = Action(_choice(body, "action", (Action.OPT_IN.value, Action.OPT_OUT.value)))
    evidence = body.get("evidence", {})
    if not isinstance(evidence, Mapping):
        raise InvalidField("evidence", "must be a JSON object (what proves it: form id, recording, signed paper...)")
    occurred_at = body.get("occurred_at")
    return EventDraft(
        identifier=identifier_field(body["wa_id"]),
        action=action,
        channel=staff_channel(body["channel"], action),
        scope=Scope(_choice(body, "scope", tuple(scope.value for scope in Scope), Scope.ALL.value)),
        consent_text=_text(body, "consent_text", 10_000, required=action is Action.OPT_IN),
        evidence=dict(unicode_field(evidence, "evidence")),
        occurred_at=timestamp_field(occurred_at, "occurred_at") if occurred_at is not None else None,
        source_ref=source_ref,
        recorded_by=recorded_by,
    )


def template_field(value: object) -> tuple[Template, MessageKind]:
    """A template as Meta knows it: name, language, category, optional components."""
    body = _only(value, {"name", "language", "category", "components"}, {"name", "language", "category"}, "template")
    name, language = body["name"], body["language"]
    if not isinstance(name, str) or not _TEMPLATE_NAME.fullmatch(name):
        raise InvalidField("template.name", "must be a template name: lowercase letters, digits and _")
    if not isinstance(language, str) or not _LANGUAGE.fullmatch(language):
        raise InvalidField("template.language", "must be a language code such as en or en_US")
    kind = TEMPLATE_KINDS[_choice(body, "category", tuple(TEMPLATE_KINDS))]
    components = body.get("components", [])
    if not isinstance(components, list) or not all(isinstance(part, Mapping) for part in components):
        raise InvalidField("template.components", "must be a list of objects, as in Meta's template message")
    unicode_field(components, "template.components")
    return Template(name, language, [dict(part) for part in components]), kind


def parameters_field(template: Template, catalog: TemplateCatalog | None) -> None:
    """Refuse a send whose header or body parameters do not match the template's in Meta's
    catalog: Meta would refuse it (132000) after it was queued, consent-checked and paid for in
    send capacity. Nothing is checked without a catalog, or for a template not in it."""
    entry = catalog.get(template.name, template.language) if catalog else None
    mismatch = entry.parameter_mismatch(template.components) if entry else None
    if mismatch:
        raise InvalidField("template.components", mismatch)


def message_request(body: object, replies: Replies) -> Message:
    """`{"to", "template"}`, `{"to", "text"}` or `{"to", "ask": "opt_in", "language"?}` (the
    bot's own opt-in question, in its words: a yes to it is consent to exactly that text); the
    recipient is checked by the outbox (invalid_recipient)."""
    body = _only(body, {"to", "template", "text", "ask", "language"}, {"to"}, "body")
    to = body["to"]
    if not isinstance(to, str):
        raise InvalidField("to", "must be a phone number string")
    if sum(field in body for field in ("template", "text", "ask")) != 1:
        raise InvalidField("body", "give one of template, text or ask")
    if "language" in body and "ask" not in body:
        raise InvalidField("language", "is only for ask (a template has its own language)")
    if "ask" in body:
        return opt_in_question(to, body["ask"], body.get("language", replies.keywords.languages[0]), replies)
    if "text" in body:
        return Message(to, MessageKind.FREE_FORM, text=_text(body, "text", MAX_TEXT, required=True))
    template, kind = template_field(body["template"])
    return Message(to, kind, template=template)


def opt_in_question(to: str, ask: object, language: object, replies: Replies) -> Message:
    """The bot's opt-in question to `to`, in one of the keyword file's languages."""
    if ask != "opt_in":
        raise InvalidField("ask", "must be opt_in (the bot's own opt-in question)")
    if language not in replies.keywords.languages:
        raise InvalidField("language", f"must be one of {', '.join(replies.keywords.languages)}")
    return Message(to, MessageKind.OPT_IN_QUESTION, text=replies.render(Reply.OPT_IN_QUESTION, language), language=language)


def campaign_request(body: object, max_recipients: int) -> tuple[Template, MessageKind, list[str], bool]:
    """A template to a list: (template, kind, recipients as given, dry run?)."""
    body = _only(body, {"template", "recipients", "dry_run"}, {"template", "recipients"}, "body")
    template, kind = template_field(body["template"])
    recipients = body["recipients"]
    if not isinstance(recipients, list) or not all(isinstance(number, str) for number in recipients):
        raise InvalidField("recipients", "must be a list of phone number strings")
    if not recipients or len(recipients) > max_recipients:
        raise InvalidField("recipients", f"must hold 1 to {max_recipients} numbers")
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise InvalidField("dry_run", "must be true or false")
    return template, kind, recipients, dry_run
