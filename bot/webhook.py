"""The webhook Meta calls: GET for the subscription handshake, POST for notifications.

POST checks `X-Hub-Signature-256` over the raw bytes (constant-time), parses every event of
the batch and hands each to its handler, all of them in one transaction (`bot.intake`). It
answers 200 only once that transaction has committed, so every consent-affecting event is
recorded; if the database or Redis fails it answers 503, Meta retries, and the idempotent
handlers finish what was left without doubling anything.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging

import redis
import sqlalchemy as sa
from flask import Blueprint, Response, current_app, jsonify, request

from bot.consent import InvalidEvent
from bot.db import WriteConflict, unread_webhooks
from bot.intake import Intake, record
from bot.ledger import utc_now
from bot.webhook_events import AccountNotice, InboundMessage, PreferenceUpdate, StatusUpdate, Unrecognized, WebhookEvent, parse
from handlers import Context
from handlers.account import on_account_notice
from handlers.conversation import on_message
from handlers.preferences import on_preference
from handlers.statuses import on_status

log = logging.getLogger(__name__)
bp = Blueprint("webhook", __name__)


def error(status: int, code: str, detail: str) -> tuple[Response, int]:
    return jsonify(error=code, detail=detail), status


def signature_matches(secret: str, body: bytes, header: str | None) -> bool:
    """Meta signs the exact bytes: `sha256=` + hex HMAC-SHA256 keyed with the app secret."""
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header[len("sha256="):].strip().lower())


@bp.get("/webhook")
def handshake():
    token = current_app.config["WHATSAPP_VERIFY_TOKEN"]
    if not token:
        return error(403, "not_configured", "WHATSAPP_VERIFY_TOKEN is not set, so no subscription can be verified")
    given = request.args.get("hub.verify_token", "")
    if request.args.get("hub.mode") != "subscribe" or not hmac.compare_digest(given.encode(), token.encode()):
        return error(403, "forbidden", "hub.mode must be subscribe and hub.verify_token must match")
    return Response(request.args.get("hub.challenge", ""), mimetype="text/plain")


@bp.post("/webhook")
def receive():
    secret = current_app.config["WHATSAPP_APP_SECRET"]
    if not secret and not current_app.config["WEBHOOK_INSECURE_DEV"]:
        log.error("POST /webhook refused: WHATSAPP_APP_SECRET is not set")
        return error(503, "not_configured", "WHATSAPP_APP_SECRET is not set; refusing unsigned webhooks (WEBHOOK_INSECURE_DEV=1 allows them in development)")
    body = request.get_data(cache=False)
    if secret and not signature_matches(secret, body, request.headers.get("X-Hub-Signature-256")):
        return error(401, "bad_signature", "missing or wrong X-Hub-Signature-256")
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        payload = None
    events = parse(payload) if payload is not None else [Unrecognized("body is not JSON", body.decode("utf-8", "replace")[:100_000])]
    context: Context = current_app.extensions["handlers"]
    try:
        _record_all(context, events)
    except (sa.exc.SQLAlchemyError, redis.RedisError, WriteConflict) as failure:
        log.error("webhook not recorded, Meta will retry: %s", type(failure).__name__)
        return error(503, "unavailable", "could not record the events now; retry later")
    return jsonify(status="ok", events=len(events))


class _Refused(Exception):
    def __init__(self, index: int, reason: InvalidEvent):
        self.index, self.reason = index, reason


def _record_all(context: Context, events: list[WebhookEvent]) -> None:
    """Handle every event in one transaction. An event the ledger refuses is kept as unread
    instead, and the POST is done again without it: its neighbours are recorded all the same."""

    def handle(intake: Intake) -> None:
        intake.lock_contacts((e.wa_id, e.timestamp) for e in events if isinstance(e, InboundMessage))
        for index, event in enumerate(events):
            try:
                _handle(context, intake, event)
            except InvalidEvent as refused:
                raise _Refused(index, refused) from None

    while True:
        try:
            return record(context.ledger, context.outbox, handle)
        except _Refused as refused:
            event = events[refused.index]
            events[refused.index] = Unrecognized(f"refused by the ledger: {refused.reason}", repr(event))


def _handle(context: Context, intake: Intake, event: WebhookEvent) -> None:
    if isinstance(event, InboundMessage):
        on_message(context, intake, event)
    elif isinstance(event, StatusUpdate):
        on_status(context, intake, event)
    elif isinstance(event, PreferenceUpdate):
        on_preference(context, intake, event)
    elif isinstance(event, AccountNotice):
        on_account_notice(context, intake, event)
    else:
        log.warning("kept an unread webhook item for inspection: %s", event.reason)
        intake.keep(unread_webhooks, received_at=utc_now(), reason=event.reason[:255], raw=event.raw)
