"""The webhook Meta calls: GET for the subscription handshake, POST for notifications.

POST checks `X-Hub-Signature-256` over the raw bytes (constant-time), parses every event of
the batch and hands each to its handler, all of them in one transaction shared with the
POSTs that arrived at the same moment (`Services.webhook_intake`, `bot.inbound.handlers.dispatch`). It answers 200 only once that
transaction has committed, so every consent-affecting event is recorded; if the database or
Redis fails it answers 503, Meta retries, and the idempotent handlers finish what was left
without doubling anything.
"""
from __future__ import annotations

import hashlib
import hmac
import logging

import redis
import sqlalchemy as sa
from flask import Blueprint, Response, jsonify, request

from bot import json_bodies
from bot.inbound.events import Unrecognized, parse
from bot.services import current_services
from bot.storage.db import WriteConflict

log = logging.getLogger(__name__)
bp = Blueprint("webhook", __name__)


def error(status: int, code: str, detail: str) -> tuple[Response, int]:
    return jsonify(error=code, detail=detail), status


def signature_matches(secret: str, body: bytes, header: str | None) -> bool:
    """Meta signs the exact bytes: `sha256=` + hex HMAC-SHA256 keyed with the app secret."""
    if not header or not header.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()
    return hmac.compare_digest(expected, header[len("sha256="):].strip().lower().encode())  # bytes: any character compares


@bp.get("/webhook")
def handshake():
    token = current_services().settings.whatsapp_verify_token
    if not token:
        return error(403, "not_configured", "WHATSAPP_VERIFY_TOKEN is not set, so no subscription can be verified")
    given = request.args.get("hub.verify_token", "")
    if request.args.get("hub.mode") != "subscribe" or not hmac.compare_digest(given.encode(), token.encode()):
        return error(403, "forbidden", "hub.mode must be subscribe and hub.verify_token must match")
    return Response(request.args.get("hub.challenge", ""), mimetype="text/plain")


@bp.post("/webhook")
def receive():
    settings = current_services().settings
    secret = settings.whatsapp_app_secret
    if not secret and not settings.webhook_insecure_dev:
        log.error("POST /webhook refused: WHATSAPP_APP_SECRET is not set")
        return error(503, "not_configured", "WHATSAPP_APP_SECRET is not set; refusing unsigned webhooks (WEBHOOK_INSECURE_DEV=1 allows them in development)")
    body = request.get_data(cache=False)
    if secret and not signature_matches(secret, body, request.headers.get("X-Hub-Signature-256")):
        return error(401, "bad_signature", "missing or wrong X-Hub-Signature-256")
    try:
        events = parse(json_bodies.loads(body))
    except json_bodies.UnreadableJson as unreadable:
        events = [Unrecognized(f"body is {unreadable}", body.decode("utf-8", "replace")[:100_000])]
    try:
        current_services().webhook_intake.call(events)
    except (sa.exc.SQLAlchemyError, redis.RedisError, WriteConflict) as failure:
        log.error("webhook not recorded, Meta will retry: %s", type(failure).__name__)
        return error(503, "unavailable", "could not record the events now; retry later")
    return jsonify(status="ok", events=len(events))
