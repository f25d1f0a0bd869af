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

from bot.domain.phone import normalize_wa_id

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
class InboundMessage:
    """A message a user sent: the start of everything consent-related."""

    message_id: str
    wa_id: str
    timestamp: datetime
    type: MessageType
    text: str | None = None  # the body of a text, or the caption of media
    button_payload: str | None = None  # quick-reply payload, or interactive reply id
    button_title: str | None = None


@dataclass(frozen=True)
class StatusUpdate:
    """What happened to a message the business sent."""

    meta_message_id: str
    status: DeliveryStatus
    timestamp: datetime
    recipient: str | None
    error_codes: tuple[int, ...] = ()


@dataclass(frozen=True)
class PreferenceUpdate:
    """The user pressed Stop or Resume for a category (marketing) inside WhatsApp."""

    wa_id: str
    category: str
    value: str  # one of PREFERENCE_VALUES
    timestamp: datetime
    detail: str | None = None


@dataclass(frozen=True)
class AccountNotice:
    """A notice about the account, the number or a template (ACCOUNT_FIELDS), or a user's
    marketing sign-up through Meta's link: kept for staff."""

    field: str
    event: str
    details: dict[str, Any]


@dataclass(frozen=True)
class Unrecognized:
    """Something we could not read; kept as it came, for inspection."""

    reason: str
    raw: str


# What reading a malformed item can raise (InvalidNumber is a ValueError).
_UNREADABLE = (KeyError, IndexError, TypeError, ValueError, AttributeError, OverflowError, OSError)
WebhookEvent = InboundMessage | StatusUpdate | PreferenceUpdate | AccountNotice | Unrecognized
ACCOUNT_FIELDS = (
    "account_update", "phone_number_quality_update", "message_template_status_update",
    "template_category_update", "message_template_quality_update",
)
# What a notice says happened, by field: `event` where Meta names one, else the new value.
_NOTICE_EVENT_KEYS = ("event", "new_category", "new_quality_score")
PREFERENCE_CATEGORY = "marketing_messages"  # the only category users can stop and resume inside WhatsApp
PREFERENCE_VALUES = ("stop", "resume")
MARKETING_STOPPED = 131050  # a delivery Meta refused: the user stopped marketing messages


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
            events.extend(_change(change))
    return events


def _change(change: object) -> list[WebhookEvent]:
    if not isinstance(change, dict) or not isinstance(change.get("value"), dict):
        return [_unrecognized("change without a value", change)]
    field, value = change.get("field"), change["value"]
    if field == "messages":
        messages, statuses = _list(value, "messages"), _list(value, "statuses")
        events = _batch_errors(value, change) + [_message(m) for m in messages] + [_status(s) for s in statuses]
    elif field == "user_preferences":
        events = [_preference(p) for p in _list(value, "user_preferences")]
    elif field in ACCOUNT_FIELDS:
        said = next((value[key] for key in _NOTICE_EVENT_KEYS if value.get(key) is not None), "")
        return [AccountNotice(field, _str(str(said)), value)]
    else:
        return [_unrecognized(f"field {field!r} is not handled", change)]
    return events or [_unrecognized(f"{field} change with nothing in it that we read", change)]


def _batch_errors(value: dict, change: dict) -> list[WebhookEvent]:
    """Errors Meta reports for a whole batch (in the value, not in a status): kept for staff."""
    if "errors" not in value:
        return []
    codes = [str(e["code"]) for e in _list(value, "errors") if isinstance(e, dict) and isinstance(e.get("code"), int)]
    return [_unrecognized(f"Meta reported errors for the batch (codes: {', '.join(codes) or 'none given'})", change)]


def _message(item: Any) -> WebhookEvent:
    try:
        kind = item["type"]
        if kind == "system":  # Meta telling of the user (a new number, a new identity), not the user writing
            notice = item.get("system") or {}
            return _unrecognized(f"system message {str(notice.get('type'))[:60]!r} kept for staff; the bot does not act on it", item)
        message_type = MessageType(kind) if kind in MessageType._value2member_map_ else MessageType.OTHER
        text = payload = title = None
        if message_type is MessageType.TEXT:
            text = _str(item["text"]["body"])
        elif message_type is MessageType.EDIT:
            text = _edited_text(item["edit"]["message"])
        elif message_type is MessageType.BUTTON:
            payload, title = _str(item["button"].get("payload")), _str(item["button"].get("text"))
        elif message_type is MessageType.INTERACTIVE:
            reply = item["interactive"].get("button_reply") or item["interactive"].get("list_reply") or {}
            payload, title = _str(reply.get("id")), _str(reply.get("title"))
        elif isinstance(item.get(kind), dict):
            text = _str(item[kind].get("caption"))
        return InboundMessage(
            message_id=_required(item["id"]), wa_id=normalize_wa_id(item["from"]), timestamp=_time(item["timestamp"]),
            type=message_type, text=text, button_payload=payload, button_title=title,
        )
    except _UNREADABLE as error:
        return _unrecognized(f"unreadable message ({type(error).__name__})", item)


def _edited_text(new: Any) -> str | None:
    """The new text of an edited message, or its new caption."""
    content = new.get(new.get("type")) if isinstance(new, dict) else None
    if not isinstance(content, dict):
        return None
    return _str(content.get("body") if new["type"] == "text" else content.get("caption"))


def _status(item: Any) -> WebhookEvent:
    try:
        errors = tuple(e["code"] for e in item.get("errors", []) if isinstance(e, dict) and isinstance(e.get("code"), int))
        return StatusUpdate(
            meta_message_id=_required(item["id"]), status=_delivery_status(item["status"]), timestamp=_time(item["timestamp"]),
            recipient=_status_recipient(item, errors), error_codes=errors,
        )
    except _UNREADABLE as error:
        return _unrecognized(f"unreadable status ({type(error).__name__})", item)


def _delivery_status(status: str) -> DeliveryStatus:
    """`played` (a voice message listened to) is a read."""
    return DeliveryStatus.READ if status == "played" else DeliveryStatus(status)


def _status_recipient(item: Any, errors: tuple[int, ...]) -> str | None:
    """The user a status is about, or None where it is no phone number (a group, a placeholder):
    the status is applied by message id. A 131050 failure is a marketing opt-out and needs its
    user: without one it stays unread (ValueError), for staff."""
    recipient = item.get("recipient_id")
    if recipient is None or item.get("recipient_type") == "group":
        return None
    try:
        return normalize_wa_id(recipient)
    except ValueError:
        if MARKETING_STOPPED in errors:
            raise
        return None


def _preference(item: Any) -> WebhookEvent:
    try:
        update = PreferenceUpdate(
            wa_id=normalize_wa_id(item["wa_id"]), category=_required(item["category"]), value=_required(item["value"]),
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
