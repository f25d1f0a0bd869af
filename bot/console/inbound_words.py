"""What people sent, in words staff read in the inbox: a photo as "📷 Photo (image/jpeg) · Meta
media id …", a reaction as the message it was put on, a consent keyword as what the bot recorded
for it. The companion of bot.console.wording, for inbound messages. Nothing here knows Flask."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bot.console.wording import message_content
from bot.domain.consent import ConsentEvent, Scope
from bot.storage.inbox import Entry, Inbound

SNIPPET = 80  # characters of a message in a list or a quote

LABELS = {
    "image": "📷 Photo", "video": "🎬 Video", "audio": "🎤 Audio", "document": "📄 Document", "sticker": "🖼️ Sticker",
    "location": "📍 Location", "contacts": "👤 Contact", "reaction": "Reaction", "button": "Button", "interactive": "Button",
    "request_welcome": "Opened the chat", "order": "🛒 Order", "unsupported": "A message WhatsApp does not pass on",
}
_OTHER = "A kind of message the bot does not read"
DELETED = "This message was deleted"
# What the bot made of a consent keyword (inbound_messages.handled_as), and of its scope when the ledger event is known.
KEYWORD_MEANINGS = {
    "opt_out": "recorded as an opt-out",
    "opt_in": "recorded as an opt-in",
    "help": "answered with the help text",
    "possible_opt_out": "recorded as a possible opt-out, for staff review",
    "web_opt_in": "confirmed an opt-in requested on the website",
    "opt_in_answer": "a yes to our opt-in question, recorded as an opt-in",
}
_SCOPED_MEANINGS = {
    ("opt_out", Scope.ALL): "recorded as an opt-out of all messages",
    ("opt_out", Scope.MARKETING): "recorded as an opt-out of marketing messages",
    ("opt_in", Scope.MARKETING): "recorded as an opt-in to marketing messages",
}


def deleted(message: Inbound) -> bool:
    """Whether the person deleted it (or deleted one no longer kept: the revoke itself is kept)."""
    return message.revoked_at is not None or message.type == "revoke"


def attachment_line(message: Inbound, said: Mapping[str, str]) -> str | None:
    """What the message holds besides its text, in a line; `said`: earlier messages' words by
    Meta message id, for the message a reaction names."""
    content = message.content
    if "media" in content:
        return _media(message.type, content["media"])
    if "location" in content:
        return _location(content["location"])
    if "contacts" in content:
        return _contacts(content["contacts"])
    if "reaction" in content:
        reaction = content["reaction"]
        target = _quoted(said.get(reaction.get("message_id", "")))
        return f"Reacted {reaction['emoji']} to {target}" if reaction.get("emoji") else f"Took back their reaction to {target}"
    if "button" in content:
        return _tapped(content["button"])
    if message.type in ("text", "edit", "revoke"):
        return None
    return LABELS.get(message.type, f"{_OTHER} ({message.type})")


def quote_line(message: Inbound, said: Mapping[str, str]) -> str | None:
    """The message it answers, when the person quoted one."""
    quoted = message.content.get("quoted_id")
    return f"↩ Replying to {_quoted(said.get(quoted))}" if quoted else None


def snippet(message: Inbound | None) -> str:
    """The message in a few words, for the inbox's list and for what a reaction or a quote names."""
    if message is None:
        return "No message kept (they are kept for a limited time)"
    if deleted(message):
        return DELETED
    if message.text:  # a text, or a caption: then what it is a caption of first
        return _shortened(f"{LABELS.get(message.type, _OTHER)}: {message.text}" if "media" in message.content else message.text)
    if "reaction" in message.content:
        return f"Reacted {message.content['reaction'].get('emoji') or '(taken back)'}"
    if "button" in message.content:
        return _tapped(message.content["button"])
    return LABELS.get(message.type, _OTHER)


def keyword_meaning(handled_as: str | None, event: ConsentEvent | None) -> str | None:
    """What the bot did with a consent keyword ("recorded as an opt-out of all messages"); None for conversation."""
    if handled_as is None:
        return None
    scoped = _SCOPED_MEANINGS.get((handled_as, event.scope)) if event is not None else None
    return scoped or KEYWORD_MEANINGS.get(handled_as, f"read as {handled_as.replace('_', ' ')}")


def _media(kind: str, media: Mapping[str, Any]) -> str:
    label = LABELS.get(kind, _OTHER)
    name = f" “{media['filename']}”" if media.get("filename") else ""
    mime = f" ({media['mime_type']})" if media.get("mime_type") else ""
    return f"{label}{name}{mime} · Meta media id {media.get('id', 'unknown')}"


def _location(location: object) -> str:
    if not isinstance(location, Mapping):
        return LABELS["location"]
    named = ", ".join(str(location[key]) for key in ("name", "address") if location.get(key))
    where = f"{location.get('latitude')}, {location.get('longitude')}"
    return f"{LABELS['location']}: {named} ({where})" if named else f"{LABELS['location']}: {where}"


def _contacts(cards: object) -> str:
    """Each shared card's name and phone numbers."""
    described = []
    for card in cards if isinstance(cards, list) else []:
        if not isinstance(card, Mapping):
            continue
        name = card.get("name", {}).get("formatted_name") if isinstance(card.get("name"), Mapping) else None
        phones = [str(phone.get("phone") or phone.get("wa_id")) for phone in card.get("phones", []) if isinstance(phone, Mapping)]
        described.append(f"{name or 'no name'} ({', '.join(phones)})" if phones else str(name or "no name"))
    return f"{LABELS['contacts']}: {'; '.join(described)}" if described else LABELS["contacts"]


def _tapped(button: Mapping[str, Any]) -> str:
    return f"Tapped “{button.get('title') or button.get('payload')}”"


def _quoted(words: str | None) -> str:
    return f"“{words}”" if words else "a message not shown here"


def _shortened(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= SNIPPET else flat[: SNIPPET - 1].rstrip() + "…"


def said_by_id(entries: Iterable[Entry]) -> dict[str, str]:
    """The words of a thread's messages by their Meta message id: what a reaction or a quote names."""
    said: dict[str, str] = {}
    for entry in entries:
        if entry.inbound is not None:
            said[entry.inbound.id] = snippet(entry.inbound)
        elif entry.outbound is not None and entry.outbound.meta_message_id:
            said[entry.outbound.meta_message_id] = _shortened(message_content(entry.outbound.content))
    return said
