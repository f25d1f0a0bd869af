"""Being a WhatsApp user: the chat page and the JSON API behind it (which `python -m sandbox simulate` uses too).

What a user sends becomes the webhook Meta would send; each user's consent comes from the
bot's ledger, read-only, so the page shows what the bot recorded, not what the sandbox assumes.
"""
from __future__ import annotations

import logging

import sqlalchemy as sa
from flask import Blueprint, jsonify, render_template, request

from bot.domain.identity import InvalidIdentifier, mask, normalize_identifier
from bot.storage.ledger import utc_now
from sandbox import DISPLAY_NUMBER, QUICK_REPLY_BUTTONS, Sandbox, current_sandbox
from sandbox.chats import Entry, new_wamid
from sandbox.graph import report
from sandbox.webhooks import inbound, notification

log = logging.getLogger(__name__)
bp = Blueprint("chat", __name__)


def _refused(detail: str):
    return jsonify(error="invalid", detail=detail), 422


@bp.errorhandler(InvalidIdentifier)
def _invalid_number(error: InvalidIdentifier):
    return _refused(str(error))


@bp.get("/")
def chat_page():
    sandbox = current_sandbox()
    return render_template(
        "sandbox/chat.html", business=sandbox.settings.business_name, keywords=sandbox.keywords,
        buttons=QUICK_REPLY_BUTTONS, display_number=DISPLAY_NUMBER,
    )


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/api/chats")
def chats():
    return jsonify(chats=current_sandbox().chats.numbers())


@bp.get("/api/chats/<number>")
def chat(number: str):
    user = normalize_identifier(number)
    sandbox = current_sandbox()
    messages = [entry.as_json() for entry in sandbox.chats.transcript(user)]
    return jsonify(user=user, messages=messages, consent=_consent(sandbox, user))


@bp.post("/api/chats/<number>/messages")
def user_sends(number: str):
    """The user types a text (`{"text"}`) or taps a quick-reply button (`{"button"}`)."""
    user = normalize_identifier(number)
    body = request.get_json(silent=True) or {}
    text, button = body.get("text"), body.get("button")
    if isinstance(button, str) and button.strip():
        entry = Entry(new_wamid(), user, "in", "button", button.strip())
        content = {"type": "button", "button": {"payload": entry.text, "text": entry.text}}
    elif isinstance(text, str) and text.strip():
        entry = Entry(new_wamid(), user, "in", "text", text.strip()[:4096])
        content = {"type": "text", "text": {"body": entry.text}}
    else:
        return _refused('send {"text": "..."} or {"button": "..."}')
    sandbox = current_sandbox()
    sandbox.chats.add(entry)
    sandbox.deliveries.send(notification(sandbox.settings.whatsapp_phone_number_id, DISPLAY_NUMBER, inbound(user, entry.id, content)))
    log.info("%s sent a %s", mask(user), entry.kind)
    return jsonify(message=entry.as_json()), 201


@bp.post("/api/chats/<number>/read")
def user_reads(number: str):
    """The user saw the business's messages: Meta reports them read."""
    user = normalize_identifier(number)
    sandbox = current_sandbox()
    unread = sandbox.chats.unread(user)
    for entry in unread:
        report(sandbox, entry, "read")
    return jsonify(read=len(unread))


def _consent(sandbox: Sandbox, user: str) -> dict:
    """The user's consent as the bot's ledger has it, with the history behind it."""
    try:
        state, history = sandbox.ledger.state(user), sandbox.ledger.history(user)
    except sa.exc.SQLAlchemyError as error:  # the bot has not created its tables yet, or the database is away
        return {"error": f"cannot read the ledger: {type(error).__name__}"}
    window = state.window_open_until(utc_now())
    return {
        "identifiers": list(state.identifiers),
        "state": state.state.value,
        "marketing": state.marketing.value,
        "window_open_until": window.isoformat() if window else None,
        "history": [
            {
                "seq": event.seq, "at": event.occurred_at.isoformat(), "action": event.action.value,
                "scope": event.scope.value, "channel": event.channel.value, "text": event.consent_text,
            }
            for event in history
        ],
    }
