"""The Graph API's send call and template catalog, as the bot's Cloud API adapter uses them:
answered by the Graph API imitation, and each message it accepts shown in its chat and followed
by `sent` and `delivered` statuses sent to the bot's webhook."""
from __future__ import annotations

import logging
import re

from flask import Blueprint, jsonify, request

from bot.domain.identity import mask, normalize_identifier
from bot.storage.templates import PLACEHOLDER
from sandbox import DISPLAY_NUMBER, Sandbox, current_sandbox
from sandbox.chats import Entry
from sandbox.graph_imitation import Received
from sandbox.webhooks import notification, status

log = logging.getLogger(__name__)
bp = Blueprint("graph", __name__)

SENT_AFTER, DELIVERED_AFTER = 0.2, 0.6  # seconds after the send call, roughly as on a phone that is online


@bp.post("/<version>/<phone_number_id>/messages")
def send(version: str, phone_number_id: str):
    code, answer = current_sandbox().graph.receive(request.path, request.headers.get("Authorization", ""), request.get_data())
    return jsonify(answer), code


@bp.get("/<version>/<waba_id>/message_templates")
def message_templates(version: str, waba_id: str):
    """The templates a local run can send (sandbox.graph_imitation.SAMPLE_TEMPLATES), paged like Meta's."""
    code, answer = current_sandbox().graph.catalog_page(request.full_path, request.headers.get("Authorization", ""), request.host_url)
    return jsonify(answer), code


def show(sandbox: Sandbox, received: Received) -> None:
    """A message the imitation accepts: into its chat, then reported sent and delivered.
    Raises ValueError (the imitation answers Meta's 400) for what the sandbox cannot show."""
    kind, text = _content(received.body, sandbox.graph.templates)
    entry = sandbox.chats.add(Entry(received.meta_id or "", normalize_identifier(received.to), "out", kind, text))
    log.info("the bot sent a %s to %s", kind, mask(entry.user))
    for state, delay in (("sent", SENT_AFTER), ("delivered", DELIVERED_AFTER)):
        report(sandbox, entry, state, delay)


def report(sandbox: Sandbox, entry: Entry, state: str, delay: float = 0.0) -> None:
    """Tell the bot, as Meta would, that a message it sent was sent, delivered or read."""
    if sandbox.chats.advance(entry.id, state):
        body = notification(sandbox.settings.whatsapp_phone_number_id or "", DISPLAY_NUMBER, status(entry.user, entry.id, state))
        sandbox.deliveries.send(body, delay)


def _content(body: dict, catalog: list[dict]) -> tuple[str, str]:
    """The kind of a message and what the user sees of it: a template's text from the catalog,
    its parameters filled in."""
    try:
        kind = body["type"]
        if kind == "text":
            return kind, str(body["text"]["body"])
        if kind == "template":
            return kind, _template_text(body["template"], catalog)
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"not a message Meta would take: {error}") from None
    raise ValueError(f"the sandbox does not show {kind!r} messages")


def _template_text(template: dict, catalog: list[dict]) -> str:
    name, language = template["name"], template["language"]["code"]
    given = {str(part["type"]).lower(): part.get("parameters", []) for part in template.get("components") or []}
    known = next((t for t in catalog if (t["name"], t["language"]) == (name, language)), None)
    if known is None:  # not one of the sample templates: its name and parameters
        return "\n".join([f"Template {name} ({language})"] + [str(p["text"]) for parts in given.values() for p in parts if p.get("type") == "text"])
    parts = [part for part in known["components"] if str(part.get("type")).lower() in ("header", "body", "footer") and part.get("text")]
    return "\n".join(_filled(part["text"], given.get(str(part["type"]).lower(), [])) for part in parts)


def _filled(text: str, parameters: list[dict]) -> str:
    """`text` with {{1}}, {{2}}... (or {{name}}, by `parameter_name`) replaced by the parameters sent."""
    positional = [str(p.get("text", "")) for p in parameters]
    named = {str(p["parameter_name"]): str(p.get("text", "")) for p in parameters if "parameter_name" in p}

    def value(placeholder: re.Match) -> str:
        key = placeholder.group(1)
        if key.isdigit() and 0 < int(key) <= len(positional):
            return positional[int(key) - 1]
        return named.get(key, placeholder.group(0))

    return PLACEHOLDER.sub(value, text)
