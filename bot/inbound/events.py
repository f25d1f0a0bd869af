"""Meta's webhook bodies as typed events: every entry, change, message and status of a POST.

`parse` never raises: anything it does not understand becomes an `Unrecognized` event that
is kept for inspection, so one odd item cannot hide the STOP next to it in the same batch.
"""
from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, overload

from bot.domain.identity import IdentifierKind, kind_of, mask_numbers, normalize_user_id, normalize_wa_id, phones_first

_LONE_SURROGATES = re.compile("[\ud800-\udfff]")


class MessageType(str, enum.Enum):
    TEXT = "text"
    BUTTON = "button"
    INTERACTIVE = "interactive"
    IMAGE = "image"
    AUDIO = "audio"
    VIDEO = "video"
    DOCUMENT = "document"
    STICKER = "sticker"
    LOCATION = "location"
    CONTACTS = "contacts"
    REACTION = "reaction"
    REQUEST_WELCOME = "request_welcome"
    ORDER = "order"
    EDIT = "edit"  # the user changed a message they sent: `text` is its new text or caption
    REVOKE = "revoke"  # the user deleted a message they sent
    UNSUPPORTED = "unsupported"
    OTHER = "other"  # a type Meta added after this code was written


class DeliveryStatus(str, enum.Enum):
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"


@dataclass(frozen=True)
class Media:
    """An image, audio, video, document or sticker: only its metadata and Meta's media id (the
    file itself is fetched from Meta, by id, by whoever needs it)."""

    id: str
    mime_type: str | None = None
    sha256: str | None = None
    filename: str | None = None


@dataclass(frozen=True)
class Reaction:
    """An emoji put on a message (`message_id`); an empty emoji takes the reaction back."""

    message_id: str
    emoji: str


@dataclass(frozen=True)
class InboundMessage:
    """A message a user sent: the start of everything consent-related.

    `identifiers`: the sender's phone and BSUIDs that Meta showed with it, phone first (a
    username user may have no phone); a contact-info reply adds the phone they shared."""

    message_id: str
    identifiers: tuple[str, ...]
    timestamp: datetime
    type: MessageType
    text: str | None = None  # the body of a text, or the caption of media
    button_payload: str | None = None  # quick-reply payload, or interactive reply id
    button_title: str | None = None
    quoted_id: str | None = None  # the message it replies to (Meta's `context.id`), when the user quoted one
    original_id: str | None = None  # the message an edit or a revoke changes
    media: Media | None = None
    reaction: Reaction | None = None
    shared: str | None = None  # JSON of a location or of contact cards, as Meta sent them

    @property
    def sender(self) -> str:
        """The identifier the sender is answered and recorded under: their phone if Meta showed it."""
        return self.identifiers[0]


@dataclass(frozen=True)
class Pricing:
    """What Meta bills a message as (a status's `pricing`): `category` such as marketing,
    utility, authentication or service; `type` such as regular or free_customer_service."""

    category: str
    type: str | None
    billable: bool | None


@dataclass(frozen=True)
class StatusUpdate:
    """What happened to a message the business sent. `recipients`: the identifiers Meta named
    (none for a group or a placeholder: the status is applied by message id)."""

    meta_message_id: str
    status: DeliveryStatus
    timestamp: datetime
    recipients: tuple[str, ...] = ()
    error_codes: tuple[int, ...] = ()
    pricing: Pricing | None = None


@dataclass(frozen=True)
class PreferenceUpdate:
    """The user pressed Stop or Resume for a category (marketing) inside WhatsApp."""

    identifiers: tuple[str, ...]
    category: str
    value: str  # one of PREFERENCE_VALUES
    timestamp: datetime
    detail: str | None = None


@dataclass(frozen=True)
class IdentityChange:
    """Meta says a user moved to a new number or BSUID (a system message, or the legacy
    `user_id_update` field): their consent goes with them, the identifiers they left name nobody."""

    event_id: str
    kind: str  # user_changed_number, user_changed_user_id, user_id_update
    left: tuple[str, ...]
    joined: tuple[str, ...]
    timestamp: datetime


@dataclass(frozen=True)
class AccountNotice:
    """A notice about the account, the number or a template (ACCOUNT_FIELDS), or a user's
    marketing sign-up through Meta's link: kept for staff."""

    field: str
    event: str
    details: dict[str, Any]
    subject: str = ""  # what it is about (a template, the number): a newer notice on it outranks this one
    at: datetime | None = None  # when Meta says it happened (the entry's `time`), when it says


@dataclass(frozen=True)
class Unrecognized:
    """Something we could not read; kept as it came, for inspection."""

    reason: str
    raw: str


# What reading a malformed item can raise (InvalidNumber is a ValueError).
_UNREADABLE = (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError, OSError)
WebhookEvent = InboundMessage | StatusUpdate | PreferenceUpdate | IdentityChange | AccountNotice | Unrecognized
ACCOUNT_FIELDS = (
    "account_update", "phone_number_quality_update", "message_template_status_update",
    "template_category_update", "message_template_quality_update",
)
# What a notice says happened, by field: `event` where Meta names one, else the new value.
_NOTICE_EVENT_KEYS = ("event", "new_category", "new_quality_score")
# What a notice is about: the template, or the phone number; the account itself when neither.
_NOTICE_SUBJECT_KEYS = ("message_template_id", "display_phone_number")
PREFERENCE_CATEGORY = "marketing_messages"  # the only category users can stop and resume inside WhatsApp
PREFERENCE_VALUES = ("stop", "resume")
MARKETING_STOPPED = 131050  # a delivery Meta refused: the user stopped marketing messages
MOVES = ("user_changed_number", "user_changed_user_id")  # system messages that move a user to new identifiers


def parse(body: object) -> list[WebhookEvent]:
    """Every event in a webhook body, in order."""
    if not isinstance(body, dict) or body.get("object") != "whatsapp_business_account":
        return [_unrecognized("not a whatsapp_business_account notification", body)]
    entries = body.get("entry")
    if not isinstance(entries, list):
        return [_unrecognized("no entry list", body)]
    events: list[WebhookEvent] = []
    for entry in entries:
        changes = entry.get("changes") if isinstance(entry, dict) else None
        if not isinstance(changes, list):
            events.append(_unrecognized("entry without a changes list", entry))
            continue
        for change in changes:
            events.extend(_change(change, _notice_time(entry.get("time"))))
    return events


def _notice_time(value: object) -> datetime | None:
    """An entry's `time`: only ever used to order account notices, so an odd one is no time at all."""
    try:
        return _time(value)
    except _UNREADABLE:
        return None


def _change(change: object, at: datetime | None) -> list[WebhookEvent]:
    if not isinstance(change, dict) or not isinstance(change.get("value"), dict):
        return [_unrecognized("change without a value", change)]
    field, value = change.get("field"), change["value"]
    contacts = _contacts(value)
    if field == "messages":
        messages, statuses = _list(value, "messages"), _list(value, "statuses")
        events = (
            _batch_errors(value, change) + [_message(m, contacts) for m in messages] + [_status(s, contacts) for s in statuses]
        )
    elif field == "user_preferences":
        events = [_preference(p, contacts) for p in _list(value, "user_preferences")]
    elif field == "user_id_update":
        events = [_user_id_update(u) for u in _list(value, "user_id_update")]
    elif field in ACCOUNT_FIELDS:
        said = next((value[key] for key in _NOTICE_EVENT_KEYS if value.get(key) is not None), "")
        subject = next((value[key] for key in _NOTICE_SUBJECT_KEYS if value.get(key) is not None), "")
        return [AccountNotice(field, _str(str(said)), value, _str(str(subject))[:255], at)]
    else:
        return [_unrecognized(f"field {field!r} is not handled", change)]
    return events or [_unrecognized(f"{field} change with nothing in it that we read", change)]


def _batch_errors(value: dict, change: dict) -> list[WebhookEvent]:
    """Errors Meta reports for a whole batch (in the value, not in a status): kept for staff."""
    if "errors" not in value:
        return []
    codes = [str(e["code"]) for e in _list(value, "errors") if isinstance(e, dict) and isinstance(e.get("code"), int)]
    return [_unrecognized(f"Meta reported errors for the batch (codes: {', '.join(codes) or 'none given'})", change)]


def _message(item: Any, contacts: list[tuple[str, ...]]) -> WebhookEvent:
    try:
        kind = item["type"]
        if kind == "system":  # Meta telling of the user (a new number, a new identity), not the user writing
            return _system(item)
        message_type = MessageType(kind) if kind in MessageType._value2member_map_ else MessageType.OTHER
        text = payload = title = original = media = reaction = shared = None
        if message_type is MessageType.TEXT:
            text = _str(item["text"]["body"])
        elif message_type is MessageType.EDIT:
            text, original = _edited_text(item["edit"]["message"]), _optional_id(item["edit"].get("original_message_id"))
        elif message_type is MessageType.REVOKE:
            original = _optional_id(_object(item, kind).get("original_message_id"))
        elif message_type is MessageType.REACTION:
            reaction = _reaction(_object(item, kind))
        elif message_type in (MessageType.LOCATION, MessageType.CONTACTS) and item.get(kind) is not None:
            shared = _shared(item[kind])
        elif message_type is MessageType.BUTTON:
            payload, title = _str(item["button"].get("payload")), _str(item["button"].get("text"))
        elif message_type is MessageType.INTERACTIVE:
            reply = item["interactive"].get("button_reply") or item["interactive"].get("list_reply") or {}
            payload, title = _str(reply.get("id")), _str(reply.get("title"))
        elif isinstance(item.get(kind), dict):
            text, media = _str(item[kind].get("caption")), _media(item[kind])
        identifiers = _with_contacts(_identifiers(item, "from", "from_user_id", "from_parent_user_id"), contacts)
        if message_type is MessageType.CONTACTS:
            identifiers = _with_shared_phone(identifiers, item)
        if not identifiers:
            raise ValueError("a message from nobody: neither a phone nor a user id")
        return InboundMessage(
            message_id=_required(item["id"]), identifiers=identifiers, timestamp=_time(item["timestamp"]),
            type=message_type, text=text, button_payload=payload, button_title=title, quoted_id=_quoted(item),
            original_id=original, media=media, reaction=reaction, shared=shared,
        )
    except _UNREADABLE as error:
        return _unrecognized(f"unreadable message ({type(error).__name__}: {mask_numbers(str(error))[:120]})", item)


def _quoted(item: dict) -> str | None:
    """Only ever a hint: an odd `context` must not make the STOP beside it unreadable."""
    context = item.get("context")
    quoted = context.get("id") if isinstance(context, dict) else None
    return quoted if isinstance(quoted, str) and quoted.isprintable() and len(quoted) <= 255 else None


def _shared(value: object) -> str | None:
    """A location or contact cards as JSON, when they are of a size a person shares (never cut:
    cut JSON could not be read back)."""
    shared = json.dumps(value, default=str)
    return shared if len(shared) <= 20_000 else None


def _object(item: dict, key: str) -> dict:
    value = item.get(key)
    return value if isinstance(value, dict) else {}


def _optional_id(value: object) -> str | None:
    """A message id that is only ever a link between stored messages: an odd one links nothing."""
    return value if isinstance(value, str) and value.isprintable() and 0 < len(value) <= 255 else None


def _media(item: dict) -> Media | None:
    """Media metadata, when Meta gave the media's id (a caption alone is just text)."""
    media_id = _optional_id(item.get("id"))
    if media_id is None:
        return None
    fields = (item.get(key) for key in ("mime_type", "sha256", "filename"))
    return Media(media_id, *(_str(value)[:255] if isinstance(value, str) else None for value in fields))


def _reaction(item: dict) -> Reaction | None:
    target = _optional_id(item.get("message_id"))
    emoji = item.get("emoji")
    return Reaction(target, _str(emoji)[:32] if isinstance(emoji, str) else "") if target else None


def _identifiers(item: dict, phone: str, user_id: str, parent_user_id: str) -> tuple[str, ...]:
    """The phone, BSUID and parent BSUID an item names under these keys, phone first; each
    missing where Meta cannot share it (never an empty string), malformed ones refused."""
    found = []
    if item.get(phone) is not None:
        found.append(normalize_wa_id(item[phone]))
    if item.get(user_id) is not None:
        found.append(normalize_user_id(item[user_id]))
    if item.get(parent_user_id) is not None:
        found.append(normalize_user_id(item[parent_user_id], parent=True))
    return tuple(found)


def _contacts(value: dict) -> list[tuple[str, ...]]:
    """The identifiers of each entry of a change's `contacts`, read once for all its items; an
    entry that cannot be read adds nothing (the item's own identifiers still count)."""
    found = []
    for contact in _list(value, "contacts"):
        try:
            found.append(_identifiers(contact, "wa_id", "user_id", "parent_user_id"))
        except _UNREADABLE:
            continue
    return found


def _with_contacts(identifiers: tuple[str, ...], contacts: list[tuple[str, ...]]) -> tuple[str, ...]:
    """Add what the change's `contacts` entry for the same user shows (its phone beside a BSUID, say)."""
    for theirs in contacts:
        if len(theirs) > 1 and not set(theirs).isdisjoint(identifiers):
            identifiers += tuple(i for i in theirs if i not in identifiers)
    return identifiers if len(identifiers) == 1 else tuple(sorted(identifiers, key=phones_first))


def _with_shared_phone(identifiers: tuple[str, ...], item: dict) -> tuple[str, ...]:
    """A tap on the contact-info button comes back as a contacts message with `origin`
    `contact_request`: the phone in it is the sender's own. Any other contact card is someone else's."""
    cards = [c for c in item["contacts"] if isinstance(c, dict) and c.get("origin") == "contact_request"]
    phones = [p["wa_id"] for card in cards for p in card.get("phones", []) if isinstance(p, dict) and p.get("wa_id")]
    if not phones or not identifiers or kind_of(identifiers[0]) is IdentifierKind.PHONE:
        return identifiers
    return (normalize_wa_id(phones[0]), *identifiers)


def _system(item: dict) -> WebhookEvent:
    """A move to a new number or BSUID; any other system message is kept for staff."""
    notice = item.get("system") or {}
    kind = notice.get("type")
    if kind not in MOVES:
        return _unrecognized(f"system message {str(kind)[:60]!r} kept for staff; the bot does not act on it", item)
    left = _identifiers({"from": item.get("from"), **notice}, "from", "previous_user_id", "previous_parent_user_id")
    joined = _identifiers(notice, "wa_id", "user_id", "parent_user_id")
    if not left or not joined:
        raise ValueError(f"{kind} without the identifiers left and joined")
    return IdentityChange(_required(item["id"]), kind, left, joined, _time(item["timestamp"]))


def _user_id_update(item: Any) -> WebhookEvent:
    """The withdrawn `user_id_update` field (previous -> current BSUID), still read when it comes."""
    try:
        ids = item["user_id"]
        phone = (normalize_wa_id(item["wa_id"]),) if item.get("wa_id") is not None else ()
        left, joined = (normalize_user_id(ids["previous"]),), (*phone, normalize_user_id(ids["current"]))
        event_id = f"user_id_update:{ids['previous']}:{ids['current']}"
        return IdentityChange(_required(event_id[:255]), "user_id_update", left, joined, _time(item["timestamp"]))
    except _UNREADABLE as error:
        return _unrecognized(f"unreadable user_id_update ({type(error).__name__})", item)


def _edited_text(new: Any) -> str | None:
    """The new text of an edited message, or its new caption."""
    content = new.get(new.get("type")) if isinstance(new, dict) else None
    if not isinstance(content, dict):
        return None
    return _str(content.get("body") if new["type"] == "text" else content.get("caption"))


def _status(item: Any, contacts: list[tuple[str, ...]]) -> WebhookEvent:
    try:
        errors = tuple(e["code"] for e in item.get("errors", []) if isinstance(e, dict) and isinstance(e.get("code"), int))
        return StatusUpdate(
            meta_message_id=_required(item["id"]), status=_delivery_status(item["status"]), timestamp=_time(item["timestamp"]),
            recipients=_status_recipients(item, errors, contacts), error_codes=errors, pricing=_pricing(item.get("pricing")),
        )
    except _UNREADABLE as error:
        return _unrecognized(f"unreadable status ({type(error).__name__})", item)


def _pricing(pricing: object) -> Pricing | None:
    """A status's `pricing`, when it names a category; odd fields are left out, not fatal: the
    status itself must still be applied."""
    if not isinstance(pricing, dict) or not isinstance(pricing.get("category"), str) or not pricing["category"]:
        return None
    kind, billable = pricing.get("type"), pricing.get("billable")
    return Pricing(
        pricing["category"].lower()[:32], kind.lower()[:32] if isinstance(kind, str) and kind else None,
        billable if isinstance(billable, bool) else None,
    )


def _delivery_status(status: str) -> DeliveryStatus:
    """`played` (a voice message listened to) is a read."""
    return DeliveryStatus.READ if status == "played" else DeliveryStatus(status)


def _status_recipients(item: Any, errors: tuple[int, ...], contacts: list[tuple[str, ...]]) -> tuple[str, ...]:
    """The identifiers of the user a status is about, or none where it names no user (a group,
    a placeholder): the status is applied by message id. A 131050 failure is a marketing
    opt-out and needs its user: without a readable one it stays unread (ValueError), for staff."""
    if item.get("recipient_type") == "group":
        return ()
    try:
        found = _identifiers(item, "recipient_id", "recipient_user_id", "recipient_parent_user_id")
    except ValueError:
        if MARKETING_STOPPED in errors:
            raise
        return ()
    if not found and MARKETING_STOPPED in errors:
        raise ValueError("a 131050 failure for nobody: neither recipient_id nor recipient_user_id")
    return _with_contacts(found, contacts) if found else ()


def _preference(item: Any, contacts: list[tuple[str, ...]]) -> WebhookEvent:
    try:
        identifiers = _with_contacts(_identifiers(item, "wa_id", "user_id", "parent_user_id"), contacts)
        if not identifiers:
            raise ValueError("a preference of nobody: neither wa_id nor user_id")
        update = PreferenceUpdate(
            identifiers=identifiers, category=_required(item["category"]), value=_required(item["value"]),
            timestamp=_time(item["timestamp"]), detail=_str(item.get("detail")),
        )
    except _UNREADABLE as error:
        return _unrecognized(f"unreadable user preference ({type(error).__name__})", item)
    if update.category == PREFERENCE_CATEGORY and update.value == "signup":
        # Meta's sign-up link: a signal for staff, not consent the ledger could show (no text the
        # person agreed to, nothing naming the business or its offers).
        return AccountNotice("user_preferences", "signup", item)
    if update.category != PREFERENCE_CATEGORY or update.value not in PREFERENCE_VALUES:
        return _unrecognized(f"user preference {update.category[:40]!r} = {update.value[:40]!r} is not handled", item)
    return update


def _list(value: dict, key: str) -> list:
    items = value.get(key, [])
    return items if isinstance(items, list) else [items]


@overload
def _str(value: str) -> str: ...
@overload
def _str(value: object) -> str | None: ...
def _str(value: object) -> str | None:
    """Free text. A lone UTF-16 surrogate (a stray `\\ud800` escape in the JSON) cannot be
    stored or hashed as UTF-8: it becomes U+FFFD, so the STOP around it is still recorded."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return _LONE_SURROGATES.sub("\ufffd", value)


def _required(value: object) -> str:
    """An id or keyword Meta must send: printable and short enough to store and index."""
    if not isinstance(value, str) or not value or len(value) > 255 or not value.isprintable():
        raise ValueError("expected a non-empty printable string of at most 255 characters")
    return value


def _time(value: object) -> datetime:
    """Meta sends Unix seconds, as a string in messages and a number in preferences."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError("expected a Unix timestamp")
    return datetime.fromtimestamp(int(value), tz=UTC)


def _unrecognized(reason: str, item: object) -> Unrecognized:
    return Unrecognized(reason, json.dumps(item, default=str)[:100_000])  # ASCII: lone surrogates stay escapes
