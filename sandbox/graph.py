"""The Graph API's send call, as the bot's Cloud API adapter makes it: answered like Meta,
with a wamid, and followed by `sent` and `delivered` statuses sent to the bot's webhook."""
from __future__ import annotations

import hmac
import logging

from flask import Blueprint, current_app, jsonify, request

from bot.phone import InvalidNumber, mask, normalize_wa_id
from sandbox import DISPLAY_NUMBER, Sandbox
from sandbox.chats import Entry, new_wamid
from sandbox.webhooks import notification, status

log = logging.getLogger(__name__)
bp = Blueprint("graph", __name__)

SENT_AFTER, DELIVERED_AFTER = 0.2, 0.6  # seconds after the send call, roughly as on a phone that is online


def meta_error(http_status: int, code: int, message: str):
    return jsonify(error={"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "sandbox"}), http_status


@bp.post("/<version>/<phone_number_id>/messages")
def send(version: str, phone_number_id: str):
    sandbox: Sandbox = current_app.extensions["sandbox"]
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").encode()
    if not hmac.compare_digest(given, sandbox.settings.token.encode()):
        return meta_error(401, 190, "Invalid OAuth access token - Cannot parse access token")
    if phone_number_id != sandbox.settings.phone_number_id:
        return meta_error(400, 100, f"Unsupported post request. Object with ID '{phone_number_id}' does not exist")
    body = request.get_json(silent=True)
    try:
        wa_id = normalize_wa_id(body["to"])
        kind, text = _content(body)
    except (InvalidNumber, KeyError, TypeError, ValueError):
        return meta_error(400, 100, "(#100) Invalid parameter")
    entry = sandbox.chats.add(Entry(new_wamid(), wa_id, "out", kind, text))
    log.info("the bot sent a %s to %s", kind, mask(wa_id))
    for state, delay in (("sent", SENT_AFTER), ("delivered", DELIVERED_AFTER)):
        report(sandbox, entry, state, delay)
    return jsonify(
        messaging_product="whatsapp", contacts=[{"input": body["to"], "wa_id": wa_id}], messages=[{"id": entry.id}]
    )


def report(sandbox: Sandbox, entry: Entry, state: str, delay: float = 0.0) -> None:
    """Tell the bot, as Meta would, that a message it sent was sent, delivered or read."""
    if sandbox.chats.advance(entry.id, state):
        body = notification(sandbox.settings.phone_number_id, DISPLAY_NUMBER, status(entry.wa_id, entry.id, state))
        sandbox.deliveries.send(body, delay)


def _content(body: dict) -> tuple[str, str]:
    """The kind of a message and what the user sees of it."""
    kind = body["type"]
    if kind == "text":
        return kind, str(body["text"]["body"])
    if kind == "template":
        template = body["template"]
        shown = [f"Template {template['name']} ({template['language']['code']})"]
        for component in template.get("components") or []:
            shown += [str(p["text"]) for p in component.get("parameters", []) if p.get("type") == "text"]
        return kind, "\n".join(shown)
    raise ValueError(f"the sandbox does not show {kind!r} messages")
